"""One timestamped reading of everything the findings look at.

The ingest service keeps the previous :class:`Sample` and takes a new one
every few seconds; ``netcheck`` takes two ``seconds`` apart; the API sidecar
compares the latest against a baseline. A sample is a few ``/proc`` reads and
one netlink dump: cheap enough for an event loop, and it never raises for a
facility that is merely absent (conntrack not loaded, netlink refused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trackgate.diagnostics.errors import KernelInterfaceError
from trackgate.diagnostics.kernel import (
    ConntrackStats,
    read_conntrack_stats,
    read_netstat,
)
from trackgate.diagnostics.sockets import Listener, listeners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """Counters and listener queues at one moment.

    ``taken_at`` is ``time.monotonic()``. ``listeners`` is ``None`` when they
    could not be read (which is not the same as "nobody listens"), and holds
    only the rows for the sampled port when one was given.
    """

    taken_at: float
    netstat: Mapping[str, int]
    conntrack: ConntrackStats | None
    listeners: tuple[Listener, ...] | None


def take_sample(port: int | None = None, proc_root: str | Path = "/proc") -> Sample:
    """Read counters, conntrack statistics and the listeners on ``port``.

    Raises:
        KernelInterfaceError: the MIB counters themselves are unreadable.
    """
    netstat = read_netstat(proc_root)

    try:
        conntrack = read_conntrack_stats(proc_root)
    except KernelInterfaceError as exc:
        log.warning("conntrack statistics unreadable: %s", exc)
        conntrack = None

    rows: tuple[Listener, ...] | None
    try:
        rows = tuple(listeners(port, proc_root))
    except KernelInterfaceError as exc:
        log.warning("listening sockets unreadable: %s", exc)
        rows = None

    return Sample(time.monotonic(), netstat, conntrack, rows)


def counter_delta(
    before: Mapping[str, int], after: Mapping[str, int], name: str
) -> int:
    """How much counter ``name`` grew; 0 if absent from either reading.

    A counter that went down (namespace recreated, 32-bit wrap) reads as 0
    rather than as a negative burst.
    """
    if name not in before or name not in after:
        return 0
    return max(0, after[name] - before[name])
