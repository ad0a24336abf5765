"""Turn counter deltas and current levels into plain-language findings.

Input is two :class:`~trackgate.diagnostics.sample.Sample` readings and the
kernel limits; output is a list of :class:`Finding`, each with a stable
``code`` for machines, a ``severity``, a sentence saying what happened and
one saying what to do. This module only reasons: it reads nothing itself,
so every rule is tested with hand-made samples. ``docs/diagnostics.md``
explains each counter at length.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from trackgate.diagnostics.sample import Sample, counter_delta
from trackgate.diagnostics.sockets import Listener

# Below this, a reconnect storm after a cell-tower outage or a deploy (a few
# thousand devices) overflows the queue within a second.
LOW_BACKLOG = 1024
# Queue share at which a listener is called "nearly full": leaves headroom
# for one more burst between two samples.
NEARLY_FULL_RATIO = 0.8
# Conntrack fill ratios: above the first, early_drop starts soon under a
# burst; above the second, new flows are about to be refused.
CONNTRACK_WARNING_RATIO = 0.75
CONNTRACK_CRITICAL_RATIO = 0.9


class Severity(enum.StrEnum):
    """How urgent a finding is; ``rank`` orders them."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True)
class Finding:
    """One thing worth telling a person, in their words."""

    code: str
    severity: Severity
    message: str
    advice: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "severity": str(self.severity)}


@dataclass(frozen=True)
class _Context:
    before: Sample
    after: Sample
    limits: Mapping[str, int | None]
    port: int | None

    @property
    def seconds(self) -> float:
        return max(0.0, self.after.taken_at - self.before.taken_at)

    @property
    def span(self) -> str:
        seconds = self.seconds
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"

    @property
    def scope(self) -> str:
        """Where a MIB counter counts: the whole namespace, never one port."""
        if self.port is None:
            return "across this network namespace (all ports)"
        return f"across this network namespace (all ports, not only {self.port})"

    @property
    def nothing_listens(self) -> bool:
        """A port was asked about, the listeners were read, and none is on it."""
        return self.port is not None and self.after.listeners == ()

    @property
    def elsewhere(self) -> str:
        """A note for listener counters when nothing listens on the port."""
        if not self.nothing_listens:
            return ""
        return f"; nothing listens on port {self.port}, so this was another port"

    def delta(self, name: str) -> int:
        return counter_delta(self.before.netstat, self.after.netstat, name)

    def conntrack_delta(self, name: str) -> int:
        if self.before.conntrack is None or self.after.conntrack is None:
            return 0
        return counter_delta(
            self.before.conntrack.counters, self.after.conntrack.counters, name
        )


_Rule = Callable[[_Context], Iterator[Finding]]
_RULES: list[_Rule] = []


def _rule(function: _Rule) -> _Rule:
    _RULES.append(function)
    return function


def findings(
    before: Sample,
    after: Sample,
    limits: Mapping[str, int | None],
    port: int | None = None,
) -> list[Finding]:
    """Everything notable between ``before`` and ``after``, worst first.

    Args:
        before: the earlier reading.
        after: the later reading; current levels (queues, conntrack fill)
            are judged on this one.
        limits: :func:`~trackgate.diagnostics.kernel.read_limits` output.
        port: the gateway port the samples' listeners were read for, or
            ``None`` when no port was checked.
    """
    context = _Context(before, after, limits, port)
    found = [finding for rule in _RULES for finding in rule(context)]
    return sorted(found, key=lambda finding: -finding.severity.rank)


def overall_status(found: list[Finding]) -> str:
    """``"ok"`` when nothing is a warning or worse, else the worst severity."""
    worst = max(found, key=lambda finding: finding.severity.rank, default=None)
    if worst is None or worst.severity is Severity.INFO:
        return "ok"
    return str(worst.severity)


# The gateway port -----------------------------------------------------------


