"""Make SYN drops, accept-queue overflows and conntrack trouble visible.

Public pieces, all free of Redis and asyncio:

* ``kernel``: MIB counters, listen-related sysctls, conntrack statistics
  (a few ``/proc`` reads each, safe to call from an event loop);
* ``sockets``: accept-queue length and limit of one socket (``TCP_INFO``) or
  of every listener on a port (netlink ``sock_diag``);
* ``sample`` / ``findings`` / ``report``: timestamped readings, the
  plain-language findings drawn from two of them, and the JSON report served
  by ``trackgate netcheck --json`` and the API's ``/diagnostics``;
* ``pcap`` (import it explicitly; it needs ``dpkt``): per-device analysis of
  a tcpdump capture of the gateway port.

Everything reads the network namespace of the calling process. Who samples
how often, and where the numbers are exported, is left to the callers.
"""

from __future__ import annotations

from trackgate.diagnostics.errors import (
    CaptureError,
    DiagnosticsError,
    KernelInterfaceError,
)
from trackgate.diagnostics.findings import Finding, Severity, findings, overall_status
from trackgate.diagnostics.kernel import (
    ConntrackStats,
    read_conntrack_stats,
    read_limits,
    read_netstat,
)
from trackgate.diagnostics.report import build_report, collect_report
from trackgate.diagnostics.sample import Sample, counter_delta, take_sample
from trackgate.diagnostics.sockets import Listener, listen_queue, listeners

__all__ = [
    "CaptureError",
    "ConntrackStats",
    "DiagnosticsError",
    "Finding",
    "KernelInterfaceError",
    "Listener",
    "Sample",
    "Severity",
    "build_report",
    "collect_report",
    "counter_delta",
    "findings",
    "listen_queue",
    "listeners",
    "overall_status",
    "read_conntrack_stats",
    "read_limits",
    "read_netstat",
    "take_sample",
]
