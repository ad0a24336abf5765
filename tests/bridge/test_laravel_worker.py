"""A real Laravel worker (Debian's php-laravel-framework) runs the bridge's jobs.

The test app in tests/support/laravel writes what each handler received to a
JSON-lines file; these tests compare it with the records written to the
stream. They skip, saying why, where PHP or the framework is not installed
(``.ci/install-php.sh`` installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.bridge.streams import IMEI, U64_MAX, record
from tests.bridge.test_worker import (
    IMEIS,
    bridge_settings,
    drain,
    expected_record,
    queue_name,
    write,
)
from tests.support.cluster import RedisClusterProcs
from tests.support.servers import trackgate_env
from trackgate.core.redisconn import is_cluster_url, sync_client

APP = Path(__file__).resolve().parents[1] / "support" / "laravel"
FRAMEWORK = Path("/usr/share/php/Illuminate/Foundation/Application.php")
#: Seconds one `queue:work --stop-when-empty` run may take; a few hundred
#: jobs take about a second.
WORKER_TIMEOUT = 120


def _php_missing() -> str | None:
    php = shutil.which("php")
    if php is None:
        return "php is not installed (run .ci/install-php.sh)"
    if not FRAMEWORK.exists():
        return "php-laravel-framework is not installed (run .ci/install-php.sh)"
    modules = subprocess.run([php, "-m"], capture_output=True, text=True).stdout
    if "redis" not in modules.split():
        return "php-redis is not installed (run .ci/install-php.sh)"
    return None


pytestmark = pytest.mark.skipif(_php_missing() is not None, reason=str(_php_missing()))


@pytest.fixture
def laravel_redis(
    request: pytest.FixtureRequest, any_redis_url: str
) -> tuple[str, dict[str, str]]:
    """The Redis under test and the environment that points Laravel at it."""
    if is_cluster_url(any_redis_url):
        procs: RedisClusterProcs = request.getfixturevalue("redis_cluster_procs")
        seeds = ",".join(f"127.0.0.1:{port}" for port in procs.ports)
        # Laravel 8 does not add a hash tag itself: the queue name carries it.
        return any_redis_url, {"REDIS_CLUSTER_SEEDS": seeds, "REDIS_QUEUE": "{default}"}
    parts = urlsplit(any_redis_url)
    return any_redis_url, {
        "REDIS_HOST": str(parts.hostname),
        "REDIS_PORT": str(parts.port),
    }


def run_worker(env: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """Run `php artisan queue:work redis --stop-when-empty`; the lines it wrote."""
    sink = tmp_path / "sink.jsonl"
    full_env = trackgate_env(
        TRACKGATE_LARAVEL_STORAGE=str(tmp_path / "storage"),
        TRACKGATE_LARAVEL_SINK=str(sink),
        **env,
    )
    done = subprocess.run(
        ["php", str(APP / "artisan"), "queue:work", "redis", "--stop-when-empty"],
        env=full_env, capture_output=True, text=True, timeout=WORKER_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Failed:" not in done.stdout, done.stdout + done.stderr
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines()]


def assert_queue_empty(url: str) -> None:
    client = sync_client(url)
    name = queue_name(url)
    try:
        assert client.llen(name) == 0
        assert client.zcard(f"{name}:reserved") == 0
        assert client.zcard(f"{name}:delayed") == 0
    finally:
        client.close()


async def test_laravel_handler_receives_every_record_exactly(
    laravel_redis: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = laravel_redis
    records = [record(imei, n) for imei in IMEIS for n in range(5)]
    write(url, records)
    await drain(bridge_settings(url, laravel_job="App\\Jobs\\IngestRecord@handle"))

    lines = run_worker(env, tmp_path)

    assert len(lines) == len(records)
    received = sorted((line["data"]["record"] for line in lines), key=_order)
    assert received == sorted((expected_record(r) for r in records), key=_order)
    for line in lines:
        assert line["handler"] == "IngestRecord@handle"
        assert line["attempts"] == 1
        assert line["types"][0]["imei"] == "string"
        assert line["types"][0]["latitude"] == "double"
        assert line["types"][0]["io"]["78"] == "string"
    assert_queue_empty(url)


async def test_released_job_comes_back_with_exact_values(
    laravel_redis: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = laravel_redis
    records = [record(IMEI, n) for n in range(3)]
    write(url, records)
    # The worker's default --tries is 1: the payload's maxTries overrides it.
    await drain(
        bridge_settings(
            url, laravel_job="App\\Jobs\\IngestRetry@handle", laravel_max_tries=2
        )
    )

    lines = run_worker(env, tmp_path)

    # The second attempt runs the payload Laravel's pop script re-encoded.
    assert [line["attempts"] for line in lines] == [2, 2, 2]
    received = sorted((line["data"]["record"] for line in lines), key=_order)
    assert received == [expected_record(r) for r in records]
    assert received[0]["imei"] == IMEI
    assert received[0]["io"]["78"] == str(U64_MAX)
    assert_queue_empty(url)


async def test_handler_named_by_class_alone_is_fired(
    redis_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(redis_url)
    write(redis_url, [record(IMEI, 0)])
    await drain(bridge_settings(redis_url, laravel_job="App\\Jobs\\IngestFire"))

    lines = run_worker(
        {"REDIS_HOST": str(parts.hostname), "REDIS_PORT": str(parts.port)}, tmp_path
    )

    assert [line["handler"] for line in lines] == ["IngestFire"]
    assert lines[0]["data"]["record"]["imei"] == IMEI


async def test_packet_job_hands_the_whole_packet_to_laravel(
    redis_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(redis_url)
    packet = [record(IMEI, n) for n in range(4)]
    write(redis_url, packet)
    await drain(
        bridge_settings(
            redis_url,
            laravel_job="App\\Jobs\\IngestRecord@handle",
            bridge_mode="packet",
        )
    )

    lines = run_worker(
        {"REDIS_HOST": str(parts.hostname), "REDIS_PORT": str(parts.port)}, tmp_path
    )

    assert len(lines) == 1
    data = lines[0]["data"]
    assert data["imei"] == IMEI and len(data["entry_ids"]) == 4
    assert data["records"] == [expected_record(r) for r in packet]


def _order(rec: dict[str, Any]) -> tuple[str, int]:
    return rec["imei"], rec["timestamp"]
