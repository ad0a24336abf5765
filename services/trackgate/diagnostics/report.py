"""The diagnostics report: one JSON-ready dict with a stable, documented shape.

``trackgate netcheck --json`` prints it and the API sidecar serves it at
``/diagnostics``. :func:`collect_report` blocks for ``seconds`` between two
samples (a command line can afford that); a server that must not block keeps
a baseline :class:`~trackgate.diagnostics.sample.Sample` of its own and
calls :func:`build_report` with it. The shape is described field by field in
``docs/diagnostics.md``; bump :data:`REPORT_VERSION` when it changes
incompatibly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trackgate.diagnostics.findings import findings, overall_status
from trackgate.diagnostics.kernel import network_namespace, read_limits
from trackgate.diagnostics.sample import Sample, counter_delta, take_sample

REPORT_VERSION = 1

DEFAULT_PORT = 5027

#: The MIB counters a report shows, in the order a person should read them.
WATCHED_COUNTERS: tuple[str, ...] = (
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
    "TcpExtTCPReqQFullDoCookies",
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPBacklogDrop",
    "TcpExtTCPDeferAcceptDrop",
    "TcpExtTCPTimeouts",
    "TcpExtTCPAbortOnTimeout",
    "TcpActiveOpens",
    "TcpPassiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpRetransSegs",
    "TcpInErrs",
    "TcpOutRsts",
    "UdpInDatagrams",
    "UdpInErrors",
    "UdpRcvbufErrors",
)

# Longest interval collect_report() will sleep: a report request must not
# hold a worker thread for minutes because of a typo.
MAX_SECONDS = 300.0


def collect_report(
    port: int | None = DEFAULT_PORT,
    seconds: float = 5.0,
    proc_root: str | Path = "/proc",
) -> dict[str, Any]:
    """Sample, wait ``seconds``, sample again, and report.

    Raises:
        ValueError: ``seconds`` is negative or above :data:`MAX_SECONDS`.
        KernelInterfaceError: the kernel counters are unreadable.
    """
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS:.0f}")
    before = take_sample(port, proc_root)
    time.sleep(seconds)
    after = take_sample(port, proc_root)
    return build_report(before, after, read_limits(proc_root), port)


def build_report(
    before: Sample,
    after: Sample,
    limits: Mapping[str, int | None],
    port: int | None,
) -> dict[str, Any]:
    """Assemble the report from two samples; pure apart from the wall clock."""
    found = findings(before, after, limits, port)
    return {
        "report_version": REPORT_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "network_namespace": network_namespace(),
        "port": port,
        "interval_seconds": round(after.taken_at - before.taken_at, 3),
        "status": overall_status(found),
        "findings": [finding.as_dict() for finding in found],
        "limits": dict(limits),
        "listeners": (
            None
            if after.listeners is None
            else [row.as_dict() for row in after.listeners]
        ),
        "counters": _counters(before.netstat, after.netstat, WATCHED_COUNTERS),
        "conntrack": _conntrack(before, after),
    }


def _counters(
    before: Mapping[str, int], after: Mapping[str, int], names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    return {
        name: {"total": after[name], "delta": counter_delta(before, after, name)}
        for name in names
        if name in after
    }


def _conntrack(before: Sample, after: Sample) -> dict[str, Any] | None:
    if after.conntrack is None:
        return None
    view = after.conntrack.as_dict()
    previous = before.conntrack.counters if before.conntrack else {}
    counters = after.conntrack.counters
    view["counters"] = {
        name: {"total": value, "delta": counter_delta(previous, counters, name)}
        for name, value in counters.items()
        if name != "entries"  # a gauge, already shown as "count"
    }
    return view
