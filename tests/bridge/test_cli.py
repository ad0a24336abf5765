"""`trackgate bridge laravel` as a process: settings from env, exit, signals."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.bridge.streams import IMEI, record
from tests.bridge.test_worker import write
from tests.support.servers import trackgate_env
from trackgate.core.redisconn import sync_client

TRACKGATE = shutil.which("trackgate") or str(Path(sys.executable).parent / "trackgate")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRACKGATE, "bridge", "laravel", *args],
        env=trackgate_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_backfill_run_pushes_everything_and_exits(redis_url: str) -> None:
    write(redis_url, [record(IMEI, n) for n in range(3)], shards=1)
    env = {
        "TRACKGATE_REDIS_URL": redis_url,
        "TRACKGATE_LARAVEL_JOB": "App\\Jobs\\IngestRecord@handle",
        "TRACKGATE_LARAVEL_QUEUE": "gps",
    }

    done = run(env, "--stop-when-empty")

    assert done.returncode == 0, done.stderr
    assert "pushed 3 jobs, acked 3 entries, dead-lettered 0" in done.stdout
    client = sync_client(redis_url)
    assert client.llen("laravel_database_queues:gps") == 3
    client.close()


def test_bad_job_name_is_refused_before_touching_redis(redis_url: str) -> None:
    done = run({"TRACKGATE_REDIS_URL": redis_url}, "--job", "App\\Jobs\\Bad Name")

    assert done.returncode == 2
    assert "not a PHP class or Class@method" in done.stderr


def test_sigterm_stops_a_waiting_bridge(redis_url: str) -> None:
    env = trackgate_env(
        TRACKGATE_REDIS_URL=redis_url,
        TRACKGATE_LARAVEL_JOB="App\\Jobs\\IngestRecord@handle",
        TRACKGATE_BRIDGE_BLOCK_MS="500",
    )
    proc = subprocess.Popen(
        [TRACKGATE, "bridge", "laravel"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = sync_client(redis_url)
        deadline = time.monotonic() + 20
        while not client.exists("trackgate:records:{s0}"):
            assert time.monotonic() < deadline, "bridge never created its group"
            time.sleep(0.05)
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "pushed 0 jobs" in out
