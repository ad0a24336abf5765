"""Settings of the API process, validated once at start-up.

Read from ``TRACKGATE_*`` environment variables (see
``trackgate.core.settings``); ``trackgate api`` flags override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from trackgate.core.commands import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_MAX,
    DEFAULT_RETENTION_S,
    MAX_ATTEMPTS_LIMIT,
)
from trackgate.core.devices import DEFAULT_SCAN_BUDGET
from trackgate.core.settings import CommonSettings


class ApiSettings(CommonSettings):
    """What ``trackgate api`` needs besides Redis."""

    api_host: str = Field(default="0.0.0.0", description="Address the API listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port of the API.")
    api_tokens_file: Path | None = Field(
        default=None,
        description="File of bearer tokens, one '<scope> <token>' a line "
        "(scope read or commands). Required.",
    )
    api_metrics_public: bool = Field(
        default=True,
        description="Serve /metrics without a token (for Prometheus scrapes); "
        "false requires a read token.",
    )
    api_command_rate_limit: int = Field(
        default=10,
        ge=0,
        description="Commands per device per window; 0 disables the limit.",
    )
    api_command_rate_window_s: float = Field(
        default=60.0, gt=0, description="Length of the per-device rate window, seconds."
    )
    api_command_queue_max: int = Field(
        default=DEFAULT_QUEUE_MAX,
        ge=1,
        le=10_000,
        description="Commands waiting per device.",
    )
    api_command_codec: Literal[12, 14] = Field(
        default=12, description="Codec of commands that do not name one."
    )
    api_command_max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="Delivery attempts of commands that do not name a number.",
    )
    api_command_retention_s: int = Field(
        default=DEFAULT_RETENTION_S,
        ge=60,
        description="How long finished commands and idempotency keys are kept.",
    )
    api_records_scan_budget: int = Field(
        default=DEFAULT_SCAN_BUDGET,
        ge=100,
        le=1_000_000,
        description="Stream entries one records request may read.",
    )
    api_live_max_streams: int = Field(
        default=100,
        ge=1,
        description="Live event streams open at once in this process.",
    )
    api_live_ping_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between keep-alive comments on live streams.",
    )
    api_diagnostics_max_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Longest sampling a diagnostics call may ask.",
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024,
        ge=16 * 1024,
        le=16 * 1024 * 1024,
        description="Largest request body accepted, bytes; a longer one is "
        "answered 413 before it is read. The 16 KiB minimum holds any command "
        "request not padded with whitespace.",
    )
    port: int = Field(
        default=5027,
        ge=1,
        le=65535,
        description="TCP port of the ingest listener in this pod (for diagnostics).",
    )


def load_settings(**overrides: Any) -> ApiSettings:
    """Settings from the environment, with ``overrides`` (command-line flags)."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return ApiSettings(**given)
