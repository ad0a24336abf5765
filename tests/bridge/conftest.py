"""Fixtures of the bridge tests: a real Redis Cluster besides the single Redis.

``redis_cluster_procs`` starts one 3-master cluster for the whole run (see
``tests/support/cluster.py``); ``any_redis_url`` runs a test once against
the single server and once against the cluster, each emptied first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import RedisClusterProcs, redis_cluster


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
