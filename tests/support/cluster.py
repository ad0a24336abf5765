"""A real Redis Cluster for tests: three masters on loopback, no replicas.

``redis_cluster()`` starts one ``redis-server`` per master in its own temp
directory (``cluster-enabled yes``, client and bus port both picked free),
joins them with ``redis-cli --cluster create``, waits until every node
reports ``cluster_state:ok`` and yields a handle whose ``url`` is the
``redis+cluster://`` URL that ``trackgate.core.redisconn`` understands.
Test suites wrap it in their own fixtures; this module holds no pytest code
so that any suite (bridge, ingest, api) can reuse it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from tests.support.servers import RedisServer, free_port

#: Seconds to wait for all 16384 slots to be served after the create step;
#: three local nodes agree in well under a second, slow CI machines need more.
READY_TIMEOUT = 30.0


class RedisClusterProcs:
    """Master processes of a test cluster, and how to reach them."""

    def __init__(self, masters: list[RedisServer]) -> None:
        self.masters = masters

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.masters]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def flushall(self) -> None:
        """Empty every master (FLUSHALL is per node in a cluster)."""
        for port in self.ports:
            client = redis.Redis(port=port)
            try:
                client.flushall()
            finally:
                client.close()


def _redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not on PATH: apt-get install redis-tools")
    return binary


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        client = redis.Redis(port=port)
        try:
            info = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
            return False
    return True


def _wait_ready(ports: list[int]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not _cluster_ok(ports):
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster on {ports} not ok after {READY_TIMEOUT}s")
        time.sleep(0.1)


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisClusterProcs]:
    """Start a ``masters``-node cluster, yield it, stop every node."""
    with ExitStack() as stack:
        servers: list[RedisServer] = []
        for _ in range(masters):
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="trackgate-cluster-"
            )))  # fmt: skip
            server = RedisServer(
                free_port(),
                workdir,
                [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(workdir / "nodes.conf"),
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", "5000",
                ],
            )  # fmt: skip
            server.start()
            stack.callback(server.stop)
            servers.append(server)

        nodes = [f"127.0.0.1:{server.port}" for server in servers]
        subprocess.run(
            [_redis_cli(), "--cluster", "create", *nodes,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=READY_TIMEOUT,
        )  # fmt: skip
        procs = RedisClusterProcs(servers)
        _wait_ready(procs.ports)
        yield procs
