"""Options out of range are usage errors (exit 2) before anything runs.

``records``, ``simulate`` and ``netcheck`` run as the installed
``trackgate`` script. The simulator's ``--timeout`` is checked against a
gateway that logs devices in and never ACKs and against a port that
answers no connect; its exit status for sessions lost while held against
a gateway that closes every session after its login.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port, trackgate_env
from tests.support.unanswered import unanswered_port
from trackgate.sim import DEVICE_MAX_PACKET, SimDevice, max_records_per_packet

SCRIPT = Path(sys.executable).with_name("trackgate")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
GE = "Input should be greater than or equal to"
LE = "Input should be less than or equal to"
NOT_FINITE = "is not a finite number of seconds"


def trackgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=trackgate_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """What a usage error says is wrong: the text of its error box, which
    wraps a long message at the terminal's width (80 columns in a pipe)."""
    stderr = _ANSI.sub("", result.stderr)
    assert "Traceback" not in stderr, stderr
    assert result.returncode == 2, stderr
    assert result.stdout == ""
    boxed = [line.strip("│ ") for line in stderr.splitlines() if line.startswith("│")]
    message = " ".join(boxed)
    assert message.startswith("Invalid value"), stderr
    return message


# records ------------------------------------------------------------------


@pytest.mark.parametrize("count", ["-5", "0"])
def test_records_count_below_one_is_refused(count: str) -> None:
    line = usage_error(trackgate("records", "--count", count))

    assert line == f"Invalid value for '--count': {GE} 1"


@pytest.mark.parametrize("imei", ["abc", "35630704000000", "3563070400000001"])
def test_records_imei_must_be_fifteen_digits(imei: str) -> None:
    line = usage_error(trackgate("records", "--imei", imei))

    assert line == f"Invalid value for '--imei': '{imei}' is not an IMEI (15 digits)"


# simulate -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["throughput", "--devices", "-1"], f"'--devices': {GE} 1"),
        (["throughput", "--records", "300"], f"'--records': {LE} 255"),
        (["throughput", "--records", "0"], f"'--records': {GE} 1"),
        (["fleet", "--packets", "-3"], f"'--packets': {GE} 1"),
        (["storm", "--connections", "-10"], f"'--connections': {GE} 1"),
        (["hold", "--sessions", "0"], f"'--sessions': {GE} 1"),
        (["hold", "--seconds", "-1"], f"'--seconds': {GE} 0"),
        (["fleet", "--interval", "-2"], f"'--interval': {GE} 0"),
        (["fleet", "--warmup", "-1"], f"'--warmup': {GE} 0"),
        (["fleet", "--first-imei", "-1"], f"'--first-imei': {GE} 0"),
        (["throughput", "--timeout", "0"], "'--timeout': 0.0 is not above 0 seconds"),
        (["throughput", "--timeout", "-5"], "'--timeout': -5.0 is not above 0 seconds"),
        (["throughput", "--port", "70000"], f"'--port': {LE} 65535"),
        (["throughput", "--timeout", "nan"], f"'--timeout': nan {NOT_FINITE}"),
        (["throughput", "--timeout", "inf"], f"'--timeout': inf {NOT_FINITE}"),
        (["hold", "--seconds", "inf"], f"'--seconds': inf {NOT_FINITE}"),
        (["fleet", "--interval", "inf"], f"'--interval': inf {NOT_FINITE}"),
        (["fleet", "--warmup", "inf"], f"'--warmup': inf {NOT_FINITE}"),
    ],
)
def test_simulate_refuses_values_out_of_range(args: list[str], expected: str) -> None:
    line = usage_error(trackgate("simulate", *args))

    assert line == f"Invalid value for {expected}"


def test_the_records_limit_is_what_a_simulated_packet_holds() -> None:
    for codec in (0x08, 0x8E, 0x10):
        fits = max_records_per_packet(codec)
        assert 5 <= fits < 255
        SimDevice.with_records("356307040000000", 1, fits, codec=codec)
        with pytest.raises(ValueError, match=f"at most {DEVICE_MAX_PACKET} bytes"):
            SimDevice.with_records("356307040000000", 1, fits + 1, codec=codec)


def test_simulate_refuses_more_records_than_a_packet_holds_before_connecting() -> None:
    fits = max_records_per_packet(0x8E)
    # Nothing listens on the port: the records are refused first.
    result = trackgate(
        "simulate", "throughput", "--records", str(fits + 1),
        "--port", str(free_port()),
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"trackgate simulate: --records {fits + 1} does not fit one packet: "
        f"{DEVICE_MAX_PACKET} bytes of codec 8E hold at most {fits} simulated records"
    ]


def test_simulate_without_a_gateway_says_where_it_looked() -> None:
    port = free_port()
    result = trackgate("simulate", "throughput", "--port", str(port))

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"trackgate simulate: no gateway at 127.0.0.1:{port} ")


