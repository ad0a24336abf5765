"""The allow-list of sysctls a NodeNetworkProfile may set, and its rules.

One entry per key: the value's shape, the accepted range, and where the key
can be written. ``Scope.NETNS`` keys exist in every network namespace (a
pod's copy is independent of the node's); ``Scope.NODE`` keys are global
and writable only from the node's initial namespace, so a ``podSysctls``
entry naming one is refused. The ranges are this project's policy (what a
tracker gateway has a reason to ask for), not the kernel's hard limits.

Pure data and pure functions: the CRD generator (``crd.py``), the
operator's validation (``profile.py``) and the agent (``engine.py``) all
read this table, so the three never disagree. Whether a key is actually
writable on a given kernel is found out by the agent, not here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Scope(enum.Enum):
    """Where a key may be written."""

    NETNS = "netns"  # per network namespace: node and pods
    NODE = "node"  # global, initial namespace only


class Shape(enum.Enum):
    """How a value is written and compared."""

    INT = "int"
    PAIR = "pair"  # two integers "low high", e.g. ip_local_port_range


@dataclass(frozen=True)
class SysctlKey:
    """One allowed sysctl: its name, shape, range and scope."""

    name: str
    shape: Shape
    minimum: int
    maximum: int
    scope: Scope
    summary: str

    @property
    def path(self) -> str:
        """Path below ``/proc/sys``: dots become slashes."""
        return self.name.replace(".", "/")


def _key(
    name: str, minimum: int, maximum: int, scope: Scope, summary: str
) -> SysctlKey:
    return SysctlKey(name, Shape.INT, minimum, maximum, scope, summary)


SOMAXCONN = "net.core.somaxconn"
SYN_BACKLOG = "net.ipv4.tcp_max_syn_backlog"
NETDEV_BACKLOG = "net.core.netdev_max_backlog"
SYNCOOKIES = "net.ipv4.tcp_syncookies"
CONNTRACK_MAX = "net.netfilter.nf_conntrack_max"
CONNTRACK_BUCKETS = "net.netfilter.nf_conntrack_buckets"
CONNTRACK_ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"
CONNTRACK_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"
KEEPALIVE_TIME = "net.ipv4.tcp_keepalive_time"
KEEPALIVE_INTVL = "net.ipv4.tcp_keepalive_intvl"
KEEPALIVE_PROBES = "net.ipv4.tcp_keepalive_probes"
PORT_RANGE = "net.ipv4.ip_local_port_range"
ABORT_ON_OVERFLOW = "net.ipv4.tcp_abort_on_overflow"

# Kernel defaults used when a relation needs a key the profile leaves out.
KERNEL_DEFAULTS: Mapping[str, int] = {
    KEEPALIVE_TIME: 7200,
    KEEPALIVE_INTVL: 75,
    KEEPALIVE_PROBES: 9,
}

# Longest keepalive probing (intvl x probes) we accept: past one hour a dead
# mobile peer is held long after carrier NATs have dropped its mapping. The
# kernel default is 75 s x 9 = 675 s.
MAX_KEEPALIVE_PROBE_WINDOW = 3600

_N = Scope.NETNS
KEYS: Mapping[str, SysctlKey] = {
    k.name: k
    for k in (
        _key(SOMAXCONN, 128, 3_240_000, _N, "accept-queue cap of listen()"),
        _key(SYN_BACKLOG, 128, 3_240_000, _N, "SYN queue bound, cookies off"),
        _key(NETDEV_BACKLOG, 1000, 3_240_000, Scope.NODE, "per-CPU input queue"),
        _key(SYNCOOKIES, 0, 2, _N, "0 off, 1 on overflow, 2 always"),
        _key(CONNTRACK_MAX, 65_536, 16_777_216, Scope.NODE, "conntrack table size"),
        _key(CONNTRACK_BUCKETS, 1024, 4_194_304, Scope.NODE, "conntrack hash size"),
        _key(CONNTRACK_ESTABLISHED, 600, 432_000, _N, "idle established flow"),
        _key(CONNTRACK_LIBERAL, 0, 1, _N, "only out-of-window RST invalid"),
        _key(KEEPALIVE_TIME, 30, 432_000, _N, "idle seconds before probes"),
        _key(KEEPALIVE_INTVL, 1, 600, _N, "seconds between probes"),
        _key(KEEPALIVE_PROBES, 1, 127, _N, "unanswered probes before reset"),
        SysctlKey(PORT_RANGE, Shape.PAIR, 1024, 65_535, _N, "ephemeral ports"),
        _key(ABORT_ON_OVERFLOW, 0, 1, _N, "RST instead of ignoring the ACK"),
    )
}

NETNS_KEYS: tuple[str, ...] = tuple(n for n, k in KEYS.items() if k.scope is _N)
NODE_ONLY_KEYS: tuple[str, ...] = tuple(
    n for n, k in KEYS.items() if k.scope is Scope.NODE
)


class ValueRefused(ValueError):
    """A value does not fit its key's shape or range (the message says why)."""