@_rule
def _no_listener(ctx: _Context) -> Iterator[Finding]:
    # Registered first: among critical findings it is the one to read first,
    # since the namespace-wide counters below cannot come from this port.
    if not ctx.nothing_listens:
        return
    yield Finding(
        "no_listener",
        Severity.CRITICAL,
        f"nothing listens on TCP port {ctx.port} in this network namespace",
        "start the gateway, check --port, or run netcheck inside the pod's "
        "namespace (kubectl exec, ip netns exec, nsenter -n)",
    )


# Accept queue and SYN queue -------------------------------------------------


@_rule
def _accept_queue_overflow(ctx: _Context) -> Iterator[Finding]:
    overflows = ctx.delta("TcpExtListenOverflows")
    if overflows:
        yield Finding(
            "accept_queue_overflow",
            Severity.CRITICAL,
            f"accept queue overflowed {overflows} times in {ctx.span} {ctx.scope}"
            f"{ctx.elsewhere}: the kernel dropped SYNs (or ignored handshake "
            "ACKs) without any reply, so devices wait 1 s, 3 s, 7 s... before "
            "retrying",
            "raise the listen backlog (the backlog passed to listen() and "
            "net.core.somaxconn in this namespace) or accept faster (more "
            "workers with SO_REUSEPORT)",
        )
    other_drops = ctx.delta("TcpExtListenDrops") - overflows
    if other_drops > 0:
        yield Finding(
            "listen_drops_other",
            Severity.WARNING,
            f"{other_drops} connection attempts were dropped at a listener in "
            f"{ctx.span} {ctx.scope} for reasons other than a full accept "
            f"queue{ctx.elsewhere}",
            "look for memory pressure or a listener closing while connections "
            "were arriving",
        )


@_rule
def _syn_queue(ctx: _Context) -> Iterator[Finding]:
    dropped = ctx.delta("TcpExtTCPReqQFullDrop")
    if dropped:
        yield Finding(
            "syn_queue_drop",
            Severity.CRITICAL,
            f"SYN queue full: {dropped} SYNs dropped in {ctx.span} {ctx.scope} "
            f"(SYN cookies are off){ctx.elsewhere}",
            "set net.ipv4.tcp_syncookies=1 and raise the listen backlog, "
            "which also bounds the SYN queue",
        )
    cookies = max(
        ctx.delta("TcpExtSyncookiesSent"), ctx.delta("TcpExtTCPReqQFullDoCookies")
    )
    if cookies:
        yield Finding(
            "syn_cookies_sent",
            Severity.WARNING,
            f"SYN cookies were sent {cookies} times in {ctx.span} {ctx.scope}: "
            f"the SYN queue overflowed and the kernel fell back to "
            f"cookies{ctx.elsewhere}",
            "raise the listen backlog; cookies under normal load mean the "
            "listener is undersized, and they drop TCP options",
        )
    failed = ctx.delta("TcpExtSyncookiesFailed")
    if failed:
        yield Finding(
            "syn_cookies_failed",
            Severity.INFO,
            f"{failed} ACKs carried an invalid SYN cookie in {ctx.span} {ctx.scope}",
            "usually late ACKs after a burst, or port scans; no action unless "
            "it grows with device complaints",
        )


@_rule
def _handshake_retransmits(ctx: _Context) -> Iterator[Finding]:
    retransmits = ctx.delta("TcpExtTCPSynRetrans")
    if retransmits:
        yield Finding(
            "syn_retransmits",
            Severity.INFO,
            f"{retransmits} SYNs or SYN-ACKs were retransmitted in {ctx.span} "
            f"{ctx.scope}: handshakes this namespace started or answered had to "
            "be repeated",
            "SYN-ACKs are sent again when a full accept queue ignored the final "
            "ACK (see accept_queue_overflow) or the path lost it; devices' own "
            "SYN retries show only in a capture (trackgate pcap)",
        )


