"""findings(): every rule, table-driven, on hand-made samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from trackgate.diagnostics import (
    ConntrackStats,
    Finding,
    Listener,
    Sample,
    Severity,
    findings,
    overall_status,
)

PORT = 5027
HEALTHY_LIMITS: dict[str, int | None] = {
    "net.core.somaxconn": 4096,
    "net.ipv4.tcp_syncookies": 1,
    "net.ipv4.tcp_abort_on_overflow": 0,
}


def _listener(queue: int, limit: int | None, address: str = "0.0.0.0") -> Listener:
    if ":" in address:
        return Listener("ipv6", address, PORT, queue, limit, 1234, "netlink")
    if limit is None:
        return Listener("ipv4", address, PORT, queue, limit, 1234, "proc")
    return Listener("ipv4", address, PORT, queue, limit, 1234, "netlink")


def _conntrack(count: int = 10, **counters: int) -> ConntrackStats:
    return ConntrackStats(count=count, max=1000, buckets=256, counters=counters)


@dataclass
class Case:
    name: str
    expected: dict[str, Severity]
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int | None] = field(default_factory=lambda: HEALTHY_LIMITS)
    listeners: tuple[Listener, ...] | None = (_listener(0, 4096),)
    conntrack: tuple[ConntrackStats | None, ConntrackStats | None] = (None, None)
    port: int | None = PORT
    says: tuple[str, ...] = ()


CASES = [
    Case("healthy", {}),
    Case(
        "accept queue overflow",
        {"accept_queue_overflow": Severity.CRITICAL},
        before={"TcpExtListenOverflows": 100, "TcpExtListenDrops": 100},
        after={"TcpExtListenOverflows": 137, "TcpExtListenDrops": 137},
        says=("overflowed 37 times in 10 s across this network namespace "
              "(all ports, not only 5027)",),
    ),
    Case(
        "overflows while nothing listens on the port",
        {"no_listener": Severity.CRITICAL,
         "accept_queue_overflow": Severity.CRITICAL},
        before={"TcpExtListenOverflows": 0, "TcpExtListenDrops": 0},
        after={"TcpExtListenOverflows": 9, "TcpExtListenDrops": 9},
        listeners=(),
        says=("nothing listens on port 5027, so this was another port",),
    ),
    Case(
        "listen drops beyond overflows",
        {"accept_queue_overflow": Severity.CRITICAL,
         "listen_drops_other": Severity.WARNING},
        before={"TcpExtListenOverflows": 0, "TcpExtListenDrops": 0},
        after={"TcpExtListenOverflows": 2, "TcpExtListenDrops": 5},
        says=("3 connection attempts",),
    ),
    Case(
        "syn queue dropped without cookies",
        {"syn_queue_drop": Severity.CRITICAL, "syncookies_off": Severity.WARNING},
        before={"TcpExtTCPReqQFullDrop": 0},
        after={"TcpExtTCPReqQFullDrop": 12},
        limits={**HEALTHY_LIMITS, "net.ipv4.tcp_syncookies": 0},
        says=("12 SYNs dropped",),
    ),
    Case(
        "syn cookies sent",
        {"syn_cookies_sent": Severity.WARNING},
        before={"TcpExtSyncookiesSent": 1, "TcpExtTCPReqQFullDoCookies": 1},
        after={"TcpExtSyncookiesSent": 9, "TcpExtTCPReqQFullDoCookies": 9},
        says=("SYN cookies were sent 8 times", "SYN queue overflowed"),
    ),
    Case(
        "invalid cookies",
        {"syn_cookies_failed": Severity.INFO},
        before={"TcpExtSyncookiesFailed": 0},
        after={"TcpExtSyncookiesFailed": 3},
    ),
    Case(
        "socket backlog drop is not the accept queue",
        {"socket_backlog_drop": Severity.WARNING},
        before={"TcpExtTCPBacklogDrop": 5},
        after={"TcpExtTCPBacklogDrop": 25},
        says=("20 segments", "not the accept queue"),
    ),
    Case(
        "syn retransmissions",
        {"syn_retransmits": Severity.INFO},
        before={"TcpExtTCPSynRetrans": 0},
        after={"TcpExtTCPSynRetrans": 4},
    ),
    Case(
        "udp receive buffer",
        {"udp_receive_buffer_drop": Severity.WARNING},
        before={"UdpRcvbufErrors": 0},
        after={"UdpRcvbufErrors": 2},
    ),
    Case(
        "counter went backwards is not a burst",
        {},
        before={"TcpExtListenOverflows": 50, "TcpExtListenDrops": 50},
        after={"TcpExtListenOverflows": 0, "TcpExtListenDrops": 0},
    ),
    Case(
        "somaxconn low caps the listener",
        {"somaxconn_low": Severity.WARNING,
         "listener_backlog_low": Severity.WARNING},
        limits={**HEALTHY_LIMITS, "net.core.somaxconn": 128},
        listeners=(_listener(0, 128),),
        says=("somaxconn is 128", "capped by net.core.somaxconn",
              "listeners on port 5027 at it: 0.0.0.0:5027 (limit 128)"),
    ),
    Case(
        "somaxconn lowered under listeners opened before",
        {"somaxconn_low": Severity.WARNING,
         "several_listeners": Severity.INFO,
         "listener_backlog_low": Severity.WARNING},
        limits={**HEALTHY_LIMITS, "net.core.somaxconn": 32},
        listeners=(_listener(0, 2048), _listener(0, 2048, "::"),
                   _listener(0, 16, "127.0.0.1")),
        says=("every listen() called from now on",
              "sockets already listening keep the limit they got",
              "above it until they listen again (a restart): 0.0.0.0:5027 "
              "(limit 2048), [::]:5027 (limit 2048); below it (their own "
              "backlog): 127.0.0.1:5027 (limit 16)"),
    ),
    Case(
        "asyncio default backlog",
        {"listener_backlog_low": Severity.WARNING},
        listeners=(_listener(0, 100),),
        says=("backlog limit of 100", "more than 101 devices"),
    ),
    Case(
        "forced syn cookies",
        {"syncookies_forced": Severity.WARNING},
        limits={**HEALTHY_LIMITS, "net.ipv4.tcp_syncookies": 2},
    ),
    Case(
        "abort on overflow",
        {"abort_on_overflow": Severity.INFO},
        limits={**HEALTHY_LIMITS, "net.ipv4.tcp_abort_on_overflow": 1},
    ),
    Case(
        "nothing listens",
        {"no_listener": Severity.CRITICAL},
        listeners=(),
        says=("nothing listens on TCP port 5027",),
    ),
    Case("listeners unreadable is not 'nothing listens'", {}, listeners=None),
    Case("no port asked", {}, listeners=(), port=None),
    Case(
        "full accept queue now",
        {"accept_queue_full": Severity.CRITICAL},
        listeners=(_listener(4097, 4096),),
        says=("4097/4096",),
    ),
    Case(
        "nearly full accept queue",
        {"accept_queue_nearly_full": Severity.WARNING},
        listeners=(_listener(3500, 4096, "::"),),
        says=("[::]:5027",),
    ),
    Case(
        "queue without a known limit is not judged",
        {},
        listeners=(_listener(3500, None),),
    ),
    Case(
        "reuseport group",
        {"several_listeners": Severity.INFO},
        listeners=(_listener(0, 4096), _listener(0, 4096)),
        says=("2 sockets listen on port 5027",),
    ),
    Case(
        "conntrack nearly full",
        {"conntrack_full": Severity.CRITICAL},
        conntrack=(_conntrack(900), _conntrack(920)),
        says=("conntrack table 92% full",),
    ),
    Case(
        "conntrack filling",
        {"conntrack_filling": Severity.WARNING},
        conntrack=(_conntrack(700), _conntrack(800)),
    ),
    Case(
        "conntrack insertion race",
        {"conntrack_insert_failed": Severity.WARNING},
        conntrack=(_conntrack(insert_failed=5), _conntrack(insert_failed=8)),
        says=("insert_failed grew by 3", "insertion race"),
    ),
    Case(
        "conntrack drops and early drops",
        {"conntrack_drop": Severity.CRITICAL,
         "conntrack_early_drop": Severity.WARNING},
        conntrack=(_conntrack(drop=0, early_drop=0),
                   _conntrack(drop=2, early_drop=7)),
    ),
    Case(
        "conntrack loaded between samples",
        {},
        conntrack=(None, _conntrack(insert_failed=8)),
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_findings(case: Case) -> None:
    before = Sample(100.0, case.before, case.conntrack[0], case.listeners)
    after = Sample(110.0, case.after, case.conntrack[1], case.listeners)

    found = findings(before, after, case.limits, case.port)

    assert {f.code: f.severity for f in found} == case.expected
    text = " ".join(f.message for f in found)
    for phrase in case.says:
        assert phrase in text
    assert all(f.advice for f in found)


def test_findings_come_worst_first() -> None:
    before = Sample(
        0.0, {"TcpExtTCPSynRetrans": 0, "TcpExtListenOverflows": 0}, None, ()
    )
    after = Sample(
        2.0, {"TcpExtTCPSynRetrans": 3, "TcpExtListenOverflows": 1}, None, ()
    )

    found = findings(before, after, HEALTHY_LIMITS, None)

    assert [f.severity for f in found] == [Severity.CRITICAL, Severity.INFO]
    assert "in 2.0 s" in found[0].message


def test_nothing_listening_comes_before_the_namespace_counters() -> None:
    counters = {"TcpExtListenOverflows": 0, "TcpExtTCPReqQFullDrop": 0}
    grown = {"TcpExtListenOverflows": 4, "TcpExtTCPReqQFullDrop": 2}
    before, after = Sample(0.0, counters, None, ()), Sample(1.0, grown, None, ())

    found = findings(before, after, HEALTHY_LIMITS, PORT)

    assert [f.code for f in found] == [
        "no_listener",
        "accept_queue_overflow",
        "syn_queue_drop",
    ]


def test_no_port_checked_counts_all_ports() -> None:
    before = Sample(0.0, {"TcpExtTCPBacklogDrop": 0}, None, None)
    after = Sample(1.0, {"TcpExtTCPBacklogDrop": 3}, None, None)

    (found,) = findings(before, after, HEALTHY_LIMITS, None)

    assert "across this network namespace (all ports)" in found.message


@pytest.mark.parametrize(
    ("severities", "status"),
    [
        ([], "ok"),
        ([Severity.INFO], "ok"),
        ([Severity.INFO, Severity.WARNING], "warning"),
        ([Severity.WARNING, Severity.CRITICAL, Severity.INFO], "critical"),
    ],
)
def test_overall_status(severities: list[Severity], status: str) -> None:
    found = [Finding("x", severity, "m", "a") for severity in severities]

    assert overall_status(found) == status


def test_finding_serialises_severity_as_text() -> None:
    finding = Finding("code", Severity.WARNING, "message", "advice")

    assert finding.as_dict() == {
        "code": "code", "severity": "warning", "message": "message", "advice": "advice",
    }  # fmt: skip
