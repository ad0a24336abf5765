"""Start, stop and crash of the ingest service, seen from Redis and probes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import (
    IngestProcess,
    RedisServer,
    free_port,
    trackgate_env,
    wait_for_port,
)
from trackgate.core.keys import Keys
from trackgate.protocol import REMOTE_ERROR_KINDS, encode_avl_packet, encode_imei
from trackgate.sim import make_records

KEYS = Keys()
IMEI = "356307049000999"


def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def idle_sessions(port: int, count: int, first: int) -> list[socket.socket]:
    socks = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(encode_imei(str(356_307_049_000_000 + first + n)))
        assert sock.recv(1) == b"\x01"
        socks.append(sock)
    return socks


def connected(db: redis.Redis, first: int, count: int) -> int:
    return sum(
        db.hget(KEYS.device(str(356_307_049_000_000 + first + n)), "connected") == "1"
        for n in range(count)
    )


def test_readiness_follows_redis_both_ways_without_traffic(tmp_path: Path) -> None:
    redis_port = free_port()
    server = RedisServer(redis_port, tmp_path)
    ingest = IngestProcess(f"redis://127.0.0.1:{redis_port}/0")
    ingest.start()  # Redis is not there yet: the gateway still starts
    try:
        time.sleep(2)
        assert ingest.readyz() == 503
        server.start()
        assert wait_until(lambda: ingest.readyz() == 200)
        server.stop(kill=True)
        assert wait_until(lambda: ingest.readyz() == 503)
        server.start()
        assert wait_until(lambda: ingest.readyz() == 200)
    finally:
        ingest.stop()
        server.stop()


def test_sigterm_marks_every_session_disconnected(redis_url: str) -> None:
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    ingest = IngestProcess(redis_url, workers=2)
    ingest.start()
    socks = idle_sessions(ingest.port, 50, first=0)
    assert wait_until(lambda: connected(db, 0, 50) == 50)
    assert ingest.stop() == 0
    assert connected(db, 0, 50) == 0
    for sock in socks:
        sock.close()
    # The start line says which record path runs: the compiled one here.
    assert "record_decoder=compiled entry_packer=compiled" in ingest.log()
    assert "were not built" not in ingest.log()


def test_a_crashed_workers_sessions_are_released_by_its_successor(
    redis_url: str,
) -> None:
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    ingest = IngestProcess(redis_url, workers=1)
    ingest.start()
    try:
        socks = idle_sessions(ingest.port, 20, first=100)
        assert wait_until(lambda: connected(db, 100, 20) == 20)
        [worker] = ingest.worker_pids()
        os.kill(worker, signal.SIGKILL)
        # The supervisor starts a new worker 0; it releases what 0 held.
        assert wait_until(lambda: connected(db, 100, 20) == 0, timeout=20)
        assert "marked 20 devices disconnected" in ingest.log()
    finally:
        ingest.stop()
    for sock in socks:
        sock.close()


def test_a_second_gateway_on_a_served_port_refuses_to_start(
    redis_proc: RedisServer,
) -> None:
    first = IngestProcess(redis_proc.url)
    first.start()
    try:
        env = trackgate_env(
            TRACKGATE_REDIS_URL=redis_proc.url,
            TRACKGATE_HOST="127.0.0.1",
            TRACKGATE_PORT=str(first.port),
            TRACKGATE_ADMIN_PORT="0",
        )
        second = subprocess.run(
            [sys.executable, "-m", "trackgate", "ingest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"port {first.port} is already served" in second.stderr
        wait_for_port(first.port)  # the first one is untouched
    finally:
        first.stop()


def test_a_second_gateway_on_a_served_admin_port_refuses_to_start(
    redis_proc: RedisServer,
) -> None:
    first = IngestProcess(redis_proc.url)
    first.start()
    try:
        env = trackgate_env(
            TRACKGATE_REDIS_URL=redis_proc.url,
            TRACKGATE_HOST="127.0.0.1",
            TRACKGATE_PORT=str(free_port()),
            TRACKGATE_ADMIN_HOST="0.0.0.0",
            TRACKGATE_ADMIN_PORT=str(first.admin_port),
        )
        second = subprocess.run(
            [sys.executable, "-m", "trackgate", "ingest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"admin port {first.admin_port} is already served" in second.stderr
        assert first.readyz() == 200  # the first one is untouched
    finally:
        first.stop()


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def orphan_lines(ingest: IngestProcess) -> list[str]:
    return [
        line
        for line in ingest.log().splitlines()
        if "supervisor is gone, worker=" in line
    ]


def kill_left(pids: list[int]) -> None:
    for pid in pids:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_supervisor_was_killed_exits_soon_though_redis_hangs(
    tmp_path: Path,
) -> None:
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    ingest = IngestProcess(redis_server.url, workers=1)
    workers: list[int] = []
    frozen = False
    try:
        ingest.start()
        workers = ingest.worker_pids()
        device = socket.create_connection(("127.0.0.1", ingest.port), timeout=5)
        device.sendall(encode_imei(IMEI))
        assert device.recv(1) == b"\x01"
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs
        frozen = True
        records = make_records(2, codec=8)
        device.sendall(encode_avl_packet(8, records))  # stays in flight
        time.sleep(0.3)
        assert ingest.process is not None
        ingest.process.kill()  # kill -9: the worker is left on its own
        ingest.process.wait()
        ingest.process = None
        started = time.monotonic()
        assert wait_until(lambda: all(map(process_gone, workers)), timeout=30)
        took = time.monotonic() - started
        device.close()
    finally:
        kill_left(workers)
        ingest.stop()
        if frozen and redis_server.process is not None:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        redis_server.stop()
    # Noticed at the next sweep (1 s), then a shutdown bounded at 3 s.
    assert took < 5.5, took
    assert len(orphan_lines(ingest)) == 1, orphan_lines(ingest)


def test_workers_whose_supervisor_dies_while_they_start_exit_too(
    redis_url: str,
) -> None:
    ingest = IngestProcess(redis_url, workers=2)
    workers: list[int] = []
    try:
        ingest.launch()
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = ingest.worker_pids()
            time.sleep(0.005)
        assert len(workers) == 2
        assert ingest.process is not None
        # Killed while the workers are still importing: before any of them
        # could have asked for its parent.
        ingest.process.kill()
        ingest.process.wait()
        ingest.process = None
        assert wait_until(lambda: all(map(process_gone, workers)), timeout=30)
    finally:
        kill_left(workers)
        ingest.stop()
    assert len(orphan_lines(ingest)) == 2, ingest.log()


def test_event_counters_are_exported_at_zero_before_any_event(redis_url: str) -> None:
    ingest = IngestProcess(redis_url, workers=2)
    ingest.start()
    try:
        url = f"http://127.0.0.1:{ingest.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        ingest.stop()
    samples = {
        (sample.name, sample.labels.get("kind"), sample.labels.get("worker")): sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for worker in ("0", "1"):
        for kind in REMOTE_ERROR_KINDS:
            key = ("trackgate_decode_errors_total", kind, worker)
            assert samples[key].value == 0, key
        for name in (
            "trackgate_sessions_replaced_total",
            "trackgate_sessions_released_total",
            "trackgate_bursts_total",
        ):
            assert samples[(name, None, worker)].value == 0, (name, worker)
