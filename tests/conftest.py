"""Fixtures: a real redis-server for the whole run, flushed between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.servers import RedisServer, redis_server


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
