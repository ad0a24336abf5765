"""Network namespaces and pod-like processes for the agent's real tests.

Every namespace here is created by the test and deleted after it; the host's
own sysctls are only ever read (to prove they did not change). A "pod" is a
``sleep`` started inside its namespace and moved into a cgroup whose path
carries a pod UID, the way the kubelet lays pods out, so the agent finds it
exactly as on a node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# cgroup v1 hierarchy that is writable here; the pod cgroups go below it.
_CGROUP_ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _need_root_and_ip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and writes sysctls")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip to create network namespaces")


def read_in(netns: str, key: str) -> str:
    """A sysctl read by a separate process inside ``netns`` (an outside view)."""
    path = "/proc/sys/" + key.replace(".", "/")
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return " ".join(out.split())


def write_in(netns: str, key: str, value: str) -> None:
    """Change a sysctl behind the agent's back, from inside ``netns``."""
    path = "/proc/sys/" + key.replace(".", "/")
    subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", f"echo '{value}' > {path}"],
        check=True,
    )


def host_value(key: str) -> str:
    return " ".join(Path("/proc/sys/" + key.replace(".", "/")).read_text().split())


def _wait_until_joined(pid: int, netns_name: str) -> None:
    """Wait until ``ip netns exec`` has moved ``pid`` into ``netns_name``."""
    wanted = os.stat(f"/run/netns/{netns_name}").st_ino
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if os.stat(f"/proc/{pid}/ns/net").st_ino == wanted:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never joined {netns_name}")


@dataclass
class Pod:
    """A process standing for a pod: its namespace, UID and PID."""

    netns: str
    uid: str
    pid: int

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """Factory: ``netns("node")`` creates a uniquely named namespace."""
    _need_root_and_ip()
    made: list[str] = []

    def make(role: str) -> str:
        name = f"tg-{role}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True
        )
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroup_base() -> Iterator[Path]:
    """A writable cgroup directory for this test, removed afterwards."""
    _need_root_and_ip()
    base: Path | None = None
    for root in _CGROUP_ROOTS:
        candidate = Path(root) / f"trackgate-test-{uuid.uuid4().hex[:8]}"
        try:
            candidate.mkdir()
        except OSError:
            continue
        base = candidate
        break
    if base is None:
        pytest.skip("no writable cgroup hierarchy to lay out pod cgroups")
    yield base
    for directory in sorted(base.rglob("*"), key=lambda p: -len(p.parts)):
        if directory.is_dir():
            directory.rmdir()
    base.rmdir()


@pytest.fixture
def pod(netns: Callable[[str], str], cgroup_base: Path) -> Iterator[Callable[..., Pod]]:
    """Factory: a sleeping process in a new netns, in a kubelet-style cgroup.

    ``style="cgroupfs"`` gives ``kubepods/besteffort/pod<uid>``;
    ``style="systemd"`` gives ``kubepods-besteffort-pod<uid_underscored>.slice``.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def make(role: str = "pod", style: str = "cgroupfs") -> Pod:
        name = netns(role)
        uid = str(uuid.uuid4())
        if style == "systemd":
            leaf = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
            directory = cgroup_base / "kubepods.slice" / leaf / "cri-containerd-x.scope"
        else:
            directory = cgroup_base / "kubepods" / "besteffort" / f"pod{uid}" / "ctr"
        directory.mkdir(parents=True)
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "1000"])
        procs.append(proc)
        (directory / "cgroup.procs").write_text(str(proc.pid))
        _wait_until_joined(proc.pid, name)
        return Pod(netns=name, uid=uid, pid=proc.pid)

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()
