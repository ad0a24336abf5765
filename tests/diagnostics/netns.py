"""Throw-away network namespaces for diagnostics tests.

Counters such as ListenOverflows are per network namespace; a fresh one
starts at zero and sees no traffic but the test's, so assertions can be
exact. Needs root and ``ip``; :func:`netns_unavailable` says why not.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_counter = itertools.count()


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


@contextmanager
def network_namespace(prefix: str = "tgdiag") -> Iterator[str]:
    """A new namespace with loopback up; always deleted afterwards."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_python(namespace: str, code: str, timeout: float = 30) -> Any:
    """Run ``code`` in ``namespace`` with this interpreter; stdout is JSON."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"netns script failed: {result.stderr}")
    return json.loads(result.stdout)


def sysctl(namespace: str, name: str, value: int) -> None:
    path = "/proc/sys/" + name.replace(".", "/")
    subprocess.run(
        ["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > {path}"],
        check=True,
    )
