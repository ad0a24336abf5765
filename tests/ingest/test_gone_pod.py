"""A pod that vanishes without a word: a live pod marks its devices offline."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.request

import redis

from tests.support.servers import IngestProcess
from trackgate.core.keys import Keys
from trackgate.protocol import encode_imei

KEYS = Keys()
FAST = {"heartbeat_s": "0.3", "heartbeat_ttl_s": "1.0"}


def imei(n: int) -> str:
    return str(356_307_049_100_000 + n)


def login(port: int, numbers: range) -> list[socket.socket]:
    socks = []
    for n in numbers:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(encode_imei(imei(n)))
        assert sock.recv(1) == b"\x01"
        socks.append(sock)
    return socks


def connected(db: redis.Redis, numbers: range) -> int:
    return sum(db.hget(KEYS.device(imei(n)), "connected") == "1" for n in numbers)


def released_metric(port: int) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    name = "trackgate_sessions_released_total"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def vanish(pod: IngestProcess) -> None:
    """Every process of the pod gone at once: nobody runs a shutdown."""
    assert pod.process is not None
    workers = pod.worker_pids()
    os.kill(pod.process.pid, signal.SIGSTOP)  # no restart of the workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.kill(pod.process.pid, signal.SIGKILL)
    pod.process.wait(10)


def test_a_vanished_pods_devices_are_marked_disconnected_by_a_live_pod(
    redis_url: str,
) -> None:
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    gone = IngestProcess(redis_url, workers=2, pod_name="pod-gone", **FAST)
    live = IngestProcess(redis_url, workers=1, pod_name="pod-live", **FAST)
    gone.start()
    socks: list[socket.socket] = []
    try:
        live.start()
        socks += login(gone.port, range(20))
        socks += login(live.port, range(20, 25))
        assert wait_until(lambda: connected(db, range(25)) == 25, timeout=10)
        time.sleep(1.5)  # a few heartbeats: nobody is taken for gone
        assert connected(db, range(25)) == 25

        vanish(gone)
        assert connected(db, range(20)) == 20  # nobody marked them
        assert wait_until(lambda: connected(db, range(20)) == 0, timeout=10)
        assert connected(db, range(20, 25)) == 5
        assert released_metric(live.admin_port) == 20
        assert "ingest worker pod-gone/" in live.log()
        assert db.smembers(KEYS.holders()) == {"pod-live/0"}
    finally:
        for sock in socks:
            sock.close()
        live.stop()
        if gone.process is not None and gone.process.poll() is None:
            gone.stop()


def test_a_stalled_worker_taken_for_gone_reclaims_its_sessions(
    redis_url: str,
) -> None:
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    stalled = IngestProcess(redis_url, workers=1, pod_name="pod-stalled", **FAST)
    live = IngestProcess(redis_url, workers=1, pod_name="pod-live", **FAST)
    stalled.start()
    socks: list[socket.socket] = []
    worker = 0
    try:
        live.start()
        socks += login(stalled.port, range(30, 40))
        assert wait_until(lambda: connected(db, range(30, 40)) == 10, timeout=10)
        [worker] = stalled.worker_pids()
        os.kill(worker, signal.SIGSTOP)  # a loop stuck for longer than the TTL
        assert wait_until(lambda: connected(db, range(30, 40)) == 0, timeout=10)
        os.kill(worker, signal.SIGCONT)
        assert wait_until(lambda: connected(db, range(30, 40)) == 10, timeout=10)
        assert "heartbeat had lapsed worker=pod-stalled/0" in stalled.log()
        assert stalled.worker_pids() == [worker]
    finally:
        if worker:
            # A stopped worker would outlive its supervisor's SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        for sock in socks:
            sock.close()
        live.stop()
        stalled.stop()


def test_a_second_gateway_under_a_live_pod_name_refuses_to_start(
    redis_url: str,
) -> None:
    first = IngestProcess(redis_url, workers=1, pod_name="pod-dup", **FAST)
    second = IngestProcess(redis_url, workers=1, pod_name="pod-dup", **FAST)
    first.start()
    try:
        second.launch()
        assert second.process is not None
        assert second.process.wait(30) == 2
        assert "pod name pod-dup is in use" in second.log()
        assert "TRACKGATE_POD_NAME" in second.log()
        first.stop()
        # Stopped cleanly, the name is free at once; after a crash, one TTL.
        third = IngestProcess(redis_url, workers=1, pod_name="pod-dup", **FAST)
        third.start()
        third.stop()
    finally:
        if first.process is not None and first.process.poll() is None:
            first.stop()


def test_a_pod_stopped_cleanly_is_not_taken_for_gone(redis_url: str) -> None:
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    leaving = IngestProcess(redis_url, workers=2, pod_name="pod-leaving", **FAST)
    live = IngestProcess(redis_url, workers=1, pod_name="pod-staying", **FAST)
    leaving.start()
    socks: list[socket.socket] = []
    try:
        live.start()
        socks += login(leaving.port, range(50, 60))
        # Each device logs in again: the first sessions end replaced.
        socks += login(leaving.port, range(50, 60))
        assert wait_until(lambda: connected(db, range(50, 60)) == 10, timeout=10)
        leaving.stop()
        assert connected(db, range(50, 60)) == 0
        time.sleep(2.0)  # two TTLs: a sweep would have run by now
        assert "pod-leaving" not in live.log()
        assert db.smembers(KEYS.holders()) == {"pod-staying/0"}
        assert not db.exists(KEYS.holder("pod-leaving/0"), KEYS.holder("pod-leaving/1"))
        assert released_metric(live.admin_port) == 0
    finally:
        for sock in socks:
            sock.close()
        live.stop()
        if leaving.process is not None and leaving.process.poll() is None:
            leaving.stop()
