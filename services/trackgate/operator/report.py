"""What an agent reports about its node, and how the report travels.

The agent writes one :class:`AgentReport` as JSON into the annotation
:data:`REPORT_ANNOTATION` of its own Pod; the operator lists the agent pods
of a profile and folds their reports into the profile's status
(``status.py``). A Pod annotation needs no extra API type and disappears
with the agent; its size is bounded (:data:`MAX_REPORTED_PODS`,
:data:`MAX_FAILURES`) because all annotations of an object share 256 KiB.

Field names are camelCase on the wire, as everywhere in Kubernetes.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

REPORT_ANNOTATION = "trackgate.io/agent-report"

# Pods listed one by one in a report: a selected pod costs ~400 bytes of
# JSON, so 32 stay near 13 KiB, far inside the 256 KiB annotation budget.
MAX_REPORTED_PODS = 32

# Failures listed per target: a node has at most 13 allowed keys, so more
# than 16 lines would only repeat themselves.
MAX_FAILURES = 16


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class AgentState(enum.StrEnum):
    """Where an agent is with its profile on its node."""

    APPLIED = "Applied"  # every key holds the profile's value
    DEGRADED = "Degraded"  # some key failed; the others hold
    INVALID = "Invalid"  # the profile is invalid: nothing changed
    RELEASED = "Released"  # the profile is gone or moved: keys given back
    STANDBY = "Standby"  # another profile owns this node


class KeyFailure(_Wire):
    """One key that could not be applied, verified or restored."""

    target: str
    key: str
    error: str


class TargetReport(_Wire):
    """Outcome of one cycle in one network namespace (node or pod)."""

    target: str
    applied: dict[str, str] = Field(default_factory=dict)
    originals: dict[str, str] = Field(default_factory=dict)
    failures: list[KeyFailure] = Field(default_factory=list)
    drift_repaired: list[str] = Field(default_factory=list)
    restored: list[str] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    # Rise of each counter since the agent's previous cycle (absent on the
    # first cycle): what the advisor looks at, since totals only grow.
    increases: dict[str, int] = Field(default_factory=dict)


def counter_increases(
    previous: dict[str, int] | None, current: dict[str, int]
) -> dict[str, int]:
    """Per-counter rise from ``previous`` to ``current`` (never negative).

    ``conntrackCount`` and ``conntrackMax`` are gauges and are left out.
    """
    if previous is None:
        return {}
    return {
        name: max(0, value - previous[name])
        for name, value in current.items()
        if name in previous and name not in _GAUGES
    }


_GAUGES = frozenset({"conntrackCount", "conntrackMax"})


class AgentReport(_Wire):
    """Everything one agent says about its node in one cycle."""

    profile: str
    node: str
    observed_generation: int
    reported_at: str  # RFC 3339, UTC
    state: AgentState
    node_target: TargetReport
    pods: list[TargetReport] = Field(default_factory=list)
    pods_omitted: int = 0
    drift_repairs_total: int = 0
    message: str = ""

    def to_annotation(self) -> str:
        """Compact JSON for the Pod annotation, bounded in size."""
        bounded = self.model_copy(deep=True)
        bounded.pods_omitted += max(0, len(bounded.pods) - MAX_REPORTED_PODS)
        del bounded.pods[MAX_REPORTED_PODS:]
        for target in [bounded.node_target, *bounded.pods]:
            del target.failures[MAX_FAILURES:]
        return bounded.model_dump_json(by_alias=True, exclude_defaults=False)

    @property
    def failures(self) -> list[KeyFailure]:
        return [f for t in [self.node_target, *self.pods] for f in t.failures]


def parse_report(text: str | None) -> AgentReport | None:
    """The report in an annotation, or ``None`` when missing or unreadable."""
    if not text:
        return None
    try:
        return AgentReport.model_validate_json(text)
    except ValidationError:
        return None


def report_fields(report: AgentReport) -> dict[str, Any]:
    """The report as plain JSON data (camelCase), e.g. for a status entry."""
    data: dict[str, Any] = report.model_dump(mode="json", by_alias=True)
    return data
