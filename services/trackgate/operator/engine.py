"""The agent's core: apply, verify, repair drift, restore, in any namespace.

One :class:`Engine` serves one node. It is told *what* should hold (values
for the node, values per selected pod) and makes it so, cycle after cycle:

1. before the first change of a key in a namespace it records the value it
   found (``statefile.py``), unless a record exists already;
2. it writes only keys whose current value differs, then reads every key
   back and reports the ones the kernel did not keep;
3. a key that held our value last cycle and now differs was changed behind
   our back: it is written again and counted as a drift repair;
4. keys the owner no longer asks for, pods no longer selected and profiles
   released get their recorded originals back (when the profile says so);
5. counters (listen overflows, conntrack fill and failures) are read in the
   same namespace for the report.

The node is a :class:`~trackgate.operator.netns.Target` like any pod, so
tests point it at a namespace they created. The engine never talks to
Kubernetes: which pods exist and which are selected is the caller's input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trackgate.diagnostics import kernel
from trackgate.diagnostics.errors import DiagnosticsError
from trackgate.operator import catalog
from trackgate.operator.errors import NetnsGone, NodeError
from trackgate.operator.netns import Sysctls, Target, run_in
from trackgate.operator.report import KeyFailure, TargetReport
from trackgate.operator.statefile import KeyRecord, NodeState, StateFile

log = logging.getLogger(__name__)

NODE_ID = "node"


@dataclass(frozen=True)
class PodTarget:
    """A pod on this node: its UID, its namespace path, and what it should hold.

    ``values`` is empty for a live pod that is *not* selected (any records
    of it are restored).
    """

    uid: str
    name: str  # "<namespace>/<pod>"
    netns_path: str
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return Target(label=f"pod:{self.name}", netns_path=self.netns_path)

    @property
    def target_id(self) -> str:
        return f"pod:{self.uid}"


@dataclass
class CycleResult:
    """What one cycle did on the node and in each pod it touched."""

    node: TargetReport
    pods: list[TargetReport] = field(default_factory=list)

    @property
    def failures(self) -> list[KeyFailure]:
        return [f for t in [self.node, *self.pods] for f in t.failures]

    @property
    def drift_repairs(self) -> int:
        return sum(len(t.drift_repaired) for t in [self.node, *self.pods])


class Engine:
    """Applies and restores sysctls for the agents of one node."""

    def __init__(
        self, state_dir: str | Path, node: Target, proc_root: str = "/proc"
    ) -> None:
        self.state = StateFile(state_dir)
        self.node = node
        self.sysctls = Sysctls(proc_root)

    # -- the two things an agent asks for ---------------------------------

    def apply(
        self,
        owner: str,
        node_values: Mapping[str, str],
        pods: Sequence[PodTarget],
        *,
        restore: bool = True,
        present: Collection[str] | None = None,
    ) -> CycleResult:
        """Make ``node_values`` and each pod's values hold for ``owner``.

        ``pods`` lists the pods whose namespaces the caller found (with
        empty values when not selected). ``present`` holds the UIDs of every
        pod still on the node (default: those of ``pods``); records of pods
        outside it are dropped, since their namespaces are gone.
        ``restore`` is the profile's restoreOnDelete, kept for release.
        """
        with self.state.locked() as state:
            node = self._converge_target(
                state, NODE_ID, self.node, owner, node_values, restore
            )
            results = [
                self._converge_target(
                    state, pod.target_id, pod.target, owner, pod.values, restore
                )
                for pod in pods
                if pod.values or pod.target_id in state.targets
            ]
            _forget_absent_pods(state, _present_ids(pods, present))
        return CycleResult(node=node, pods=[r for r in results if _worth(r)])

    def release(
        self,
        owner: str,
        pods: Sequence[PodTarget],
        *,
        restore: bool,
        present: Collection[str] | None = None,
    ) -> CycleResult:
        """Give back every key ``owner`` holds on this node.

        With ``restore`` the recorded originals are written back; without
        it the records are only forgotten and the values stay. ``pods`` and
        ``present`` mean what they mean for :meth:`apply`.
        """
        return self._release_where(
            lambda rec: rec.owner == owner, pods, restore, present
        )

    def release_orphans(
        self,
        live_owners: Iterable[str],
        pods: Sequence[PodTarget],
        present: Collection[str] | None = None,
    ) -> CycleResult:
        """Restore keys whose owning profile no longer exists in the cluster.

        Covers a profile deleted while its agent on this node was down: any
        later agent on the node finds the records and honours their
        ``restore`` flag.
        """
        alive = set(live_owners)
        return self._release_where(
            lambda rec: rec.owner not in alive, pods, None, present
        )

    def counters(self, target: Target | None = None) -> dict[str, int]:
        """Listen and conntrack counters of ``target``'s namespace (node default)."""
        return run_in(target or self.node, self._read_counters)

    # -- internals ---------------------------------------------------------

    def _release_where(
        self,
        chosen: Callable[[KeyRecord], bool],
        pods: Sequence[PodTarget],
        restore: bool | None,
        present: Collection[str] | None,
    ) -> CycleResult:
        targets = {NODE_ID: self.node} | {p.target_id: p.target for p in pods}
        present_ids = _present_ids(pods, present)
        reports: dict[str, TargetReport] = {}
        with self.state.locked() as state:
            for target_id, record in list(state.targets.items()):
                keys = [k for k, rec in record.keys.items() if chosen(rec)]
                if not keys:
                    continue
                target = targets.get(target_id)
                if target is None:  # gone, or its process not found this time
                    continue
                reports[target_id] = self._restore_keys(
                    target, record.keys, keys, restore
                )
            _forget_absent_pods(state, present_ids)
        node = reports.pop(NODE_ID, TargetReport(target=self.node.label))
        return CycleResult(node=node, pods=list(reports.values()))

    def _converge_target(
        self,
        state: NodeState,
        target_id: str,
        target: Target,
        owner: str,
        values: Mapping[str, str],
        restore: bool,
    ) -> TargetReport:
        report = TargetReport(target=target.label)
        try:
            inode = target.inode()
        except NetnsGone as exc:
            _fail(report, "*", exc)
            return report
        if target_id != NODE_ID and inode == _safe_inode(self.node):
            # A hostNetwork pod: its "namespace" is the node's. Never treat
            # node keys as pod keys.
            _fail(report, "*", NodeError("pod shares the node's network namespace"))
            return report

        record = state.target(target_id, target.label, inode)
        dropped = [k for k, r in record.keys.items() if r.owner == owner]
        dropped = [k for k in dropped if k not in values]

        def work() -> None:
            self._restore_in_netns(report, record.keys, dropped, restore=None)
            for key, value in values.items():
                self._converge_key(report, record.keys, key, value, owner, restore)
            if values or target_id == NODE_ID:
                report.counters = self._read_counters()

        try:
            run_in(target, work)
        except NodeError as exc:
            _fail(report, "*", exc)
        report.originals = {
            k: r.original for k, r in record.keys.items() if r.owner == owner
        }
        return report

    def _converge_key(
        self,
        report: TargetReport,
        records: dict[str, KeyRecord],
        key: str,
        value: str,
        owner: str,
        restore: bool,
    ) -> None:
        try:
            current = self.sysctls.read(key)
        except NodeError as exc:
            _fail(report, key, exc)
            return

        record = records.get(key)
        fresh = record is None
        if record is None:
            record = KeyRecord(original=current, applied=value, owner=owner)
            records[key] = record
        elif record.owner != owner:
            log.info(
                "%s: %s taken over from profile %s by %s (original %s kept)",
                report.target,
                key,
                record.owner,
                owner,
                record.original,
            )
        elif record.applied == value and not catalog.same_value(current, value):
            log.warning(
                "%s: %s drifted to %s (we set %s); writing it again",
                report.target,
                key,
                current,
                value,
            )
            report.drift_repaired.append(key)
        record.owner, record.applied, record.restore = owner, value, restore

        if not catalog.same_value(current, value):
            try:
                self.sysctls.write(key, value)
            except NodeError as exc:
                _fail(report, key, exc)
                if fresh:  # nothing changed: no original to keep
                    del records[key]
                return
        self._verify(report, key, value)

    def _verify(self, report: TargetReport, key: str, value: str) -> bool:
        try:
            seen = self.sysctls.read(key)
        except NodeError as exc:
            _fail(report, key, exc)
            return False
        if not catalog.same_value(seen, value):
            _fail(report, key, NodeError(f"read back {seen!r} after writing {value!r}"))
            return False
        report.applied[key] = value
        return True

    def _restore_keys(
        self,
        target: Target,
        records: dict[str, KeyRecord],
        keys: list[str],
        restore: bool | None,
    ) -> TargetReport:
        report = TargetReport(target=target.label)
        try:
            run_in(
                target,
                lambda: self._restore_in_netns(report, records, keys, restore),
            )
        except NetnsGone:
            for key in keys:  # the namespace died with its pod
                records.pop(key, None)
        except NodeError as exc:
            _fail(report, "*", exc)
        return report

    def _restore_in_netns(
        self,
        report: TargetReport,
        records: dict[str, KeyRecord],
        keys: list[str],
        restore: bool | None,
    ) -> None:
        """Give back ``keys``; ``restore=None`` follows each record's flag."""
        for key in keys:
            record = records[key]
            if not (record.restore if restore is None else restore):
                del records[key]
                continue
            try:
                self.sysctls.write(key, record.original)
            except NodeError as exc:
                _fail(report, key, exc)
                continue
            if self._verify(report, key, record.original):
                report.applied.pop(key, None)
                report.restored.append(key)
                del records[key]
                log.info("%s: %s restored to %s", report.target, key, record.original)

    def _read_counters(self) -> dict[str, int]:
        """Counters of the calling thread's namespace (run inside ``run_in``)."""
        counters: dict[str, int] = {}
        try:
            mib = kernel.read_netstat("/proc/thread-self")
        except DiagnosticsError as exc:
            log.debug("no MIB counters: %s", exc)
            mib = {}
        for name in ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop"):
            if "TcpExt" + name in mib:
                counters[name] = mib["TcpExt" + name]
        counters.update(_conntrack_counters(self.sysctls))
        return counters


