"""The agent's apply / verify / drift / restore cycle on real sysctls.

Each test builds its own network namespaces: one standing for the node, one
per pod with a process in it (found by the pod UID in its cgroup path, as
on a node), and checks every value from a separate process inside the
namespace. The host's sysctls are read before and after, never written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.operator.conftest import Pod, host_value, read_in, write_in
from trackgate.operator import catalog
from trackgate.operator.engine import Engine, PodTarget
from trackgate.operator.netns import Target
from trackgate.operator.podprocs import find_pod_pids, netns_path

pytestmark = pytest.mark.netns

SOMAXCONN = catalog.SOMAXCONN
PORTS = catalog.PORT_RANGE
KA_TIME = catalog.KEEPALIVE_TIME
CT_MAX = catalog.CONNTRACK_MAX
CT_ESTABLISHED = catalog.CONNTRACK_ESTABLISHED
CT_LIBERAL = catalog.CONNTRACK_LIBERAL

NODE_VALUES = {
    SOMAXCONN: "8192",
    catalog.SYN_BACKLOG: "8192",
    KA_TIME: "600",
    catalog.KEEPALIVE_INTVL: "30",
    catalog.KEEPALIVE_PROBES: "5",
    PORTS: "20000 40000",
    catalog.ABORT_ON_OVERFLOW: "1",
    catalog.SYNCOOKIES: "2",
}
POD_VALUES = {SOMAXCONN: "16384", KA_TIME: "300", PORTS: "30000 50000"}
WATCHED = sorted(set(NODE_VALUES) | set(POD_VALUES))


def _engine(tmp_path: Path, node_ns: str) -> Engine:
    return Engine(tmp_path / "state", Target("node", f"/run/netns/{node_ns}"))


def _pod_target(pod: Pod, values: dict[str, str]) -> PodTarget:
    pid = find_pod_pids()[pod.uid]
    return PodTarget(pod.uid, f"default/{pod.netns}", netns_path(pid), values)


def _snapshot(netns: str) -> dict[str, str]:
    return {key: read_in(netns, key) for key in WATCHED}


@pytest.fixture
def host_before() -> dict[str, str]:
    keys = [*WATCHED, CT_MAX]
    return {k: host_value(k) for k in keys if Path("/proc/sys", *k.split(".")).exists()}


def _host_unchanged(before: dict[str, str]) -> None:
    assert {k: host_value(k) for k in before} == before


def test_apply_sets_node_and_selected_pod_and_leaves_other_pod_alone(
    tmp_path: Path,
    netns: Callable[[str], str],
    pod: Callable[..., Pod],
    host_before: dict[str, str],
) -> None:
    node_ns = netns("node")
    selected, other = pod("selected"), pod("other", style="systemd")
    node_defaults, other_defaults = _snapshot(node_ns), _snapshot(other.netns)

    result = _engine(tmp_path, node_ns).apply(
        "gateways",
        NODE_VALUES,
        [_pod_target(selected, POD_VALUES), _pod_target(other, {})],
    )

    assert result.failures == []
    assert {k: read_in(node_ns, k) for k in NODE_VALUES} == NODE_VALUES
    assert {k: read_in(selected.netns, k) for k in POD_VALUES} == POD_VALUES
    assert _snapshot(other.netns) == other_defaults
    assert result.node.applied == NODE_VALUES
    assert result.node.originals == {k: node_defaults[k] for k in NODE_VALUES}
    assert [p.applied for p in result.pods] == [POD_VALUES]
    _host_unchanged(host_before)


def test_restarted_agent_keeps_the_first_originals_and_restores_them(
    tmp_path: Path, netns: Callable[[str], str], host_before: dict[str, str]
) -> None:
    node_ns = netns("node")
    defaults = _snapshot(node_ns)
    _engine(tmp_path, node_ns).apply("gateways", {SOMAXCONN: "8192"}, [])

    # A new agent process (same state directory) with a changed profile.
    restarted = _engine(tmp_path, node_ns)
    again = restarted.apply("gateways", {SOMAXCONN: "12000"}, [])
    assert again.node.originals == {SOMAXCONN: defaults[SOMAXCONN]}
    assert read_in(node_ns, SOMAXCONN) == "12000"

    released = restarted.release("gateways", [], restore=True)
    assert released.node.restored == [SOMAXCONN]
    assert read_in(node_ns, SOMAXCONN) == defaults[SOMAXCONN]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["targets"] == {}
    _host_unchanged(host_before)


def test_drift_is_written_again_and_counted(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    node_ns, selected = netns("node"), pod("selected")
    engine = _engine(tmp_path, node_ns)
    engine.apply("gateways", NODE_VALUES, [_pod_target(selected, POD_VALUES)])

    write_in(node_ns, PORTS, "1024 65000")
    write_in(selected.netns, SOMAXCONN, "128")
    steady = engine.apply("gateways", NODE_VALUES, [_pod_target(selected, POD_VALUES)])

    assert steady.node.drift_repaired == [PORTS]
    assert [p.drift_repaired for p in steady.pods] == [[SOMAXCONN]]
    assert steady.drift_repairs == 2
    assert read_in(node_ns, PORTS) == "20000 40000"
    assert read_in(selected.netns, SOMAXCONN) == "16384"

    quiet = engine.apply("gateways", NODE_VALUES, [_pod_target(selected, POD_VALUES)])
    assert quiet.drift_repairs == 0


def test_release_restores_node_and_pod_originals(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    node_ns, selected = netns("node"), pod("selected")
    node_defaults, pod_defaults = _snapshot(node_ns), _snapshot(selected.netns)
    engine = _engine(tmp_path, node_ns)
    targets = [_pod_target(selected, POD_VALUES)]
    engine.apply("gateways", NODE_VALUES, targets)

    result = engine.release("gateways", targets, restore=True)

    assert result.failures == []
    assert sorted(result.node.restored) == sorted(NODE_VALUES)
    assert _snapshot(node_ns) == node_defaults
    assert _snapshot(selected.netns) == pod_defaults


def test_release_without_restore_leaves_values_and_forgets_originals(
    tmp_path: Path, netns: Callable[[str], str]
) -> None:
    node_ns = netns("node")
    engine = _engine(tmp_path, node_ns)
    engine.apply("gateways", {SOMAXCONN: "8192"}, [], restore=False)

    result = engine.release("gateways", [], restore=False)

    assert result.node.restored == []
    assert read_in(node_ns, SOMAXCONN) == "8192"
    assert engine.state.read().targets == {}


def test_key_removed_from_profile_gets_its_original_back(
    tmp_path: Path, netns: Callable[[str], str]
) -> None:
    node_ns = netns("node")
    defaults = _snapshot(node_ns)
    engine = _engine(tmp_path, node_ns)
    engine.apply("gateways", {SOMAXCONN: "8192", KA_TIME: "600"}, [])

    result = engine.apply("gateways", {SOMAXCONN: "8192"}, [])

    assert result.node.restored == [KA_TIME]
    assert read_in(node_ns, KA_TIME) == defaults[KA_TIME]
    assert read_in(node_ns, SOMAXCONN) == "8192"


def test_pod_no_longer_selected_gets_its_originals_back(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    node_ns, selected = netns("node"), pod("selected")
    pod_defaults = _snapshot(selected.netns)
    engine = _engine(tmp_path, node_ns)
    engine.apply("gateways", {}, [_pod_target(selected, POD_VALUES)])

    result = engine.apply("gateways", {}, [_pod_target(selected, {})])

    assert [sorted(p.restored) for p in result.pods] == [sorted(POD_VALUES)]
    assert _snapshot(selected.netns) == pod_defaults


def test_records_of_a_vanished_pod_are_dropped(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    node_ns, selected = netns("node"), pod("selected")
    engine = _engine(tmp_path, node_ns)
    engine.apply("gateways", {SOMAXCONN: "8192"}, [_pod_target(selected, POD_VALUES)])
    assert f"pod:{selected.uid}" in engine.state.read().targets

    engine.apply("gateways", {SOMAXCONN: "8192"}, [], present=[])

    assert list(engine.state.read().targets) == ["node"]


def test_node_only_conntrack_max_is_refused_in_a_child_namespace(
    tmp_path: Path, netns: Callable[[str], str], host_before: dict[str, str]
) -> None:
    if not Path("/proc/sys/net/netfilter/nf_conntrack_max").exists():
        pytest.skip("nf_conntrack is not loaded on this kernel")
    node_ns = netns("node")
    before = read_in(node_ns, CT_MAX)
    wanted = "131072" if before != "131072" else "196608"

    result = _engine(tmp_path, node_ns).apply(
        "gateways", {CT_MAX: wanted, SOMAXCONN: "8192"}, []
    )

    assert [(f.key, "not writable" in f.error) for f in result.failures] == [
        (CT_MAX, True)
    ]
    assert result.node.applied == {SOMAXCONN: "8192"}
    assert read_in(node_ns, CT_MAX) == before
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert list(state["targets"]["node"]["keys"]) == [SOMAXCONN]
    _host_unchanged(host_before)


def test_conntrack_timeouts_are_per_namespace(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    if not Path("/proc/sys/net/netfilter/nf_conntrack_max").exists():
        pytest.skip("nf_conntrack is not loaded on this kernel")
    node_ns, selected, other = netns("node"), pod("selected"), pod("other")
    values = {CT_ESTABLISHED: "7200", CT_LIBERAL: "1"}
    host = {k: host_value(k) for k in values}
    other_before = {k: read_in(other.netns, k) for k in values}

    result = _engine(tmp_path, node_ns).apply(
        "gateways", {}, [_pod_target(selected, values), _pod_target(other, {})]
    )

    assert result.failures == []
    assert {k: read_in(selected.netns, k) for k in values} == values
    assert {k: read_in(other.netns, k) for k in values} == other_before
    assert {k: host_value(k) for k in values} == host


def test_host_network_pod_is_never_written(
    tmp_path: Path, netns: Callable[[str], str]
) -> None:
    node_ns = netns("node")
    before = read_in(node_ns, SOMAXCONN)
    engine = _engine(tmp_path, node_ns)
    host_network_pod = PodTarget(
        "0000", "kube-system/proxy", f"/run/netns/{node_ns}", {SOMAXCONN: "9999"}
    )

    result = engine.apply("gateways", {}, [host_network_pod])

    assert [f.error for f in result.failures] == [
        "pod shares the node's network namespace"
    ]
    assert read_in(node_ns, SOMAXCONN) == before


def test_profile_taking_over_a_node_keeps_the_recorded_original(
    tmp_path: Path, netns: Callable[[str], str]
) -> None:
    node_ns = netns("node")
    default = read_in(node_ns, SOMAXCONN)
    engine = _engine(tmp_path, node_ns)
    engine.apply("old-pool", {SOMAXCONN: "8192", KA_TIME: "600"}, [])

    takeover = engine.apply("new-pool", {SOMAXCONN: "12000"}, [])
    leaving = engine.release("old-pool", [], restore=True)

    assert takeover.node.originals == {SOMAXCONN: default}
    assert leaving.node.restored == [KA_TIME]
    assert read_in(node_ns, SOMAXCONN) == "12000"
    engine.release("new-pool", [], restore=True)
    assert read_in(node_ns, SOMAXCONN) == default


def test_orphaned_records_are_restored_when_their_profile_is_gone(
    tmp_path: Path, netns: Callable[[str], str]
) -> None:
    node_ns = netns("node")
    default = read_in(node_ns, SOMAXCONN)
    engine = _engine(tmp_path, node_ns)
    engine.apply("deleted-while-agent-was-down", {SOMAXCONN: "8192"}, [])

    result = engine.release_orphans(live_owners={"gateways"}, pods=[])

    assert result.node.restored == [SOMAXCONN]
    assert read_in(node_ns, SOMAXCONN) == default


def test_pods_are_found_by_uid_in_both_cgroup_layouts(
    pod: Callable[..., Pod],
) -> None:
    cgroupfs, systemd = pod("a"), pod("b", style="systemd")

    pids = find_pod_pids()

    assert pids[cgroupfs.uid] == cgroupfs.pid
    assert pids[systemd.uid] == systemd.pid


_OVERFLOW_SCRIPT = """
import socket, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(0)
port = server.getsockname()[1]
clients = []
for _ in range(6):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    clients.append(c)
time.sleep(1.5)
"""


def test_counters_show_listen_overflows_of_the_pod_namespace(
    tmp_path: Path, netns: Callable[[str], str], pod: Callable[..., Pod]
) -> None:
    node_ns, selected = netns("node"), pod("selected")
    engine = _engine(tmp_path, node_ns)
    target = _pod_target(selected, POD_VALUES)
    before = engine.counters(target.target)["ListenOverflows"]

    subprocess.run(
        ["ip", "netns", "exec", selected.netns, sys.executable, "-c", _OVERFLOW_SCRIPT],
        check=True,
        timeout=20,
    )
    result = engine.apply("gateways", {}, [target])

    assert result.pods[0].counters["ListenOverflows"] > before
    assert engine.counters()["ListenOverflows"] == 0


_CAPABILITY_PROBE = """
import sys
from trackgate.operator.engine import Engine, PodTarget
from trackgate.operator.netns import Target
state, node, pod_path = sys.argv[1:4]
engine = Engine(state, Target("node", node))
pod = PodTarget("u1", "default/p", pod_path, {"net.core.somaxconn": "5001"})
result = engine.apply("gateways", {"net.core.somaxconn": "5000"}, [pod])
print(";".join(f.error for f in result.failures) or "ok")
"""


@pytest.mark.parametrize(
    ("capabilities", "outcome"),
    [
        ("+sys_admin,+sys_ptrace", "ok"),
        ("+sys_ptrace", "cannot join network namespace"),
        ("+sys_admin", "Permission denied"),
    ],
)
def test_agent_needs_only_sys_admin_and_sys_ptrace_here(
    tmp_path: Path,
    netns: Callable[[str], str],
    pod: Callable[..., Pod],
    capabilities: str,
    outcome: str,
) -> None:
    """CAP_SYS_ADMIN joins namespaces; CAP_SYS_PTRACE opens the ns link of a
    pod process holding capabilities the agent lacks. Namespaces owned by the
    initial user namespace need no CAP_NET_ADMIN for a root agent."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux setpriv to drop capabilities")
    node_ns, selected = netns("node"), pod("selected")

    probe = subprocess.run(
        [
            "setpriv",
            f"--bounding-set=-all,{capabilities}",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            _CAPABILITY_PROBE,
            str(tmp_path / "state"),
            f"/run/netns/{node_ns}",
            selected.netns_path,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert outcome in probe.stdout, probe.stdout + probe.stderr
    if outcome == "ok":
        assert read_in(node_ns, SOMAXCONN) == "5000"
        assert read_in(selected.netns, SOMAXCONN) == "5001"
