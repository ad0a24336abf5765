"""Read the kernel's TCP counters, listen-related limits and conntrack state.

Everything here is a handful of small ``/proc`` reads: no subprocesses, no
netlink, nothing that can block for long, so the ingest service may call it
from its event loop every few seconds and the API sidecar on every request.

All values describe the network namespace of the *calling process* (the MIB
counters, most TCP sysctls and conntrack statistics are per network
namespace), so run this inside the pod or under ``ip netns exec`` to see a
pod's numbers. ``nf_conntrack_max`` and ``nf_conntrack_buckets`` are global.

What the numbers mean and what to do about them is ``findings.py``'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackgate.diagnostics.errors import KernelInterfaceError

log = logging.getLogger(__name__)

#: The listen-queue, SYN, keepalive and conntrack sysctls netcheck reports.
#: Each is a single integer; a name missing on this kernel reads as ``None``.
LIMIT_SYSCTLS: tuple[str, ...] = (
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_migrate_req",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_retries2",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
)

# The conntrack statistics column that is a table-wide gauge printed again
# on every per-CPU line; summing it over CPUs would multiply the count.
_CONNTRACK_GAUGE_COLUMN = "entries"


def read_netstat(proc_root: str | Path = "/proc") -> dict[str, int]:
    """Return every SNMP/MIB counter of this network namespace.

    Names are prefixed with their group as ``nstat`` prints them:
    ``TcpExtListenOverflows``, ``TcpExtTCPBacklogDrop``, ``TcpPassiveOpens``,
    ``UdpRcvbufErrors``, ``IpExtInOctets``. Sources are ``net/netstat``
    (TcpExt, IpExt, MPTcpExt) and ``net/snmp`` (Ip, Icmp, Tcp, Udp, ...).

    Raises:
        KernelInterfaceError: neither file could be read.
    """
    root = Path(proc_root)
    counters: dict[str, int] = {}
    readable = 0
    for name in ("net/netstat", "net/snmp"):
        try:
            text = (root / name).read_text()
        except OSError as exc:
            log.debug("cannot read %s: %s", root / name, exc)
            continue
        readable += 1
        counters.update(parse_mib_table(text))
    if readable == 0:
        raise KernelInterfaceError(f"cannot read {root}/net/netstat or net/snmp")
    return counters


def parse_mib_table(text: str) -> dict[str, int]:
    """Parse the header/value line pairs of ``/proc/net/{netstat,snmp}``.

    Lines come in pairs that start with the same ``Group:`` word, the first
    naming the columns and the second holding the values. A pair whose
    lengths disagree is skipped with a warning rather than misaligned.
    """
    counters: dict[str, int] = {}
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        group = header[0].rstrip(":")
        if values[0] != header[0] or len(header) != len(values):
            log.warning("skipping malformed MIB line pair for %s", group)
            continue
        for column, value in zip(header[1:], values[1:], strict=True):
            try:
                counters[group + column] = int(value)
            except ValueError:
                log.warning("non-integer MIB value %s%s=%r", group, column, value)
    return counters


def read_sysctl(name: str, proc_root: str | Path = "/proc") -> int | None:
    """One integer sysctl by dotted name, or ``None`` if absent or not an int."""
    path = Path(proc_root) / "sys" / name.replace(".", "/")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_limits(proc_root: str | Path = "/proc") -> dict[str, int | None]:
    """The sysctls of :data:`LIMIT_SYSCTLS`, keyed by dotted sysctl name.

    Conntrack keys are ``None`` where the conntrack module is not loaded.
    """
    return {name: read_sysctl(name, proc_root) for name in LIMIT_SYSCTLS}


@dataclass(frozen=True)
class ConntrackStats:
    """Conntrack table fill and the per-CPU statistics summed over CPUs.

    ``counters`` holds the columns of ``/proc/net/stat/nf_conntrack`` by
    their header names (``insert_failed``, ``drop``, ``early_drop``,
    ``clash_resolve``...; the set depends on the kernel). ``count`` is this
    namespace's entry count, which the kernel compares against the global
    ``max``.
    """

    count: int
    max: int | None
    buckets: int | None
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def fill_ratio(self) -> float | None:
        """``count / max``, or ``None`` when the limit is unknown or zero."""
        if not self.max:
            return None
        return self.count / self.max

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``fill_ratio`` rounded to four places)."""
        ratio = self.fill_ratio
        return {
            "count": self.count,
            "max": self.max,
            "buckets": self.buckets,
            "fill_ratio": None if ratio is None else round(ratio, 4),
            "counters": dict(self.counters),
        }


def read_conntrack_stats(proc_root: str | Path = "/proc") -> ConntrackStats | None:
    """Conntrack fill and statistics, or ``None`` when conntrack is not loaded."""
    root = Path(proc_root)
    try:
        text = (root / "net/stat/nf_conntrack").read_text()
    except OSError:
        return None
    counters = parse_conntrack_stat(text)

    count = read_sysctl("net.netfilter.nf_conntrack_count", root)
    if count is None:
        count = counters.get(_CONNTRACK_GAUGE_COLUMN, 0)
    return ConntrackStats(
        count=count,
        max=read_sysctl("net.netfilter.nf_conntrack_max", root),
        buckets=read_sysctl("net.netfilter.nf_conntrack_buckets", root),
        counters=counters,
    )


def parse_conntrack_stat(text: str) -> dict[str, int]:
    """Sum the hex per-CPU rows of ``/proc/net/stat/nf_conntrack`` by column.

    The first line names the columns. ``entries`` is the same table-wide
    gauge on every row, so it is taken once instead of summed.

    Raises:
        KernelInterfaceError: the header is missing or a row is not hex.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0] or lines[0][0] != _CONNTRACK_GAUGE_COLUMN:
        raise KernelInterfaceError("nf_conntrack statistics have no header row")
    header, rows = lines[0], lines[1:]

    totals = dict.fromkeys(header, 0)
    for row in rows:
        if len(row) != len(header):
            raise KernelInterfaceError(
                f"nf_conntrack statistics row has {len(row)} columns, "
                f"header has {len(header)}"
            )
        try:
            values = [int(cell, 16) for cell in row]
        except ValueError as exc:
            raise KernelInterfaceError(f"non-hex conntrack statistic: {exc}") from exc
        for column, value in zip(header, values, strict=True):
            if column == _CONNTRACK_GAUGE_COLUMN:
                totals[column] = value
            else:
                totals[column] += value
    return totals


def network_namespace() -> str | None:
    """The caller's network namespace as the kernel names it (``net:[4026...]``).

    Counters are per namespace, so every report says which one it read.
    """
    try:
        return str(Path("/proc/self/ns/net").readlink())
    except OSError:
        return None
