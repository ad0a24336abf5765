"""A worker's background tasks: a failure is logged, never silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from trackgate.ingest.settings import IngestSettings
from trackgate.ingest.worker import Worker


async def test_a_failed_background_task_is_logged_with_its_name(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(IngestSettings(redis_url=redis_url, pod_name="pod-t"), 3)

    async def broken() -> None:
        raise RuntimeError("bus message not understood")

    async def fine() -> None:
        return None

    with caplog.at_level(logging.ERROR, logger="trackgate"):
        worker._spawn(broken(), "bus")
        worker._spawn(fine(), "probe")
        await asyncio.sleep(0.05)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "background task bus of worker=pod-t/3 failed: RuntimeError: "
        "bus message not understood"
    ]
    assert worker._tasks == set()
    await worker.redis.aclose()
    await worker.store_redis.aclose()