def _conntrack_counters(sysctls: Sysctls) -> dict[str, int]:
    counters: dict[str, int] = {}
    for name, sysctl in (
        ("conntrackCount", "net.netfilter.nf_conntrack_count"),
        ("conntrackMax", "net.netfilter.nf_conntrack_max"),
    ):
        try:
            counters[name] = int(sysctls.read(sysctl))
        except (NodeError, ValueError):
            return counters  # conntrack not loaded
    try:
        text = Path("/proc/thread-self/net/stat/nf_conntrack").read_text()
        stats = kernel.parse_conntrack_stat(text)
    except (OSError, DiagnosticsError) as exc:
        log.debug("no conntrack statistics: %s", exc)
        return counters
    for name in ("insert_failed", "drop", "early_drop"):
        if name in stats:
            counters["conntrack" + _camel(name)] = stats[name]
    return counters


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _fail(report: TargetReport, key: str, exc: Exception) -> None:
    log.warning("%s: %s: %s", report.target, key, exc)
    report.failures.append(KeyFailure(target=report.target, key=key, error=str(exc)))


def _safe_inode(target: Target) -> int | None:
    try:
        return target.inode()
    except NetnsGone:
        return None


def _worth(report: TargetReport) -> bool:
    return bool(report.applied or report.failures or report.restored)


def _present_ids(
    pods: Sequence[PodTarget], present: Collection[str] | None
) -> set[str]:
    if present is None:
        return {p.target_id for p in pods}
    return {f"pod:{uid}" for uid in present}


def _forget_absent_pods(state: NodeState, live: set[str]) -> None:
    for target_id in list(state.targets):
        if target_id != NODE_ID and target_id not in live:
            log.info("forgetting %s: its pod is gone", state.targets[target_id].label)
            del state.targets[target_id]
