"""``trackgate netcheck`` run as a process inside a private network namespace.

A fresh namespace has no other traffic, so the command's verdict depends
only on what the test does there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.diagnostics.netns import sysctl

PORT = 5027

pytestmark = pytest.mark.netns

_LISTENER = """
import socket, sys, time
server = socket.socket()
server.bind(("{address}", {port}))
server.listen({backlog})
print("ready", flush=True)
time.sleep(60)
"""

# Keeps opening connections (never accepted) for a few seconds, so overflows
# happen throughout netcheck's sampling interval.
_STORM = """
import socket, time
clients = []
deadline = time.monotonic() + {seconds}
while time.monotonic() < deadline:
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", {port}))
    clients.append(client)
    time.sleep(0.05)
"""


def _trackgate() -> list[str]:
    script = Path(sys.executable).with_name("trackgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from trackgate.cli import main; main()"]


def _netcheck(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["ip", "netns", "exec", netns, *_trackgate(), "netcheck", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@contextmanager
def _in_netns(netns: str, code: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def _listener(netns: str, backlog: int, address: str = "127.0.0.1") -> Iterator[None]:
    code = _LISTENER.format(address=address, port=PORT, backlog=backlog)
    with _in_netns(netns, code) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield


def _codes(report: dict[str, Any]) -> set[str]:
    return {finding["code"] for finding in report["findings"]}


def test_healthy_listener_exits_zero(netns: str) -> None:
    with _listener(netns, backlog=4096):
        result = _netcheck(netns, "--json", "--seconds", "0.3")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    (listener,) = report["listeners"]
    assert (listener["address"], listener["port"]) == ("127.0.0.1", PORT)
    assert (listener["queue_len"], listener["backlog_limit"]) == (0, 4096)
    assert report["counters"]["TcpExtListenOverflows"] == {"total": 0, "delta": 0}


def test_overflowing_listener_is_named_and_exits_one(netns: str) -> None:
    with (
        _listener(netns, backlog=2),
        _in_netns(netns, _STORM.format(port=PORT, seconds=4)),
    ):
        result = _netcheck(netns, "--json", "--seconds", "1.5")

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "critical"
    assert {"accept_queue_overflow", "accept_queue_full", "listener_backlog_low"} <= (
        _codes(report)
    )
    assert report["counters"]["TcpExtListenOverflows"]["delta"] > 0
    assert report["listeners"][0]["queue_len"] == 3


def test_human_output_explains_the_overflow(netns: str) -> None:
    with (
        _listener(netns, backlog=2),
        _in_netns(netns, _STORM.format(port=PORT, seconds=3)),
    ):
        result = _netcheck(netns, "--seconds", "1")

    assert result.returncode == 1
    assert "accept queue overflowed" in result.stdout
    assert "FULL" in result.stdout
    assert "TcpExtListenOverflows" in result.stdout


def test_low_somaxconn_is_reported(netns: str) -> None:
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            "echo 128 > /proc/sys/net/core/somaxconn",
        ],
        check=True,
    )
    with _listener(netns, backlog=4096):
        result = _netcheck(netns, "--json", "--seconds", "0")

    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert {"somaxconn_low", "listener_backlog_low"} <= _codes(report)
    assert report["listeners"][0]["backlog_limit"] == 128


def test_nothing_listening_is_critical(netns: str) -> None:
    result = _netcheck(netns, "--json", "--seconds", "0", "--port", "6001")

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert _codes(report) == {"no_listener"}
    assert report["listeners"] == []


def test_bad_interval_is_a_usage_error(netns: str) -> None:
    result = _netcheck(netns, "--seconds", "-2")

    assert result.returncode == 2


def test_lowered_somaxconn_names_the_listeners_it_does_not_cap_yet(
    netns: str,
) -> None:
    with _listener(netns, backlog=2048):
        sysctl(netns, "net.core.somaxconn", 32)
        with _listener(netns, backlog=4096, address="127.0.0.2"):
            result = _netcheck(netns, "--json", "--seconds", "0")

    report = json.loads(result.stdout)
    limits = {row["address"]: row["backlog_limit"] for row in report["listeners"]}
    assert limits == {"127.0.0.1": 2048, "127.0.0.2": 32}
    (somaxconn,) = [f for f in report["findings"] if f["code"] == "somaxconn_low"]
    assert somaxconn["message"] == (
        "somaxconn is 32: every listen() called from now on in this network "
        "namespace gets a backlog of at most 32; sockets already listening keep "
        f"the limit they got; listeners on port {PORT} above it until they listen "
        f"again (a restart): 127.0.0.1:{PORT} (limit 2048); at it: "
        f"127.0.0.2:{PORT} (limit 32)"
    )
    (low,) = [f for f in report["findings"] if f["code"] == "listener_backlog_low"]
    assert low["message"].startswith(f"listener 127.0.0.2:{PORT} has a backlog")


def test_overflows_on_another_port_are_not_put_on_this_one(netns: str) -> None:
    with (
        _listener(netns, backlog=2),
        _in_netns(netns, _STORM.format(port=PORT, seconds=4)),
    ):
        as_json = _netcheck(netns, "--json", "--seconds", "1", "--port", "7028")
        as_table = _netcheck(netns, "--seconds", "0.5", "--port", "7028")

    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    first, *rest = report["findings"]
    assert first["code"] == "no_listener"
    assert first["message"] == (
        "nothing listens on TCP port 7028 in this network namespace"
    )
    (overflow,) = [f for f in rest if f["code"] == "accept_queue_overflow"]
    assert (
        "across this network namespace (all ports, not only 7028); nothing "
        "listens on port 7028, so this was another port" in overflow["message"]
    )
    assert "Listeners: nothing listens on port 7028." in as_table.stdout
    assert "Counters (this network namespace, all ports)" in as_table.stdout


def _into_closed_pipe(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """netcheck with a stdout whose reader has gone, as under ``| head -0``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    command = ["ip", "netns", "exec", netns, *_trackgate(), "netcheck", *args]
    try:
        return subprocess.run(
            command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_leaves_the_exit_status_alone(netns: str) -> None:
    with _listener(netns, backlog=4096):
        healthy = _into_closed_pipe(netns, "--seconds", "0")
    unserved = _into_closed_pipe(netns, "--seconds", "0", "--json")

    assert (healthy.returncode, healthy.stderr) == (0, "")
    assert (unserved.returncode, unserved.stderr) == (1, "")
