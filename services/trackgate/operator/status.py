"""Fold agent reports, arbitration and advice into a profile's status.

:func:`build_status` is the whole of it: a pure function from what the
operator fetched (the profile, where it stands among the other profiles,
its agents' reports, the previous conditions) to the ``status`` object it
patches. Conditions:

- ``Ready``: every node the profile owns reported ``Applied`` for the
  current generation, recently, without failures;
- ``Degraded``: some agent reported a failure (the message names the
  first ones), or an owned node has no fresh report;
- ``Conflict``: another profile with the same priority selects some of the
  same nodes (named in the message; the name that sorts first wins them);
- ``Invalid``: a value was refused (the message lists why; agents change
  nothing while the profile is invalid).

``lastTransitionTime`` moves only when a condition's status changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from trackgate.operator.advisor import Advice
from trackgate.operator.placement import Placement
from trackgate.operator.profile import Profile
from trackgate.operator.report import AgentReport, AgentState, TargetReport

# Node reports listed in status: each is ~1 KiB, and the whole object must
# stay far below etcd's 1.5 MiB; counts in status.nodes cover every node.
MAX_NODE_REPORTS = 50

# Advice entries kept: one per finding kind is enough to act on.
MAX_ADVICE = 10

# Failures quoted in the Degraded message before "and N more".
_QUOTED_FAILURES = 3


@dataclass(frozen=True)
class AgentPod:
    """An agent pod of the profile and the report found on it, if any."""

    name: str
    node: str
    report: AgentReport | None


def build_status(
    profile: Profile,
    placement: Placement,
    agents: Sequence[AgentPod],
    advice: Sequence[Advice],
    *,
    daemonset: str | None,
    previous_conditions: Sequence[Mapping[str, Any]],
    now: datetime,
    stale_after: timedelta,
) -> dict[str, Any]:
    """The complete ``status`` for ``profile`` (see the module docstring)."""
    owned = set(placement.owned)
    fresh = {
        a.node: a
        for a in agents
        if a.node in owned
        and a.report is not None
        and _fresh(a.report, now, stale_after)
    }
    reports = [a.report for a in fresh.values() if a.report is not None]
    applied = [
        r
        for r in reports
        if r.state is AgentState.APPLIED and r.observed_generation == profile.generation
    ]
    degraded = [r for r in reports if r.failures or r.state is AgentState.DEGRADED]
    silent = sorted(owned - set(fresh))

    conditions = _Conditions(previous_conditions, now, profile.generation)
    conditions.set(
        "Invalid",
        not profile.valid,
        "ValueRefused" if profile.problems else "Valid",
        "; ".join(profile.problems),
    )
    _conflict(conditions, profile, placement)
    _degraded(conditions, degraded, silent)
    _ready(conditions, profile, placement, applied, degraded, silent)

    node_reports = sorted(fresh.values(), key=lambda a: (not _has_failures(a), a.node))
    return {
        "observedGeneration": profile.generation,
        "daemonSet": daemonset or "",
        "conditions": conditions.items,
        "nodes": {
            "selected": len(placement.selected),
            "owned": len(owned),
            "reporting": len(fresh),
            "applied": len(applied),
            "degraded": len(degraded),
        },
        "conflicts": _counts(placement.ties),
        "shadowedBy": _counts(placement.shadowed_by),
        "problems": list(profile.problems),
        "advice": [a.as_status() for a in advice[:MAX_ADVICE]],
        "nodeReports": [_node_entry(a) for a in node_reports[:MAX_NODE_REPORTS]],
        "nodeReportsOmitted": max(0, len(node_reports) - MAX_NODE_REPORTS),
    }


def _fresh(report: AgentReport, now: datetime, stale_after: timedelta) -> bool:
    try:
        reported = datetime.fromisoformat(report.reported_at)
    except ValueError:
        return False
    return now - reported <= stale_after


def _has_failures(agent: AgentPod) -> bool:
    return bool(agent.report and agent.report.failures)


def _counts(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"profile": name, "nodes": n} for name, n in sorted(counts.items())]


def _conflict(conditions: _Conditions, profile: Profile, placement: Placement) -> None:
    if not placement.ties:
        conditions.set("Conflict", False, "NoTie", "")
        return
    others = ", ".join(f"{n} ({c} nodes)" for n, c in sorted(placement.ties.items()))
    conditions.set(
        "Conflict",
        True,
        "PriorityTie",
        f"same priority {profile.priority} as {others}; on shared nodes the "
        "name that sorts first wins: give one profile a higher priority",
    )


def _degraded(
    conditions: _Conditions, degraded: Sequence[AgentReport], silent: Sequence[str]
) -> None:
    if not degraded and not silent:
        conditions.set("Degraded", False, "NoFailures", "")
        return
    parts: list[str] = []
    if degraded:
        failures = [f for r in degraded for f in r.failures]
        quoted = [
            f"{r.node} {f.target} {f.key}: {f.error}"
            for r in degraded
            for f in r.failures
        ][:_QUOTED_FAILURES]
        more = len(failures) - len(quoted)
        parts.append(
            f"{len(degraded)} nodes report failures: "
            + "; ".join(quoted)
            + (f"; and {more} more" if more > 0 else "")
        )
    if silent:
        parts.append(
            f"no recent report from {len(silent)} nodes: " + ", ".join(silent[:5])
        )
    reason = "KeyFailures" if degraded else "AgentsSilent"
    conditions.set("Degraded", True, reason, "; ".join(parts))


def _ready(
    conditions: _Conditions,
    profile: Profile,
    placement: Placement,
    applied: Sequence[AgentReport],
    degraded: Sequence[AgentReport],
    silent: Sequence[str],
) -> None:
    owned = len(placement.owned)
    if not profile.valid:
        conditions.set("Ready", False, "Invalid", "the profile has refused values")
    elif profile.deleting:
        conditions.set("Ready", False, "Deleting", "agents are giving the nodes back")
    elif owned == 0:
        if placement.shadowed_by:
            winners = ", ".join(sorted(placement.shadowed_by))
            message = f"every selected node is owned by a higher priority: {winners}"
        else:
            message = "the node selector matches no node"
        conditions.set("Ready", False, "NoNodes", message)
    elif len(applied) == owned and not degraded:
        conditions.set("Ready", True, "Applied", f"applied on all {owned} nodes")
    else:
        conditions.set(
            "Ready",
            False,
            "Pending" if not degraded else "Degraded",
            f"applied on {len(applied)} of {owned} nodes"
            + (f", {len(silent)} not reporting" if silent else ""),
        )


def _node_entry(agent: AgentPod) -> dict[str, Any]:
    report = agent.report
    assert report is not None
    node = report.node_target
    return {
        "node": agent.node,
        "agentPod": agent.name,
        "state": report.state.value,
        "observedGeneration": report.observed_generation,
        "reportedAt": report.reported_at,
        "applied": dict(node.applied),
        "originals": dict(node.originals),
        "failures": [f.model_dump() for f in node.failures],
        "counters": dict(node.counters),
        "driftRepairs": report.drift_repairs_total,
        "pods": [_pod_entry(p) for p in report.pods],
        "podsOmitted": report.pods_omitted,
    }


def _pod_entry(pod: TargetReport) -> dict[str, Any]:
    return {
        "target": pod.target,
        "applied": dict(pod.applied),
        "failures": [f.model_dump() for f in pod.failures],
        "counters": dict(pod.counters),
    }


class _Conditions:
    """Conditions keyed by type, keeping transition times that did not move."""

    def __init__(
        self, previous: Sequence[Mapping[str, Any]], now: datetime, generation: int
    ) -> None:
        self._previous = {c.get("type"): c for c in previous}
        self._now = now.isoformat().replace("+00:00", "Z")
        self._generation = generation
        self.items: list[dict[str, Any]] = []

    def set(self, kind: str, status: bool, reason: str, message: str) -> None:
        text = "True" if status else "False"
        before = self._previous.get(kind)
        since = self._now
        if before is not None and before.get("status") == text:
            since = str(before.get("lastTransitionTime") or self._now)
        self.items.append(
            {
                "type": kind,
                "status": text,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": self._generation,
            }
        )
