"""Read and write sysctls inside a chosen network namespace.

A :class:`Target` names a network namespace by a path the kernel accepts
for ``setns(2)``: ``/proc/1/ns/net`` is the node (the agent runs with
``hostPID``), ``/proc/<pid>/ns/net`` is the namespace of a pod's process,
``/run/netns/<name>`` one made by ``ip netns add``. Work for a target runs
in a short-lived thread that first joins the namespace: the network
namespace is a per-thread property, ``/proc/sys/net`` resolves against the
*calling thread's* namespace, and the agent's own threads stay where they
were. This is how the CNI ``tuning`` plugin reaches a pod's sysctls too.

Nothing here decides *what* to write; ``engine.py`` does. Errors come back
as :class:`~trackgate.operator.errors.SysctlError` with the kernel's reason.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from trackgate.operator import catalog
from trackgate.operator.errors import NetnsGone, SysctlError

log = logging.getLogger(__name__)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

# Longest sysctl text we read: ip_local_port_range is the widest allowed
# key at 12 bytes; 4 KiB is one page, what the kernel hands out at most.
_READ_LIMIT = 4096

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Target:
    """A network namespace to act in, with a label for reports and state."""

    label: str  # "node" or "pod:<namespace>/<name>"
    netns_path: str

    def inode(self) -> int:
        """The namespace's inode: two paths with the same inode are one netns.

        Raises:
            NetnsGone: the path no longer names a namespace (process exited).
        """
        try:
            return os.stat(self.netns_path).st_ino
        except OSError as exc:
            raise NetnsGone(f"{self.label}: {self.netns_path}: {exc.strerror}") from exc


def run_in(target: Target, work: Callable[[], T]) -> T:
    """Run ``work`` in a fresh thread that has joined ``target``'s netns.

    Raises:
        NetnsGone: the namespace path cannot be opened any more.
        SysctlError: joining the namespace was refused (needs CAP_SYS_ADMIN).
        Whatever ``work`` raises.
    """
    try:
        fd = os.open(target.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsGone(f"{target.label}: {target.netns_path}: {exc.strerror}") from exc

    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise SysctlError(
                    f"{target.label}: cannot join network namespace "
                    f"{target.netns_path}: {os.strerror(code)}"
                )
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    try:
        thread = threading.Thread(target=body, name=f"netns:{target.label}")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return outcome[0]


class Sysctls:
    """Plain reads and writes below a ``/proc/sys`` root, in the current netns.

    Call these only inside :func:`run_in` (or for the caller's own netns).
    ``proc_root`` is ``/proc`` normally and ``/host/proc`` where the agent
    mounts the host's proc instead of running privileged.
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self.root = Path(proc_root) / "sys"

    def read(self, name: str) -> str:
        """The current text of sysctl ``name``, whitespace-normalized.

        ``name`` may be any dotted sysctl name, not only an allowed one
        (counters such as ``net.netfilter.nf_conntrack_count`` are read too).
        """
        path = self.root / name.replace(".", "/")
        try:
            with open(path, "rb") as handle:
                text = handle.read(_READ_LIMIT).decode("ascii", "replace")
        except OSError as exc:
            raise _translate(name, "read", exc) from exc
        return " ".join(text.split())

    def write(self, name: str, value: str) -> None:
        """Write ``value`` (canonical text) to the allowed sysctl ``name``."""
        path = self.root / catalog.KEYS[name].path
        try:
            with open(path, "wb", buffering=0) as handle:
                handle.write(value.encode("ascii") + b"\n")
        except OSError as exc:
            raise _translate(name, "write", exc) from exc


def _translate(name: str, verb: str, exc: OSError) -> SysctlError:
    reasons = {
        errno.ENOENT: "not present in this kernel or network namespace",
        errno.EACCES: "not writable here (read-only file or global key)",
        errno.EPERM: "not permitted (missing capability)",
        errno.EROFS: "/proc/sys is mounted read-only",
        errno.EINVAL: "the kernel refused the value",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return SysctlError(f"cannot {verb} {name}: {reason}")
