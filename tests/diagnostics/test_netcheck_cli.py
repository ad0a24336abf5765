"""``trackgate netcheck`` run as a process inside a private network namespace.

A fresh namespace has no other traffic, so the command's verdict depends
only on what the test does there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PORT = 5027

pytestmark = pytest.mark.netns

_LISTENER = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", {port}))
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
def _listener(netns: str, backlog: int) -> Iterator[None]:
    with _in_netns(netns, _LISTENER.format(port=PORT, backlog=backlog)) as process:
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
