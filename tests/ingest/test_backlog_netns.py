"""The listen backlog follows net.core.somaxconn of the gateway's namespace.

somaxconn belongs to each network namespace, and a pod starts with the
kernel default whatever the node says. When the operator's agent raises it
inside a running pod, the ingest workers call listen() again, so the order
in which pod and agent start does not matter. Measured on the listening
sockets themselves (sock_diag, as ``trackgate netcheck`` reads them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.servers import free_port, trackgate_env

pytestmark = pytest.mark.netns


def _can_use_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    if shutil.which("redis-server") is None:
        return "needs redis-server"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _can_use_netns()
    if reason:
        pytest.skip(reason)
    name = f"tg-backlog-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True, check=False)
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *command],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def listener_limits(ns: str, port: int) -> list[int]:
    out = in_ns(
        ns,
        sys.executable,
        "-m",
        "trackgate",
        "netcheck",
        "--json",
        "--seconds",
        "0.1",
        "--port",
        str(port),
        env=trackgate_env(),
    )
    report = json.loads(out.stdout)
    return sorted(int(row["backlog_limit"]) for row in report["listeners"])


def test_workers_raise_their_backlog_when_somaxconn_grows(netns: str) -> None:
    assert in_ns(netns, "sysctl", "-qw", "net.core.somaxconn=128").returncode == 0
    redis_port, port, admin = free_port(), free_port(), free_port()
    redis = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    env = trackgate_env(
        TRACKGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        TRACKGATE_HOST="127.0.0.1",
        TRACKGATE_PORT=str(port),
        TRACKGATE_ADMIN_PORT=str(admin),
        TRACKGATE_WORKERS="2",
    )
    ingest = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "trackgate", "ingest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        limits: list[int] = []
        while time.monotonic() < deadline and len(limits) < 2:
            time.sleep(0.5)
            limits = listener_limits(netns, port)
        assert limits == [128, 128]

        assert in_ns(netns, "sysctl", "-qw", "net.core.somaxconn=8192").returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and limits != [8192, 8192]:
            time.sleep(0.5)
            limits = listener_limits(netns, port)
        assert limits == [8192, 8192]
    finally:
        ingest.terminate()
        log, _ = ingest.communicate(timeout=30)
        redis.terminate()
        redis.wait(timeout=10)
    assert "net.core.somaxconn=128 is low" in log
    assert "listen backlog raised" in log and "to=8192" in log
