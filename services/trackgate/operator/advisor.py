"""Recommendations from agent counters and from the profile itself.

Reads what the agents measured (conntrack fill, insert failures and drops,
listen-queue overflows in the node's and in pods' namespaces, drift
repairs) plus the profile's spec, and says in one sentence what to change,
with the number of nodes each finding concerns:

    conntrack table at 92% on 3 of 5 nodes of pool role=gateways:
    raise net.netfilter.nf_conntrack_max (now 262144, try 524288)

Pure functions; the operator puts the result into ``status.advice`` and
emits a Kubernetes Event for each new piece of advice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trackgate.operator import catalog
from trackgate.operator.profile import Profile
from trackgate.operator.report import AgentReport

# Conntrack fill at which we advise a larger table: past 90 % the kernel is
# one burst away from "table full, dropping packet".
CONNTRACK_FILL_WARNING = 0.90

# Keys set in nodeSysctls that a pod with its own namespace never sees.
_POD_LOCAL_KEYS = (catalog.SOMAXCONN, catalog.SYN_BACKLOG, catalog.ABORT_ON_OVERFLOW)

# Keys kube-proxy also writes when it starts (conntrack sizing and timeouts).
_KUBE_PROXY_KEYS = (
    catalog.CONNTRACK_MAX,
    catalog.CONNTRACK_ESTABLISHED,
    catalog.CONNTRACK_LIBERAL,
)


@dataclass(frozen=True)
class Advice:
    """One recommendation: a machine-readable reason and a sentence."""

    reason: str
    message: str
    nodes: int = 0

    def as_status(self) -> dict[str, object]:
        return {"reason": self.reason, "message": self.message, "nodes": self.nodes}


def advise(profile: Profile, reports: Sequence[AgentReport]) -> list[Advice]:
    """Everything worth saying about ``profile`` given its agents' reports."""
    pool = _pool(profile)
    total = len(reports)
    advice: list[Advice] = []
    advice += _conntrack_fill(reports, pool, total)
    advice += _conntrack_failures(reports, pool, total)
    advice += _listen_overflows(profile, reports, pool, total)
    advice += _drift(reports, pool, total)
    advice += _spec_advice(profile)
    return advice


def _pool(profile: Profile) -> str:
    if not profile.node_selector:
        return "all nodes"
    labels = ",".join(f"{k}={v}" for k, v in sorted(profile.node_selector.items()))
    return f"pool {labels}"


def _conntrack_fill(
    reports: Sequence[AgentReport], pool: str, total: int
) -> list[Advice]:
    full: list[tuple[float, int]] = []
    for report in reports:
        counters = report.node_target.counters
        limit = counters.get("conntrackMax") or 0
        if (
            limit
            and counters.get("conntrackCount", 0) / limit >= CONNTRACK_FILL_WARNING
        ):
            full.append((counters["conntrackCount"] / limit, limit))
    if not full:
        return []
    worst, limit = max(full)
    suggestion = min(limit * 2, catalog.KEYS[catalog.CONNTRACK_MAX].maximum)
    return [
        Advice(
            "ConntrackTableFull",
            f"conntrack table at {worst:.0%} on {len(full)} of {total} nodes of "
            f"{pool}: raise {catalog.CONNTRACK_MAX} (now {limit}, try {suggestion})",
            len(full),
        )
    ]


def _conntrack_failures(
    reports: Sequence[AgentReport], pool: str, total: int
) -> list[Advice]:
    hit = [
        r
        for r in reports
        if r.node_target.increases.get("conntrackInsertFailed", 0)
        or r.node_target.increases.get("conntrackDrop", 0)
    ]
    if not hit:
        return []
    failed = sum(r.node_target.increases.get("conntrackInsertFailed", 0) for r in hit)
    dropped = sum(r.node_target.increases.get("conntrackDrop", 0) for r in hit)
    return [
        Advice(
            "ConntrackInsertFailures",
            f"conntrack insert_failed +{failed}, drop +{dropped} on {len(hit)} of "
            f"{total} nodes of {pool} since the last report: check NAT port races "
            "(externalTrafficPolicy: Local, --random-fully) and the table size",
            len(hit),
        )
    ]


def _listen_overflows(
    profile: Profile, reports: Sequence[AgentReport], pool: str, total: int
) -> list[Advice]:
    advice: list[Advice] = []
    in_pods = [
        (r, p)
        for r in reports
        for p in r.pods
        if p.increases.get("ListenOverflows", 0) > 0
    ]
    if in_pods:
        nodes = len({r.node for r, _ in in_pods})
        current = _pod_value(profile, catalog.SOMAXCONN)
        names = ", ".join(sorted({p.target.removeprefix("pod:") for _, p in in_pods}))
        advice.append(
            Advice(
                "PodListenOverflows",
                f"accept queues overflowed in pods {names} on {nodes} of {total} "
                f"nodes of {pool}: raise {catalog.SOMAXCONN} in podSysctls "
                f"(now {current}) and the listener's backlog",
                nodes,
            )
        )
    on_nodes = [
        r for r in reports if r.node_target.increases.get("ListenOverflows", 0) > 0
    ]
    if on_nodes:
        current = profile.node_sysctls.get(catalog.SOMAXCONN, "the kernel default")
        advice.append(
            Advice(
                "NodeListenOverflows",
                f"accept queues of host-network listeners overflowed on "
                f"{len(on_nodes)} of {total} nodes of {pool}: raise "
                f"{catalog.SOMAXCONN} in nodeSysctls (now {current})",
                len(on_nodes),
            )
        )
    return advice


def _pod_value(profile: Profile, key: str) -> str:
    if profile.pod_sysctls and key in profile.pod_sysctls.sysctls:
        return profile.pod_sysctls.sysctls[key]
    return "the namespace default"


def _drift(reports: Sequence[AgentReport], pool: str, total: int) -> list[Advice]:
    drifting: dict[str, int] = {}
    for report in reports:
        for key in report.node_target.drift_repaired:
            drifting[key] = drifting.get(key, 0) + 1
    if not drifting:
        return []
    keys = ", ".join(sorted(drifting))
    hint = ""
    if any(k in _KUBE_PROXY_KEYS for k in drifting):
        hint = (
            "; kube-proxy rewrites conntrack values when it starts: set them in "
            "its configuration (conntrack.maxPerCore: 0 leaves the limit alone)"
        )
    nodes = max(drifting.values())
    return [
        Advice(
            "Drift",
            f"something else changed {keys} on {nodes} of {total} nodes of {pool}; "
            f"the agents wrote the values again{hint}",
            nodes,
        )
    ]


def _spec_advice(profile: Profile) -> list[Advice]:
    advice: list[Advice] = []
    node_only = [k for k in _POD_LOCAL_KEYS if k in profile.node_sysctls]
    pod_keys = profile.pod_sysctls.sysctls if profile.pod_sysctls else {}
    missing = [k for k in node_only if k not in pod_keys]
    if missing:
        advice.append(
            Advice(
                "NodeValueNotInPods",
                f"{', '.join(missing)} in nodeSysctls reach only host-network pods: "
                "every other pod has its own network namespace, which starts from "
                "kernel defaults; set them in podSysctls for those pods",
            )
        )
    proxy = [k for k in _KUBE_PROXY_KEYS if k in profile.node_sysctls]
    if proxy:
        advice.append(
            Advice(
                "KubeProxyOverlap",
                f"kube-proxy also sets {', '.join(proxy)} when it starts; align its "
                "conntrack settings with this profile or the agents will keep "
                "repairing drift after every kube-proxy restart",
            )
        )
    return advice