def normalize(name: str, raw: object) -> str:
    """The canonical text of ``raw`` for key ``name``, as the kernel prints it.

    Integers become decimal text; a pair becomes ``"low high"`` with one
    space. The agent writes this text and compares read-backs against it.

    Raises:
        KeyError: ``name`` is not in the allow-list.
        ValueRefused: the value has the wrong shape or is out of range.
    """
    key = KEYS[name]
    parts = _integers(name, raw)
    expected = 2 if key.shape is Shape.PAIR else 1
    if len(parts) != expected:
        shape = "two integers 'low high'" if expected == 2 else "one integer"
        raise ValueRefused(f"{name} takes {shape}, got {raw!r}")
    for part in parts:
        if not key.minimum <= part <= key.maximum:
            raise ValueRefused(f"{name}={part} is outside {key.minimum}..{key.maximum}")
    if key.shape is Shape.PAIR and parts[0] >= parts[1]:
        raise ValueRefused(f"{name}: low end {parts[0]} must be below {parts[1]}")
    return " ".join(str(p) for p in parts)


def _integers(name: str, raw: object) -> list[int]:
    if isinstance(raw, bool):
        raise ValueRefused(f"{name} takes integers, got a boolean")
    if isinstance(raw, int):
        return [raw]
    if not isinstance(raw, str):
        raise ValueRefused(f"{name} takes integers, got {type(raw).__name__}")
    try:
        return [int(word) for word in raw.split()]
    except ValueError:
        raise ValueRefused(f"{name} takes integers, got {raw!r}") from None


def same_value(left: str, right: str) -> bool:
    """Whether two sysctl texts are equal up to whitespace (tabs vs spaces)."""
    return left.split() == right.split()


def relation_problems(values: Mapping[str, str]) -> list[str]:
    """Problems between keys of one scope (already normalized values).

    - ``tcp_max_syn_backlog`` below ``somaxconn``: with cookies off, SYNs are
      dropped before the accept queue that somaxconn allows can ever fill;
    - keepalive probing longer than :data:`MAX_KEEPALIVE_PROBE_WINDOW`;
    - the first keepalive probe due only after conntrack forgot the idle
      flow: the probe of a NATed connection would then find no entry.

    Keys the profile leaves out count with their kernel defaults where a
    relation needs them (:data:`KERNEL_DEFAULTS`).
    """
    ints = {k: int(v) for k, v in values.items() if KEYS[k].shape is Shape.INT}
    problems: list[str] = []

    if (
        SOMAXCONN in ints
        and SYN_BACKLOG in ints
        and ints[SYN_BACKLOG] < ints[SOMAXCONN]
    ):
        problems.append(
            f"{SYN_BACKLOG}={ints[SYN_BACKLOG]} is below {SOMAXCONN}={ints[SOMAXCONN]}"
        )

    keepalive = (KEEPALIVE_TIME, KEEPALIVE_INTVL, KEEPALIVE_PROBES)
    if any(k in ints for k in keepalive):
        idle, intvl, probes = (ints.get(k, KERNEL_DEFAULTS[k]) for k in keepalive)
        if intvl * probes > MAX_KEEPALIVE_PROBE_WINDOW:
            problems.append(
                f"keepalive probing lasts {intvl} s x {probes} = {intvl * probes} s,"
                f" more than {MAX_KEEPALIVE_PROBE_WINDOW} s"
            )
        if CONNTRACK_ESTABLISHED in ints and idle >= ints[CONNTRACK_ESTABLISHED]:
            problems.append(
                f"the first keepalive probe ({KEEPALIVE_TIME}={idle}) comes after "
                f"conntrack forgets an idle flow ({CONNTRACK_ESTABLISHED}="
                f"{ints[CONNTRACK_ESTABLISHED]})"
            )
    return problems
