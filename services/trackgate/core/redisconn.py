"""Redis clients from one URL, for a single server or a Redis Cluster.

``redis://`` and ``rediss://`` give a plain client; ``redis+cluster://`` (or
``?cluster=1`` on a plain URL) gives a cluster client that follows MOVED and
ASK redirections. Callers get ``redis.asyncio`` objects and use only commands
whose keys share one hash slot (see ``trackgate.core.keys``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

AsyncClient = aioredis.Redis | AsyncRedisCluster
SyncClient = redis.Redis | RedisCluster


def _split_cluster(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    cluster = parts.scheme in ("redis+cluster", "rediss+cluster") or any(
        k == "cluster" and v.lower() in ("1", "true", "yes") for k, v in query
    )
    if not cluster and not any(k == "cluster" for k, _ in query):
        return url, False  # as given: unix:///path must keep its empty host
    scheme = parts.scheme.replace("+cluster", "")
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), cluster


def is_cluster_url(url: str) -> bool:
    return _split_cluster(url)[1]


try:
    from redis.driver_info import DriverInfo
except ImportError:  # redis-py before 7.1 looks its version up only once
    _DRIVER: dict[str, Any] = {}
else:
    # Without it, every new pooled connection reads the package metadata to
    # learn redis-py's version: milliseconds each, while a reconnect storm
    # grows the pool.
    _DRIVER = {"driver_info": DriverInfo(lib_version=redis.__version__)}

#: Connections one client opens at most. redis-py's own pool raises
#: "Too many connections" past its limit; a reconnect storm (thousands of
#: sessions starting at once) must wait for a connection instead.
DEFAULT_MAX_CONNECTIONS = 64
#: How long a command waits for a free connection before failing.
POOL_TIMEOUT_S = 20.0


def async_client(
    url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS, **options: Any
) -> AsyncClient:
    """An asyncio client for ``url``; ``options`` go to redis-py unchanged.

    On a single server, commands beyond ``max_connections`` wait for a free
    connection (up to ``POOL_TIMEOUT_S``). redis-py's cluster client has no
    waiting pool: it fails fast past ``max_connections`` per node, so callers
    bound their own concurrency on a cluster.
    """
    plain, cluster = _split_cluster(url)
    options = {**_DRIVER, **options}
    if cluster:
        return AsyncRedisCluster.from_url(
            plain, max_connections=max_connections, **options
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        plain, max_connections=max_connections, timeout=POOL_TIMEOUT_S, **options
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(url: str, **options: Any) -> SyncClient:
    """A blocking client for ``url`` (tools and tests, never the event loop)."""
    plain, cluster = _split_cluster(url)
    if cluster:
        return RedisCluster.from_url(plain, **options)
    return redis.Redis.from_url(plain, **options)


def is_cluster_client(client: object) -> bool:
    return isinstance(client, AsyncRedisCluster | RedisCluster)


def pubsub_url(url: str) -> str:
    """A plain URL to one node of ``url`` for classic pub/sub.

    PUBLISH in a Redis Cluster reaches subscribers on every node, so the
    seed node of a cluster URL serves as well as any.
    """
    return _split_cluster(url)[0]
