"""`trackgate bridge laravel` as a process: settings from env, exit, signals."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.bridge.streams import IMEI, record
from tests.bridge.test_worker import write
from tests.support.servers import free_port, trackgate_env, wait_for_port
from trackgate.core.redisconn import sync_client

TRACKGATE = shutil.which("trackgate") or str(Path(sys.executable).parent / "trackgate")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def sample(text: str, name: str) -> tuple[dict[str, str], float] | None:
    """Labels (without OpenTelemetry's scope labels) and value of ``name``."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                labels = {k: v for k, v in s.labels.items() if not k.startswith("otel")}
                return labels, s.value
    return None


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
        "TRACKGATE_BRIDGE_METRICS_PORT": "0",
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


def test_running_bridge_serves_metrics_and_stops_on_sigterm(redis_url: str) -> None:
    write(redis_url, [record(IMEI, n) for n in range(2)], shards=1)
    port = free_port()
    env = trackgate_env(
        TRACKGATE_REDIS_URL=redis_url,
        TRACKGATE_LARAVEL_JOB="App\\Jobs\\IngestRecord@handle",
        TRACKGATE_BRIDGE_BLOCK_MS="500",
        TRACKGATE_BRIDGE_STATS_INTERVAL_S="0.2",
        TRACKGATE_BRIDGE_METRICS_PORT=str(port),
    )
    proc = subprocess.Popen(
        [TRACKGATE, "bridge", "laravel"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=20)
        deadline = time.monotonic() + 20
        while (lag := sample(scrape(port), "trackgate_bridge_lag")) is None:
            assert time.monotonic() < deadline, "no lag reading exported"
            time.sleep(0.1)
        assert lag == ({"stream": "trackgate:records:{s0}"}, 0.0)
        pushed = sample(scrape(port), "trackgate_bridge_jobs_pushed_total")
        assert pushed is not None and pushed[1] == 2.0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "pushed 2 jobs" in out


def test_a_taken_metrics_port_is_one_line(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        env = {
            "TRACKGATE_REDIS_URL": redis_url,
            "TRACKGATE_LARAVEL_JOB": "App\\Jobs\\IngestRecord@handle",
            "TRACKGATE_BRIDGE_METRICS_PORT": str(taken.getsockname()[1]),
        }
        done = run(env, "--stop-when-empty")

    assert done.returncode == 2
    assert "TRACKGATE_BRIDGE_METRICS_PORT" in done.stderr
    assert "Traceback" not in done.stderr
