"""Fixtures: a real redis-server for the whole run, flushed between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.cluster import RedisClusterProcs, redis_cluster
from tests.support.servers import IngestProcess, RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> Iterator[str]:
    """URL of a real, empty Redis."""
    client = redis.Redis.from_url(redis_proc.url)
    client.flushall()
    client.close()
    yield redis_proc.url


@pytest.fixture(scope="session")
def redis_cluster_procs() -> Iterator[RedisClusterProcs]:
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster_procs: RedisClusterProcs) -> str:
    """URL of a real, empty 3-master Redis Cluster."""
    redis_cluster_procs.flushall()
    return redis_cluster_procs.url


@pytest.fixture(params=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """A single Redis, then a Redis Cluster: the test runs against both."""
    name = "redis_url" if request.param == "single" else "cluster_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="module")
def gateway(redis_proc: RedisServer) -> Iterator[IngestProcess]:
    """``trackgate ingest`` on the session's Redis, shared by a module's tests
    (they keep apart by their IMEIs)."""
    ingest = IngestProcess(redis_proc.url)
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()
