"""Find a pod's network namespace on this node from its UID.

The kubelet puts every container of a pod into a cgroup whose path carries
the pod UID: ``/kubepods/burstable/pod<uid>/<container>`` with the cgroupfs
driver, ``/kubepods.slice/kubepods-burstable.slice/
kubepods-burstable-pod<uid_with_underscores>.slice/...`` with the systemd
driver, on cgroup v1 and v2 alike. With ``hostPID`` the agent sees those
processes in ``/proc``; any of them leads to the pod's network namespace
through ``/proc/<pid>/ns/net``, because all containers of a pod share the
one namespace of its sandbox.

Scanning is one read of ``/proc/<pid>/cgroup`` per process; the result maps
UIDs to the lowest PID found (usually the sandbox's pause process). Which
pods to look for is the caller's choice.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# A pod UID inside a cgroup path, with dashes (cgroupfs) or underscores
# (systemd slice names cannot hold dashes inside one component).
_POD_UID_RE = re.compile(
    r"pod([0-9a-f]{8})[-_]([0-9a-f]{4})[-_]([0-9a-f]{4})[-_]([0-9a-f]{4})[-_]"
    r"([0-9a-f]{12})"
)

# Longest /proc/<pid>/cgroup we read: one line per hierarchy (a dozen on
# cgroup v1), each a path of a few hundred bytes.
_CGROUP_READ_LIMIT = 16384


def pod_uid_of(cgroup_text: str) -> str | None:
    """The pod UID named in a ``/proc/<pid>/cgroup`` text, if any."""
    match = _POD_UID_RE.search(cgroup_text)
    if match is None:
        return None
    return "-".join(match.groups())


def find_pod_pids(proc_root: str = "/proc") -> dict[str, int]:
    """Map each pod UID seen in ``proc_root`` to its lowest PID."""
    found: dict[str, int] = {}
    root = Path(proc_root)
    for entry in os.scandir(root):
        if not entry.name.isdigit():
            continue
        try:
            with open(root / entry.name / "cgroup", "rb") as handle:
                text = handle.read(_CGROUP_READ_LIMIT).decode("utf-8", "replace")
        except OSError:
            continue  # the process exited while we scanned
        uid = pod_uid_of(text)
        if uid is None:
            continue
        pid = int(entry.name)
        if uid not in found or pid < found[uid]:
            found[uid] = pid
    log.debug("found processes of %d pods under %s", len(found), proc_root)
    return found


def netns_path(pid: int, proc_root: str = "/proc") -> str:
    """The ``setns`` path of process ``pid``'s network namespace."""
    return f"{proc_root}/{pid}/ns/net"
