"""Status aggregation, conditions and advice, from agent reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trackgate.operator import catalog
from trackgate.operator.advisor import advise
from trackgate.operator.placement import Placement
from trackgate.operator.profile import PodSysctls, Profile
from trackgate.operator.report import (
    AgentReport,
    AgentState,
    KeyFailure,
    TargetReport,
    counter_increases,
    parse_report,
)
from trackgate.operator.status import AgentPod, build_status

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PROFILE = Profile(
    name="gateways",
    generation=4,
    node_selector={"pool": "gateways"},
    node_sysctls={catalog.CONNTRACK_MAX: "262144"},
)


def _report(
    node: str,
    state: AgentState = AgentState.APPLIED,
    generation: int = 4,
    age: float = 10,
    failures: list[KeyFailure] | None = None,
    counters: dict[str, int] | None = None,
    increases: dict[str, int] | None = None,
    pods: list[TargetReport] | None = None,
) -> AgentReport:
    return AgentReport(
        profile="gateways",
        node=node,
        observed_generation=generation,
        reported_at=(NOW - timedelta(seconds=age)).isoformat(),
        state=state,
        node_target=TargetReport(
            target="node",
            applied={catalog.CONNTRACK_MAX: "262144"},
            failures=failures or [],
            counters=counters or {},
            increases=increases or {},
        ),
        pods=pods or [],
    )


def _status(
    reports: list[AgentReport],
    owned: tuple[str, ...] = ("n1", "n2"),
    profile: Profile = PROFILE,
    previous: list[dict[str, Any]] | None = None,
    **placement: Any,
) -> dict[str, Any]:
    agents = [AgentPod(f"agent-{r.node}", r.node, r) for r in reports]
    return build_status(
        profile,
        Placement(selected=owned, owned=owned, **placement),
        agents,
        advise(profile, reports),
        daemonset="trackgate-agent-gateways",
        previous_conditions=previous or [],
        now=NOW,
        stale_after=timedelta(seconds=90),
    )


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


FAILURE = KeyFailure(target="node", key=catalog.CONNTRACK_MAX, error="refused")


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        (
            [_report("n1"), _report("n2")],
            {"Ready": ("True", "Applied"), "Degraded": ("False", "NoFailures")},
        ),
        (
            [_report("n1"), _report("n2", generation=3)],
            {"Ready": ("False", "Pending"), "Degraded": ("False", "NoFailures")},
        ),
        (
            [_report("n1")],
            {"Ready": ("False", "Pending"), "Degraded": ("True", "AgentsSilent")},
        ),
        (
            [_report("n1"), _report("n2", age=600)],
            {"Ready": ("False", "Pending"), "Degraded": ("True", "AgentsSilent")},
        ),
        (
            [_report("n1"), _report("n2", AgentState.DEGRADED, failures=[FAILURE])],
            {"Ready": ("False", "Degraded"), "Degraded": ("True", "KeyFailures")},
        ),
    ],
)
def test_ready_and_degraded_follow_the_agent_reports(
    reports: list[AgentReport], expected: dict[str, tuple[str, str]]
) -> None:
    conditions = _conditions(_status(reports))

    assert {k: conditions[k] for k in expected} == expected


def test_counts_and_node_reports_put_failures_first() -> None:
    status = _status(
        [_report("n1"), _report("n2", AgentState.DEGRADED, failures=[FAILURE])]
    )

    assert status["nodes"] == {
        "selected": 2,
        "owned": 2,
        "reporting": 2,
        "applied": 1,
        "degraded": 1,
    }
    assert [r["node"] for r in status["nodeReports"]] == ["n2", "n1"]
    assert status["nodeReports"][0]["failures"] == [
        {"target": "node", "key": catalog.CONNTRACK_MAX, "error": "refused"}
    ]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "n2 node net.netfilter.nf_conntrack_max: refused" in degraded["message"]


def test_tie_sets_conflict_naming_the_other_profile() -> None:
    status = _status([_report("n1"), _report("n2")], ties={"zone-a": 2})

    conflict = next(c for c in status["conditions"] if c["type"] == "Conflict")
    assert (conflict["status"], conflict["reason"]) == ("True", "PriorityTie")
    assert "zone-a (2 nodes)" in conflict["message"]
    assert status["conflicts"] == [{"profile": "zone-a", "nodes": 2}]


def test_invalid_profile_reports_why_and_is_not_ready() -> None:
    invalid = Profile(name="gateways", problems=("nodeSysctls: kernel.panic is not",))

    conditions = _conditions(_status([], owned=(), profile=invalid))

    assert conditions["Invalid"] == ("True", "ValueRefused")
    assert conditions["Ready"] == ("False", "Invalid")


def test_fully_shadowed_profile_says_who_owns_its_nodes() -> None:
    status = _status([], owned=(), shadowed_by={"gateways-a": 3})

    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NoNodes"
    assert "gateways-a" in ready["message"]


def test_transition_time_moves_only_when_status_changes() -> None:
    earlier = "2026-04-01T00:00:00Z"
    previous = [
        {"type": "Ready", "status": "True", "lastTransitionTime": earlier},
        {"type": "Degraded", "status": "True", "lastTransitionTime": earlier},
    ]

    status = _status([_report("n1"), _report("n2")], previous=previous)

    times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
    assert times["Ready"] == earlier
    assert times["Degraded"] == "2026-05-01T12:00:00Z"


def test_conntrack_fill_advice_names_the_pool_and_a_larger_limit() -> None:
    full = {"conntrackCount": 241_000, "conntrackMax": 262_144}
    reports = [_report(f"n{i}", counters=full) for i in range(3)]
    reports.append(
        _report("n9", counters={"conntrackCount": 10, "conntrackMax": 262_144})
    )

    advice = {a.reason: a for a in advise(PROFILE, reports)}

    assert advice["ConntrackTableFull"].message == (
        "conntrack table at 92% on 3 of 4 nodes of pool pool=gateways: raise "
        "net.netfilter.nf_conntrack_max (now 262144, try 524288)"
    )
    assert advice["ConntrackTableFull"].nodes == 3


def test_listen_overflow_in_pods_advises_pod_somaxconn() -> None:
    profile = Profile(
        name="gateways",
        node_selector={"pool": "gateways"},
        pod_sysctls=PodSysctls({"app": "ingest"}, (), {catalog.SOMAXCONN: "4096"}),
    )
    pod = TargetReport(
        target="pod:trackgate/ingest-0", increases={"ListenOverflows": 7}
    )

    advice = {a.reason: a for a in advise(profile, [_report("n1", pods=[pod])])}

    assert "pods trackgate/ingest-0" in advice["PodListenOverflows"].message
    assert "podSysctls (now 4096)" in advice["PodListenOverflows"].message


@pytest.mark.parametrize(
    ("node_sysctls", "reasons"),
    [
        ({catalog.SOMAXCONN: "8192"}, {"NodeValueNotInPods"}),
        ({catalog.CONNTRACK_MAX: "262144"}, {"KubeProxyOverlap"}),
        ({catalog.KEEPALIVE_TIME: "300"}, set()),
    ],
)
def test_spec_advice(node_sysctls: dict[str, str], reasons: set[str]) -> None:
    profile = Profile(name="p", node_sysctls=node_sysctls)

    assert {a.reason for a in advise(profile, [])} == reasons


def test_counter_increases_skip_gauges_and_first_cycle() -> None:
    current = {"ListenOverflows": 12, "conntrackCount": 50, "conntrackDrop": 3}

    assert counter_increases(None, current) == {}
    assert counter_increases(
        {"ListenOverflows": 10, "conntrackCount": 90, "conntrackDrop": 3}, current
    ) == {"ListenOverflows": 2, "conntrackDrop": 0}


def test_report_annotation_round_trips_and_is_bounded() -> None:
    pods = [TargetReport(target=f"pod:ns/p{i}") for i in range(40)]
    report = _report("n1", pods=pods)

    text = report.to_annotation()
    back = parse_report(text)

    assert back is not None
    assert len(back.pods) == 32 and back.pods_omitted == 8
    assert back.node_target == report.node_target
    assert len(report.pods) == 40  # the original is not trimmed
    assert parse_report("{not json") is None
