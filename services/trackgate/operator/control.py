"""The operator's three jobs, as calls the kopf handlers make.

- :meth:`Control.reconcile_all`: render every profile's DaemonSet
  (``manifests.py``) and make the namespace match: create, patch, delete.
  Every profile at once, because one profile's priority or selector moves
  the node affinity of the others.
- :meth:`Control.status_of`: fetch nodes and agent reports, and build the
  profile's status (``placement.py``, ``advisor.py``, ``status.py``).
- :meth:`Control.release_done`: whether the agents of a deleted profile
  have given their nodes back.

Fetching and patching happen here; deciding happens in the pure modules.
This file needs an API server and is not exercised by the test suite.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from trackgate.operator import advisor, placement, status
from trackgate.operator.errors import ProfileError
from trackgate.operator.kube import ClusterAPI, same_spec
from trackgate.operator.manifests import daemonset_name, render_daemonset
from trackgate.operator.profile import Profile, parse_profile
from trackgate.operator.report import AgentState, parse_report
from trackgate.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# A report older than this many agent intervals counts as silence.
_STALE_INTERVALS = 3


@dataclass(frozen=True)
class StatusUpdate:
    """A status to patch and the advice that is new since the last one."""

    status: dict[str, Any]
    new_advice: list[advisor.Advice]


class Control:
    """Glue between kopf handlers, the API and the pure modules."""

    def __init__(self, settings: OperatorSettings, api: ClusterAPI) -> None:
        self.settings = settings
        self.api = api
        self.template = settings.agent_template()

    def reconcile_all(self, gone: str | None = None) -> dict[str, str]:
        """Make the agent DaemonSets match all profiles; ``gone`` is left out.

        Returns problems per profile that could not be placed.
        """
        bodies = [b for b in self.api.list_profiles() if b["metadata"]["name"] != gone]
        profiles = [parse_profile(b) for b in bodies]
        uids = {b["metadata"]["name"]: b["metadata"]["uid"] for b in bodies}
        desired: dict[str, dict[str, Any]] = {}
        problems: dict[str, str] = {}
        for profile in profiles:
            try:
                manifest = render_daemonset(
                    profile, profiles, self.template, uids[profile.name]
                )
            except ProfileError as exc:
                problems[profile.name] = str(exc)
                continue
            if manifest is not None:
                desired[manifest["metadata"]["name"]] = manifest

        namespace = self.template.namespace
        existing = self.api.managed_daemonsets(namespace)
        for name, manifest in desired.items():
            if name in existing and same_spec(existing[name], manifest):
                continue
            log.info(
                "%s DaemonSet %s", "updating" if name in existing else "creating", name
            )
            self.api.apply_daemonset(manifest, exists=name in existing)
        for name in existing.keys() - desired.keys():
            if any(daemonset_name(p) == name for p in problems):
                continue  # keep agents of a profile we could not re-render
            log.info("deleting DaemonSet %s: its profile owns no node", name)
            self.api.delete_daemonset(namespace, name)
        return problems

    def status_of(
        self, body: Mapping[str, Any], placement_problem: str | None = None
    ) -> StatusUpdate:
        """The status ``body`` should have now, and its new advice."""
        profile = parse_profile(body)
        if placement_problem:
            profile = _with_problem(profile, placement_problem)
        profiles = [parse_profile(b) for b in self.api.list_profiles()]
        spots = placement.place(profiles, self.api.node_labels())
        spot = spots.get(profile.name, placement.Placement())

        agents = [
            status.AgentPod(pod, node, parse_report(text))
            for pod, node, text in self.api.agent_pods(
                self.template.namespace, profile.name
            )
        ]
        reports = [a.report for a in agents if a.report and a.node in spot.owned]
        advice = advisor.advise(profile, reports)

        previous = body.get("status") or {}
        stale = timedelta(seconds=self.settings.agent_interval * _STALE_INTERVALS)
        new_status = status.build_status(
            profile,
            spot,
            agents,
            advice,
            daemonset=daemonset_name(profile.name) if spot.owned else None,
            previous_conditions=previous.get("conditions") or [],
            now=datetime.now(UTC),
            stale_after=stale,
        )
        known = {a.get("message") for a in previous.get("advice") or []}
        return StatusUpdate(new_status, [a for a in advice if a.message not in known])

    def release_done(self, name: str) -> bool:
        """Whether every agent of profile ``name`` reported giving its node back."""
        for _pod, node, text in self.api.agent_pods(self.template.namespace, name):
            report = parse_report(text)
            if report is None or report.state is not AgentState.RELEASED:
                log.info("waiting for the agent on %s to release %s", node, name)
                return False
        return True


def _with_problem(profile: Profile, problem: str) -> Profile:
    return replace(profile, problems=(*profile.problems, problem))