@_rule
def _socket_backlog_drop(ctx: _Context) -> Iterator[Finding]:
    dropped = ctx.delta("TcpExtTCPBacklogDrop")
    if dropped:
        yield Finding(
            "socket_backlog_drop",
            Severity.WARNING,
            f"{dropped} segments dropped in {ctx.span} {ctx.scope} because an "
            "established socket's own backlog was full while the application "
            "held the socket lock; this is receive pressure, not the accept queue",
            "the reading side is too slow or receive buffers too small: check "
            "event-loop lag and net.ipv4.tcp_rmem",
        )


@_rule
def _udp_drops(ctx: _Context) -> Iterator[Finding]:
    dropped = ctx.delta("UdpRcvbufErrors")
    if dropped:
        yield Finding(
            "udp_receive_buffer_drop",
            Severity.WARNING,
            f"{dropped} UDP datagrams dropped in {ctx.span} {ctx.scope}: a "
            "socket receive buffer was full",
            "read datagrams faster or raise SO_RCVBUF (bounded by net.core.rmem_max)",
        )


# Limits ---------------------------------------------------------------------


@_rule
def _kernel_limits(ctx: _Context) -> Iterator[Finding]:
    somaxconn = ctx.limits.get("net.core.somaxconn")
    if somaxconn is not None and somaxconn < LOW_BACKLOG:
        yield Finding(
            "somaxconn_low",
            Severity.WARNING,
            f"somaxconn is {somaxconn}: every listen() called from now on in "
            f"this network namespace gets a backlog of at most {somaxconn}; "
            "sockets already listening keep the limit they got"
            + _against_somaxconn(ctx, somaxconn),
            "raise net.core.somaxconn for this namespace (pod "
            "securityContext.sysctls; a node value does not reach a pod), then "
            "restart the gateway so its listeners get the new limit",
        )
    syncookies = ctx.limits.get("net.ipv4.tcp_syncookies")
    if syncookies == 0:
        yield Finding(
            "syncookies_off",
            Severity.WARNING,
            "SYN cookies are off: when the SYN queue fills, SYNs are dropped",
            "set net.ipv4.tcp_syncookies=1 (a Kubernetes safe sysctl)",
        )
    elif syncookies == 2:
        yield Finding(
            "syncookies_forced",
            Severity.WARNING,
            "SYN cookies are forced on every connection (tcp_syncookies=2, a "
            "test setting): TCP options such as window scaling are lost",
            "set net.ipv4.tcp_syncookies=1",
        )
    if ctx.limits.get("net.ipv4.tcp_abort_on_overflow") == 1:
        yield Finding(
            "abort_on_overflow",
            Severity.INFO,
            "tcp_abort_on_overflow is 1: a full accept queue answers with RST "
            "instead of letting the client retry",
            "keep it only if devices reconnect quickly after a reset",
        )


_AGAINST_SOMAXCONN = {
    1: "above it until they listen again (a restart)",
    0: "at it",
    -1: "below it (their own backlog)",
}


def _against_somaxconn(ctx: _Context, somaxconn: int) -> str:
    """Where the listeners already open stand against a lowered somaxconn."""
    groups: dict[int, list[str]] = {}
    for row in ctx.after.listeners or ():
        limit = row.backlog_limit
        if limit is not None:
            side = (limit > somaxconn) - (limit < somaxconn)
            groups.setdefault(side, []).append(f"{_where(row)} (limit {limit})")
    if not groups:
        return ""
    parts = [
        f"{_AGAINST_SOMAXCONN[side]}: {', '.join(groups[side])}"
        for side in (1, 0, -1)
        if side in groups
    ]
    where = "" if ctx.port is None else f" on port {ctx.port}"
    return f"; listeners{where} " + "; ".join(parts)


def _where(row: Listener) -> str:
    if row.family == "ipv6":
        return f"[{row.address}]:{row.port}"
    return f"{row.address}:{row.port}"


# Listeners on the gateway port ---------------------------------------------


