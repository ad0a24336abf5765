"""Configuration: one settings object per process, read here and only here.

Every field can be given as an environment variable ``TRACKGATE_<NAME>``
(``TRACKGATE_REDIS_URL``, ``TRACKGATE_PORT``, ...); command-line flags of the
``trackgate`` commands override them. ``docs/configuration.md`` lists them.
"""

from __future__ import annotations

import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackgate.core.keys import Keys


class CommonSettings(BaseSettings):
    """What every trackgate process needs: where Redis is and how keys look."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKGATE_", extra="ignore", allow_inf_nan=False
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; redis+cluster:// or ?cluster=1 selects Redis Cluster.",
    )
    key_prefix: str = Field(
        "trackgate",
        pattern=r"^[^{}\s]+$",
        description="Prefix of every Redis key (no braces or spaces).",
    )
    stream_shards: int = Field(
        1,
        ge=1,
        le=1024,
        description="Number of record streams; devices are spread by IMEI.",
    )
    log_level: str = Field(
        "INFO",
        pattern="(?i)^(DEBUG|INFO|WARNING|ERROR)$",
        description="DEBUG, INFO, WARNING or ERROR.",
    )
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json")
    pod_name: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This instance in device hashes (the pod name in Kubernetes).",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, url: str) -> str:
        check_redis_url(url)
        return url

    def keys(self) -> Keys:
        return Keys(prefix=self.key_prefix, shards=self.stream_shards)


def check_redis_url(url: str) -> None:
    """Raise ValueError unless the Redis clients can be built from ``url``.

    The cluster forms (``redis+cluster://``, ``rediss+cluster://``,
    ``?cluster=1``) are checked as the plain URL the cluster client is
    given; ``unix:///path/redis.sock`` is a local socket. The message
    never repeats the URL: it may hold a password.
    """
    from redis.connection import parse_url

    from trackgate.core.redisconn import pubsub_url

    try:
        parse_url(pubsub_url(url))  # type: ignore[no-untyped-call]
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("Redis URL must specify"):
            reason = "it must start with redis://, rediss:// or redis+cluster://"
        raise ValueError(f"not a Redis URL: {reason}") from None
