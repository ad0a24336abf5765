"""Settings of ``trackgate bridge laravel``, read once from ``TRACKGATE_*``.

Adds to the common settings what the bridge needs: its consumer group and
name, where Laravel's queue lives and how Laravel names it, and the bounds of
one read batch and of redelivery. ``docs/laravel-bridge.md`` explains each.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from trackgate.core.settings import CommonSettings, check_redis_url

#: A PHP class name with its namespace, optionally ``@method``.
_JOB_NAME = re.compile(
    r"^\\?[A-Za-z_][A-Za-z0-9_]*(\\[A-Za-z_][A-Za-z0-9_]*)*(@[A-Za-z_][A-Za-z0-9_]*)?$"
)


class BridgeSettings(CommonSettings):
    """Everything one bridge process reads from its environment."""

    bridge_group: str = Field(
        "laravel-bridge", min_length=1, description="Consumer group on every shard."
    )
    bridge_consumer: str = Field(
        "", description="Consumer name in the group; empty means the pod name."
    )
    bridge_mode: Literal["record", "packet"] = Field(
        "record", description="One Laravel job per record, or per packet."
    )
    # One XREADGROUP COUNT and one push script: big enough to amortise the two
    # round trips per batch, small enough that a batch's payloads (about 1 KB
    # each) stay far below Redis's 512 MB argument limit and Lua's stack.
    bridge_batch: int = Field(256, ge=1, le=1000, description="Entries per read.")
    bridge_block_ms: int = Field(
        2000, ge=10, le=30000, description="How long one read waits for entries."
    )
    bridge_claim_idle_ms: int = Field(
        60000, ge=100, description="Claim other consumers' entries idle this long."
    )
    bridge_claim_interval_s: float = Field(
        30.0, gt=0, description="How often to look for stale entries to claim."
    )
    bridge_max_deliveries: int = Field(
        5, ge=1, description="Dead-letter an entry delivered more often than this."
    )
    bridge_group_start: Literal["0", "$"] = Field(
        "0", description="Where a new group starts: 0 = whole stream, $ = new only."
    )
    bridge_stats_interval_s: float = Field(
        15.0, gt=0, description="How often to read consumer lag (and log counters)."
    )
    bridge_metrics_port: int = Field(
        9465, ge=0, le=65535, description="Port of /metrics; 0 = no metrics server."
    )

    laravel_redis_url: str = Field(
        "", description="Redis of the Laravel queue; empty means redis_url."
    )
    laravel_prefix: str = Field(
        "laravel_database_", description="Key prefix of Laravel's Redis connection."
    )
    laravel_queue: str = Field("default", min_length=1, description="Queue name.")
    laravel_job: str = Field(
        ..., description="Handler: App\\Jobs\\Ingest@handle, or a class (fire)."
    )
    laravel_hash_tag: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Wrap the queue name in {} (auto: on a cluster, as Laravel does).",
    )
    laravel_notify: bool = Field(
        True, description="Also push to queues:<name>:notify (Laravel 5.8 and later)."
    )
    laravel_max_tries: int | None = Field(
        None, ge=1, description="maxTries of each job; unset leaves it to the worker."
    )
    laravel_timeout: int | None = Field(
        None,
        ge=1,
        description="timeout (s) of each job; unset leaves it to the worker.",
    )

    @field_validator("laravel_job")
    @classmethod
    def _job_is_a_php_callable(cls, value: str) -> str:
        if not _JOB_NAME.match(value):
            raise ValueError(
                f"not a PHP class or Class@method: {value!r} "
                "(write App\\Jobs\\Ingest@handle)"
            )
        return value.lstrip("\\")

    @field_validator("laravel_redis_url")
    @classmethod
    def _laravel_url_parses(cls, url: str) -> str:
        if url:
            check_redis_url(url)
        return url

    def consumer(self) -> str:
        return self.bridge_consumer or self.pod_name

    def laravel_url(self) -> str:
        return self.laravel_redis_url or self.redis_url
