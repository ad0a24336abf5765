"""The node's record of original sysctl values, kept on a hostPath.

The first time an agent changes a key in a namespace it writes down the
value it found, who changed it and what it wrote. A restarted or upgraded
agent reads the record back instead of taking its own earlier write for
the original; an agent of another profile that takes a node over keeps the
recorded original and only changes the owner. The file is shared by every
agent on the node, so every read-modify-write happens under an exclusive
``flock`` and the file is replaced atomically (write, fsync, rename).

Layout of ``state.json``::

    {"version": 1,
     "targets": {"node": {"label": "node", "inode": 4026531840,
                          "keys": {"net.core.somaxconn": {
                              "original": "4096", "applied": "16384",
                              "owner": "gateways", "restore": true}}},
                 "pod:<uid>": {...}}}

What to write and when to restore is ``engine.py``'s business.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trackgate.operator.errors import StateFileError

STATE_VERSION = 1

# Largest state file we read: one entry is ~150 bytes; 1 MiB holds several
# thousand keys, far beyond 13 keys on a node plus a few hundred pods.
_MAX_STATE_BYTES = 1 << 20


@dataclass
class KeyRecord:
    """What a key held before trackgate, and what trackgate wrote."""

    original: str
    applied: str
    owner: str
    restore: bool = True


@dataclass
class TargetRecord:
    """The records of one network namespace (the node or one pod)."""

    label: str
    inode: int | None = None
    keys: dict[str, KeyRecord] = field(default_factory=dict)


@dataclass
class NodeState:
    """Every namespace the agents of this node have changed."""

    targets: dict[str, TargetRecord] = field(default_factory=dict)

    def target(self, target_id: str, label: str, inode: int | None) -> TargetRecord:
        """The record of ``target_id``, created empty if absent.

        A pod record whose namespace inode changed belongs to a namespace
        that no longer exists; its originals are meaningless and dropped.
        """
        record = self.targets.get(target_id)
        if record is None or (inode is not None and record.inode not in (None, inode)):
            record = TargetRecord(label=label, inode=inode)
            self.targets[target_id] = record
        record.inode = inode if inode is not None else record.inode
        return record

    def prune(self) -> None:
        """Forget targets that have no key records left."""
        for target_id in [t for t, r in self.targets.items() if not r.keys]:
            del self.targets[target_id]


class StateFile:
    """``state.json`` and its lock file in one directory on the node."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "state.json"
        self.lock_path = self.directory / "state.lock"

    @contextmanager
    def locked(self) -> Iterator[NodeState]:
        """Hold the node-wide lock; yield the state; save it on clean exit.

        Raises:
            StateFileError: the directory or file cannot be used. The caller
                must then change nothing: without the record it cannot know
                the originals.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        except OSError as exc:
            raise StateFileError(f"cannot open {self.lock_path}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            state = self._load()
            yield state
            state.prune()
            self._save(state)
        finally:
            os.close(lock_fd)

    def read(self) -> NodeState:
        """A snapshot of the state, read under the lock and not written back."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        except OSError as exc:
            raise StateFileError(f"cannot open {self.lock_path}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            return self._load()
        finally:
            os.close(lock_fd)

    def _load(self) -> NodeState:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return NodeState()
        except OSError as exc:
            raise StateFileError(f"cannot read {self.path}: {exc}") from exc
        if len(raw) > _MAX_STATE_BYTES:
            raise StateFileError(f"{self.path} is larger than {_MAX_STATE_BYTES} B")
        try:
            return _decode(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateFileError(
                f"{self.path} is not a trackgate state file ({exc}); move it "
                "aside only after checking the node's sysctls by hand"
            ) from exc

    def _save(self, state: NodeState) -> None:
        document = {
            "version": STATE_VERSION,
            "targets": {tid: asdict(rec) for tid, rec in state.targets.items()},
        }
        temporary = self.path.with_suffix(".tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise StateFileError(f"cannot write {self.path}: {exc}") from exc


def _decode(document: Any) -> NodeState:
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"unknown version {document.get('version')!r}")
    state = NodeState()
    for target_id, raw in document["targets"].items():
        keys = {
            name: KeyRecord(
                original=str(k["original"]),
                applied=str(k["applied"]),
                owner=str(k["owner"]),
                restore=bool(k.get("restore", True)),
            )
            for name, k in raw["keys"].items()
        }
        inode = raw.get("inode")
        state.targets[str(target_id)] = TargetRecord(
            label=str(raw["label"]),
            inode=int(inode) if inode is not None else None,
            keys=keys,
        )
    return state
