"""The report dict: shape, JSON round trip, and a real overflow in it."""

from __future__ import annotations

import json
import socket
import time

import pytest

from trackgate.diagnostics import build_report, collect_report, read_limits, take_sample

REPORT_KEYS = {
    "report_version",
    "generated_at",
    "network_namespace",
    "port",
    "interval_seconds",
    "status",
    "findings",
    "limits",
    "listeners",
    "counters",
    "conntrack",
}
LISTENER_KEYS = {
    "family",
    "address",
    "port",
    "queue_len",
    "backlog_limit",
    "inode",
    "source",
    "is_full",
}


def test_report_names_an_overflow_that_happened_between_samples() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        before = take_sample(port)
        clients = [socket.socket() for _ in range(4)]
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
        time.sleep(0.3)
        after = take_sample(port)
        for client in clients:
            client.close()

    report = build_report(before, after, read_limits(), port)

    codes = {finding["code"] for finding in report["findings"]}
    assert {
        "accept_queue_overflow",
        "accept_queue_full",
        "listener_backlog_low",
    } <= codes
    assert report["status"] == "critical"
    (listener,) = report["listeners"]
    assert (listener["queue_len"], listener["backlog_limit"]) == (1, 0)
    assert listener["is_full"] is True
    assert report["counters"]["TcpExtListenOverflows"]["delta"] >= 3


def test_report_shape_is_stable_and_json_ready() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        report = collect_report(port, 0.05)

    assert set(report) == REPORT_KEYS
    assert json.loads(json.dumps(report)) == report
    assert report["report_version"] == 1
    assert report["port"] == port
    assert 0.05 <= report["interval_seconds"] < 1
    assert report["network_namespace"].startswith("net:[")
    assert set(report["listeners"][0]) == LISTENER_KEYS
    assert set(report["counters"]["TcpExtListenOverflows"]) == {"total", "delta"}
    assert report["limits"]["net.core.somaxconn"] >= 1
    if report["conntrack"] is not None:
        assert "entries" not in report["conntrack"]["counters"]
        assert set(report["conntrack"]["counters"]["insert_failed"]) == {
            "total",
            "delta",
        }


def test_report_without_a_port_lists_no_listener_finding() -> None:
    report = collect_report(None, 0)

    assert report["port"] is None
    assert "no_listener" not in {finding["code"] for finding in report["findings"]}


@pytest.mark.parametrize("seconds", [-1, 301])
def test_collect_report_refuses_unreasonable_intervals(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        collect_report(5027, seconds)
