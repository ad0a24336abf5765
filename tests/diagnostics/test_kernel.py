"""kernel.py against the real /proc of this host and of private namespaces."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.diagnostics.netns import run_python, sysctl
from trackgate.diagnostics import KernelInterfaceError, kernel

_OVERFLOW_SCRIPT = """
import json, socket, time
from trackgate.diagnostics.kernel import read_netstat
before = read_netstat()
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
clients = []
for _ in range(6):
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(server.getsockname())
    clients.append(client)
time.sleep(0.3)
after = read_netstat()
names = ["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPBacklogDrop"]
print(json.dumps({n: [before[n], after[n]] for n in names}))
"""


@pytest.mark.netns
def test_overflowing_a_listener_counts_in_its_own_namespace_only(netns: str) -> None:
    counts = run_python(netns, _OVERFLOW_SCRIPT)

    # backlog 1 holds two connections; the other four SYNs are dropped
    # (a 1 s retransmit would add more, but we read after 0.3 s).
    assert counts["TcpExtListenOverflows"] == [0, 4]
    assert counts["TcpExtListenDrops"] == [0, 4]
    # An accept-queue overflow is not a socket backlog drop.
    assert counts["TcpExtTCPBacklogDrop"] == [0, 0]


def test_overflow_in_this_namespace_raises_listen_overflows() -> None:
    before = kernel.read_netstat()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        clients = []
        for _ in range(5):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.getsockname())
            clients.append(client)
        time.sleep(0.3)
        after = kernel.read_netstat()
        for client in clients:
            client.close()

    # Other processes share this namespace and may add overflows, never remove.
    grown = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert grown >= 4
    assert after["TcpPassiveOpens"] > before["TcpPassiveOpens"]


def test_netstat_names_carry_their_group_prefix() -> None:
    counters = kernel.read_netstat()

    for name in (
        "TcpExtListenOverflows",
        "TcpExtTCPBacklogDrop",
        "TcpActiveOpens",
        "TcpRetransSegs",
        "UdpRcvbufErrors",
        "IpExtInOctets",
    ):
        assert isinstance(counters[name], int), name
    assert "ListenOverflows" not in counters


def test_missing_proc_is_a_kernel_interface_error(tmp_path: Path) -> None:
    with pytest.raises(KernelInterfaceError, match="netstat"):
        kernel.read_netstat(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TcpExt: A B\nTcpExt: 1 2\n", {"TcpExtA": 1, "TcpExtB": 2}),
        ("Tcp: MaxConn X\nTcp: -1 7\n", {"TcpMaxConn": -1, "TcpX": 7}),
        # A pair whose lengths disagree is dropped, the next pair still read.
        ("TcpExt: A B\nTcpExt: 1\nUdp: C\nUdp: 3\n", {"UdpC": 3}),
    ],
)
def test_mib_table_parsing(text: str, expected: dict[str, int]) -> None:
    assert kernel.parse_mib_table(text) == expected


_CONNTRACK_TEXT = (
    "entries  clashres found invalid insert insert_failed drop early_drop\n"
    "00000011  00000001 00000000 0000000a 00000000 00000002 00000000 00000000\n"
    "00000011  00000000 00000000 00000005 00000000 0000000f 00000001 00000000\n"
)


def test_conntrack_rows_are_summed_but_entries_taken_once() -> None:
    totals = kernel.parse_conntrack_stat(_CONNTRACK_TEXT)

    assert totals["entries"] == 0x11
    assert totals["invalid"] == 15
    assert totals["insert_failed"] == 17
    assert totals["drop"] == 1
    assert totals["clashres"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00000001 00000002\n",
        "entries drop\n0000000z 00000000\n",
        "entries drop\n1\n",
    ],
)
def test_malformed_conntrack_statistics_are_refused(text: str) -> None:
    with pytest.raises(KernelInterfaceError):
        kernel.parse_conntrack_stat(text)


def test_conntrack_stats_match_the_sysctls() -> None:
    stats = kernel.read_conntrack_stats()
    if stats is None:
        pytest.skip("conntrack is not loaded on this host")
    limit = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())

    assert stats.max == limit
    assert "insert_failed" in stats.counters
    assert stats.fill_ratio == pytest.approx(stats.count / limit)


def test_conntrack_absent_reads_as_none(tmp_path: Path) -> None:
    assert kernel.read_conntrack_stats(tmp_path) is None


@pytest.mark.netns
def test_limits_are_those_of_the_namespace(netns: str) -> None:
    sysctl(netns, "net.core.somaxconn", 256)
    sysctl(netns, "net.ipv4.tcp_abort_on_overflow", 1)

    limits = run_python(
        netns,
        "import json; from trackgate.diagnostics.kernel import read_limits; "
        "print(json.dumps(read_limits()))",
    )

    assert limits["net.core.somaxconn"] == 256
    assert limits["net.ipv4.tcp_abort_on_overflow"] == 1
    assert limits["net.ipv4.tcp_syncookies"] == 1
    assert set(limits) == set(kernel.LIMIT_SYSCTLS)


def test_a_sysctl_this_kernel_lacks_reads_as_none() -> None:
    assert kernel.read_sysctl("net.core.no_such_knob") is None
