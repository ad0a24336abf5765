"""``trackgate agent``: one cycle every interval, for one profile on one node.

Each cycle asks the API server four things (the profile, all profiles, the
node's labels, the pods on the node), decides with the pure functions of
``profile.py`` and ``placement.py``, lets the :class:`Engine` act on the
kernel, and writes the report onto the agent's own Pod. The decisions:

- profile gone or being deleted: release its keys (restore originals if
  ``restoreOnDelete``), report ``Released``, and idle;
- another profile now owns the node (labels changed, a higher priority
  appeared): release, report ``Standby``;
- profile invalid: change nothing, report ``Invalid``;
- otherwise apply node values and, for selected non-host-network pods found
  through their cgroup, pod values; report ``Applied`` or ``Degraded``.

On SIGTERM the agent looks once more: it releases only when the node is no
longer its profile's (a DaemonSet update or a node drain leaves the values
in place for the next agent). If the API cannot be asked, it leaves them.

This loop is glue around tested parts and needs an API server; the suite
exercises the engine and the decisions, not this file.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

from trackgate.operator import placement, podprocs
from trackgate.operator.engine import CycleResult, Engine, PodTarget
from trackgate.operator.errors import ClusterError, OperatorError
from trackgate.operator.kube import ClusterAPI, PodInfo
from trackgate.operator.netns import Target
from trackgate.operator.profile import Profile, parse_profile
from trackgate.operator.report import (
    REPORT_ANNOTATION,
    AgentReport,
    AgentState,
    TargetReport,
    counter_increases,
)
from trackgate.operator.settings import AgentSettings

log = logging.getLogger(__name__)


class Agent:
    """The agent process: settings, API access, engine, and a stop flag."""

    def __init__(self, settings: AgentSettings, api: ClusterAPI) -> None:
        self.settings = settings
        self.api = api
        self.engine = Engine(
            settings.agent_state_dir,
            Target("node", settings.node_netns),
            proc_root=settings.agent_proc_root,
        )
        self.stopping = threading.Event()
        self._previous: dict[str, dict[str, int]] = {}
        self._drift_total = 0

    def run(self) -> None:
        """Cycle until SIGTERM/SIGINT, then give the node back if it left us."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "agent for profile %s on node %s started",
            self.settings.agent_profile,
            self.settings.agent_node_name,
        )
        while not self.stopping.is_set():
            try:
                self.cycle()
            except OperatorError as exc:
                log.warning("cycle failed, retrying next interval: %s", exc)
            self.stopping.wait(self.settings.agent_interval)
        self.farewell()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this cycle", signum)
        self.stopping.set()

    def cycle(self) -> AgentReport:
        """One look at the cluster and the kernel; returns the report sent."""
        name, node = self.settings.agent_profile, self.settings.agent_node_name
        body = self.api.get_profile(name)
        profiles = [parse_profile(b) for b in self.api.list_profiles()]
        labels = self.api.labels_of_node(node)
        pods = self.api.pods_on_node(node)
        targets, present = self._pod_targets(pods, None)

        self.engine.release_orphans({p.name for p in profiles}, targets, present)
        profile = parse_profile(body) if body is not None else None
        owner = placement.owner_of(profiles, labels)

        if profile is None or profile.deleting:
            restore = profile.restore_on_delete if profile else True
            result = self.engine.release(
                name, targets, restore=restore, present=present
            )
            return self._send(profile, AgentState.RELEASED, result, "profile deleted")
        if owner is None or owner.name != name:
            result = self.engine.release(
                name, targets, restore=profile.restore_on_delete, present=present
            )
            holder = owner.name if owner else "no profile"
            return self._send(
                profile, AgentState.STANDBY, result, f"node is {holder}'s"
            )
        if not profile.valid:
            idle = CycleResult(node=TargetReport(target="node"))
            idle.node.counters = self.engine.counters()
            return self._send(profile, AgentState.INVALID, idle, profile.problems[0])

        targets, present = self._pod_targets(pods, profile)
        result = self.engine.apply(
            name,
            profile.node_sysctls,
            targets,
            restore=profile.restore_on_delete,
            present=present,
        )
        state = AgentState.DEGRADED if result.failures else AgentState.APPLIED
        return self._send(profile, state, result, "")

    def farewell(self) -> None:
        """Release the node on shutdown only if it is no longer ours."""
        name, node = self.settings.agent_profile, self.settings.agent_node_name
        try:
            body = self.api.get_profile(name)
            profiles = [parse_profile(b) for b in self.api.list_profiles()]
            owner = placement.owner_of(profiles, self.api.labels_of_node(node))
            targets, present = self._pod_targets(self.api.pods_on_node(node), None)
        except ClusterError as exc:
            log.warning("cannot ask the API at shutdown, leaving values: %s", exc)
            return
        profile = parse_profile(body) if body is not None else None
        if profile and not profile.deleting and owner and owner.name == name:
            log.info("node %s is still %s's: leaving values in place", node, name)
            return
        restore = profile.restore_on_delete if profile else True
        self.engine.release(name, targets, restore=restore, present=present)
        log.info("released node %s from profile %s", node, name)

    def _pod_targets(
        self, pods: list[PodInfo], profile: Profile | None
    ) -> tuple[list[PodTarget], set[str]]:
        """Pods whose namespace we found, with values where ``profile`` selects."""
        pids = podprocs.find_pod_pids(self.settings.agent_proc_root)
        rule = profile.pod_sysctls if profile else None
        targets = []
        for pod in pods:
            pid = pids.get(pod.uid)
            if pod.host_network or pid is None:
                continue
            selected = rule is not None and rule.selects(pod.namespace, pod.labels)
            targets.append(
                PodTarget(
                    uid=pod.uid,
                    name=f"{pod.namespace}/{pod.name}",
                    netns_path=podprocs.netns_path(pid, self.settings.agent_proc_root),
                    values=dict(rule.sysctls) if rule and selected else {},
                )
            )
        return targets, {p.uid for p in pods}

    def _send(
        self,
        profile: Profile | None,
        state: AgentState,
        result: CycleResult,
        message: str,
    ) -> AgentReport:
        for target in [result.node, *result.pods]:
            target.increases = counter_increases(
                self._previous.get(target.target), target.counters
            )
            if target.counters:
                self._previous[target.target] = dict(target.counters)
        self._drift_total += result.drift_repairs
        report = AgentReport(
            profile=self.settings.agent_profile,
            node=self.settings.agent_node_name,
            observed_generation=profile.generation if profile else 0,
            reported_at=datetime.now(UTC).isoformat(),
            state=state,
            node_target=result.node,
            pods=result.pods,
            drift_repairs_total=self._drift_total,
            message=message,
        )
        self.api.annotate_pod(
            self.settings.agent_pod_namespace,
            self.settings.agent_pod_name,
            REPORT_ANNOTATION,
            report.to_annotation(),
        )
        log.info(
            "profile %s on %s: %s, %d keys applied, %d failures",
            report.profile,
            report.node,
            state.value,
            len(result.node.applied) + sum(len(p.applied) for p in result.pods),
            len(result.failures),
        )
        return report