def _threaded_gateway(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose every connection ``serve`` handles on a thread."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    peers: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            peers.append(peer)
            threading.Thread(target=serve, args=(peer,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for peer in peers:
            peer.close()


@pytest.fixture
def silent_gateway() -> Iterator[int]:
    """A port that accepts every IMEI and never ACKs a packet."""

    def serve(peer: socket.socket) -> None:
        with peer:
            while data := peer.recv(4096):
                if len(data) == 17 and data[:2] == b"\x00\x0f":
                    peer.sendall(b"\x01")

    yield from _threaded_gateway(serve)


def test_simulate_timeout_bounds_the_wait_for_an_ack(silent_gateway: int) -> None:
    started = time.monotonic()
    result = trackgate(
        "simulate", "throughput", "--port", str(silent_gateway),
        "--devices", "2", "--packets", "1", "--records", "1", "--timeout", "1",
    )  # fmt: skip
    took = time.monotonic() - started

    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["devices_failed"], summary["records_acked"]) == (2, 0)
    # A device waits for an ACK 10 s at most, and the command as a whole,
    # its check for a gateway included, no more than --timeout.
    assert 0.9 <= summary["seconds"] < 1.1
    assert took < 3.0


def _throughput_against_unanswered_port(
    room: int,
) -> tuple[int, subprocess.CompletedProcess[str], float]:
    """Two devices, --timeout 1, against a port that answers ``room`` connects."""
    with unanswered_port(room=room) as port:
        started = time.monotonic()
        result = trackgate(
            "simulate", "throughput", "--port", str(port), "--timeout", "1",
            "--devices", "2", "--packets", "1",
        )  # fmt: skip
        return port, result, time.monotonic() - started


def test_simulate_gives_up_on_an_unanswered_address_within_the_timeout() -> None:
    port, result, took = _throughput_against_unanswered_port(room=0)

    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"trackgate simulate: no gateway at 127.0.0.1:{port} (--host, --port): "
        "no answer in 1 s"
    ]
    assert took < 3.0


def test_simulate_without_a_single_device_connected_exits_2() -> None:
    # The first connect (the check for a gateway) fills the accept queue;
    # no device's connect is answered.
    port, result, took = _throughput_against_unanswered_port(room=1)

    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"trackgate simulate: no gateway at 127.0.0.1:{port} (--host, --port): "
        "no device connected in "
    )
    assert line.endswith(" s (TimeoutError x2)")
    assert took < 3.0


@pytest.fixture
def closing_gateway() -> Iterator[int]:
    """A port that accepts every IMEI and closes the session 0.3 s later."""

    def serve(peer: socket.socket) -> None:
        with peer:
            if len(peer.recv(17)) == 17:
                peer.sendall(b"\x01")
                time.sleep(0.3)

    yield from _threaded_gateway(serve)


def test_simulate_hold_reports_sessions_closed_by_the_gateway_as_lost(
    closing_gateway: int,
) -> None:
    result = trackgate(
        "simulate", "hold", "--port", str(closing_gateway), "--sessions", "20",
        "--seconds", "8",
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["held"], summary["lost"], summary["refused"]) == (0, 20, 0)
    # The hold ended with its last session, not after 8 s.
    assert summary["seconds"] < 8


@pytest.fixture
def refusing_gateway() -> Iterator[int]:
    """A port that refuses every IMEI (reply 0x00) and closes."""

    def serve(peer: socket.socket) -> None:
        with peer:
            if len(peer.recv(17)) == 17:
                peer.sendall(b"\x00")

    yield from _threaded_gateway(serve)


def test_simulate_storm_exits_1_when_logins_fail(refusing_gateway: int) -> None:
    result = trackgate(
        "simulate", "storm", "--port", str(refusing_gateway), "--connections", "8",
    )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["connected"], summary["failures"]) == (8, {"ImeiRefused": 8})


@pytest.fixture
def mute_gateway() -> Iterator[int]:
    """A port that accepts every connection and never answers a login."""

    def serve(peer: socket.socket) -> None:
        with peer:
            while peer.recv(4096):
                pass

    yield from _threaded_gateway(serve)


@pytest.mark.parametrize(
    ("mode", "count"), [("storm", "--connections"), ("hold", "--sessions")]
)
def test_simulate_storm_and_hold_give_up_on_a_login_at_the_timeout(
    mute_gateway: int, mode: str, count: str
) -> None:
    started = time.monotonic()
    result = trackgate(
        "simulate", mode, "--port", str(mute_gateway), count, "3",
        "--timeout", "1", "--seconds", "1",
    )  # fmt: skip
    took = time.monotonic() - started

    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    if mode == "storm":
        assert (summary["connected"], summary["failures"]) == (3, {"TimeoutError": 3})
    else:
        assert (summary["held"], summary["refused"], summary["timed_out"]) == (0, 0, 3)
    assert took < 4.0


# netcheck -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "expected"),
    [("99999", f"{LE} 65535"), ("-1", f"{GE} 1"), ("0", f"{GE} 1")],
)
def test_netcheck_refuses_a_port_out_of_range(port: str, expected: str) -> None:
    line = usage_error(trackgate("netcheck", "--port", port))

    assert line == f"Invalid value for '--port': {expected}"
