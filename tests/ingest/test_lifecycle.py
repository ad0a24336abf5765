"""Start, stop and crash of the ingest service, seen from Redis and probes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.support.servers import (
    IngestProcess,
    RedisServer,
    free_port,
    trackgate_env,
    wait_for_port,
)
from trackgate.core.keys import Keys
from trackgate.protocol import encode_imei

KEYS = Keys()


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