@_rule
def _listeners(ctx: _Context) -> Iterator[Finding]:
    rows = ctx.after.listeners
    if ctx.port is None or not rows:
        return
    if len(rows) > 1:
        yield Finding(
            "several_listeners",
            Severity.INFO,
            f"{len(rows)} sockets listen on port {ctx.port} (SO_REUSEPORT or "
            "IPv4 and IPv6): each has its own accept queue",
            "no action; compare their queues to spot a stuck worker",
        )
    somaxconn = ctx.limits.get("net.core.somaxconn")
    for row in rows:
        yield from _listener_findings(row, somaxconn)


def _listener_findings(row: Listener, somaxconn: int | None) -> Iterator[Finding]:
    limit, queue = row.backlog_limit, row.queue_len
    if limit is None:
        return
    where = _where(row)
    if queue > limit:
        yield Finding(
            "accept_queue_full",
            Severity.CRITICAL,
            f"listener {where} has a full accept queue ({queue}/{limit}): new "
            "SYNs are being dropped right now",
            "the process is not calling accept(): look for a blocked event "
            "loop or a stopped worker",
        )
    elif limit and queue >= NEARLY_FULL_RATIO * limit:
        yield Finding(
            "accept_queue_nearly_full",
            Severity.WARNING,
            f"listener {where} accept queue is {queue}/{limit}",
            "accept faster or raise the backlog before the next burst",
        )
    if limit < LOW_BACKLOG:
        capped = " (capped by net.core.somaxconn)" if limit == somaxconn else ""
        yield Finding(
            "listener_backlog_low",
            Severity.WARNING,
            f"listener {where} has a backlog limit of {limit}{capped}: a "
            f"reconnect storm of more than {limit + 1} devices overflows it "
            "(asyncio's default backlog is 100)",
            "pass a larger backlog to listen()/start_server() and raise "
            "net.core.somaxconn to match",
        )


# Conntrack ------------------------------------------------------------------


@_rule
def _conntrack(ctx: _Context) -> Iterator[Finding]:
    stats = ctx.after.conntrack
    if stats is None:
        return
    ratio = stats.fill_ratio
    if ratio is not None and ratio >= CONNTRACK_WARNING_RATIO:
        critical = ratio >= CONNTRACK_CRITICAL_RATIO
        yield Finding(
            "conntrack_full" if critical else "conntrack_filling",
            Severity.CRITICAL if critical else Severity.WARNING,
            f"conntrack table {ratio:.0%} full ({stats.count} of {stats.max} entries)",
            "raise net.netfilter.nf_conntrack_max on the node (through "
            "kube-proxy's conntrack settings) or find what opens so many flows",
        )
    yield from _conntrack_deltas(ctx)


def _conntrack_deltas(ctx: _Context) -> Iterator[Finding]:
    failed = ctx.conntrack_delta("insert_failed")
    if failed:
        yield Finding(
            "conntrack_insert_failed",
            Severity.WARNING,
            f"conntrack insert_failed grew by {failed} in {ctx.span}: the "
            "insertion race (two packets of one new flow, or two flows given "
            "the same NAT port)",
            "use --random-fully on SNAT/MASQUERADE rules and "
            "externalTrafficPolicy: Local for the device Service",
        )
    dropped = ctx.conntrack_delta("drop")
    if dropped:
        yield Finding(
            "conntrack_drop",
            Severity.CRITICAL,
            f"conntrack dropped {dropped} packets in {ctx.span} (failed insert "
            "or table full)",
            "check the conntrack fill and insert_failed findings; the kernel "
            "log says 'nf_conntrack: table full, dropping packet' when full",
        )
    evicted = ctx.conntrack_delta("early_drop")
    if evicted:
        yield Finding(
            "conntrack_early_drop",
            Severity.WARNING,
            f"conntrack evicted {evicted} unconfirmed entries in {ctx.span} to "
            "make room: the table was full",
            "raise net.netfilter.nf_conntrack_max on the node",
        )
