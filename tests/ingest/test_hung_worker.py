"""A worker whose event loop does not turn, seen from the admin port.

``trackgate ingest`` runs as a real process with a short hang threshold.
A worker stopped with SIGSTOP is, from outside, exactly a hung event loop:
the process exists and holds its sockets, and nothing in it runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import IngestProcess
from trackgate.protocol import encode_imei

THRESHOLD_S = 2.0
#: Pulses come every 0.25 s and /healthz reads the latest one when asked.
DETECTION_SLACK_S = 1.5


def get(ingest: IngestProcess, path: str) -> tuple[int, str, float]:
    """Status, body and duration of a GET on the admin port."""
    url = f"http://127.0.0.1:{ingest.admin_port}{path}"
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body = int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = int(exc.code), exc.read().decode()
    return status, body, time.monotonic() - started


def healthz(ingest: IngestProcess) -> tuple[int, dict[str, Any]]:
    status, body, _ = get(ingest, "/healthz")
    return status, json.loads(body)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def supervisor_counts(ingest: IngestProcess) -> dict[str, float]:
    """The supervisor's worker counters, summed over workers."""
    status, text, _ = get(ingest, "/metrics")
    assert status == 200
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "trackgate_worker_hangs_total",
                "trackgate_worker_restarts_total",
            ):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` in /proc (T = stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def until_unhealthy(ingest: IngestProcess, since: float) -> tuple[float, Any]:
    """Seconds from ``since`` to the first failing /healthz, and its body."""
    deadline = since + THRESHOLD_S + 10
    while time.monotonic() < deadline:
        status, body = healthz(ingest)
        if status == 503:
            return time.monotonic() - since, body
        time.sleep(0.05)
    raise AssertionError("/healthz never failed")


def logs_in(port: int, imei: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode_imei(imei))
        return sock.recv(1) == b"\x01"


def test_a_stopped_worker_fails_liveness_in_time_and_is_replaced(
    redis_url: str,
) -> None:
    ingest = IngestProcess(redis_url, workers=2, worker_hang_timeout_s=str(THRESHOLD_S))
    ingest.start()
    victim = 0
    try:
        # Ready means both loops turned, so both have sent pulses.
        assert wait_until(lambda: ingest.readyz() == 200, timeout=30)
        assert healthz(ingest) == (200, {"workers": 2, "alive": 2, "hung": 0})
        victim, other = ingest.worker_pids()
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        after, body = until_unhealthy(ingest, stopped)
        assert THRESHOLD_S - 0.5 <= after <= THRESHOLD_S + DETECTION_SLACK_S, after
        # Seen hung while it still runs (the kill waits for a stack dump).
        assert body == {"workers": 2, "alive": 2, "hung": 1}

        # The supervisor kills it and starts another; the other one is untouched.
        assert wait_until(
            lambda: (
                victim not in ingest.worker_pids() and len(ingest.worker_pids()) == 2
            ),
            timeout=15,
        ), ingest.log()[-3000:]
        assert other in ingest.worker_pids()
        assert wait_until(lambda: healthz(ingest)[0] == 200, timeout=30)
        # Kill after the stack dump wait, restart delay: seconds, not a probe
        # period of the chart (10 s).
        unhealthy_for = time.monotonic() - stopped - after
        assert unhealthy_for < 5.0, unhealthy_for
        assert healthz(ingest)[1] == {"workers": 2, "alive": 2, "hung": 0}
        assert wait_until(lambda: ingest.readyz() == 200, timeout=30)
        for n in range(8):
            assert logs_in(ingest.port, str(356_307_049_100_000 + n))
        log = ingest.log()
        assert f"(pid {victim}) is hung" in log
        assert "killing it and starting it again" in log
        assert supervisor_counts(ingest) == {
            "trackgate_worker_hangs_total": 1.0,
            "trackgate_worker_restarts_total": 1.0,
        }
    finally:
        if victim:
            with suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        ingest.stop()


def test_without_restart_liveness_fails_until_the_loop_turns_again(
    redis_url: str,
) -> None:
    ingest = IngestProcess(
        redis_url,
        workers=1,
        worker_hang_timeout_s=str(THRESHOLD_S),
        worker_hang_restart="false",
    )
    ingest.start()
    worker = 0
    try:
        assert wait_until(lambda: ingest.readyz() == 200, timeout=30)
        (worker,) = ingest.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        stopped = time.monotonic()
        after, body = until_unhealthy(ingest, stopped)
        assert THRESHOLD_S - 0.5 <= after <= THRESHOLD_S + DETECTION_SLACK_S, after
        assert body == {"workers": 1, "alive": 1, "hung": 1}
        # Readiness does not wait for a request the hung worker cannot answer.
        status, _, took = get(ingest, "/readyz")
        assert status == 503 and took < 1.0, took
        status, _, took = get(ingest, "/metrics")
        assert status == 200 and took < 1.0, took

        # Left alone: still the same stopped process, still failing.
        time.sleep(THRESHOLD_S)
        assert ingest.worker_pids() == [worker]
        assert process_state(worker) == "T"
        assert healthz(ingest)[0] == 503

        os.kill(worker, signal.SIGCONT)
        assert wait_until(lambda: healthz(ingest)[0] == 200, timeout=5)
        assert healthz(ingest)[1] == {"workers": 1, "alive": 1, "hung": 0}
        assert wait_until(lambda: ingest.readyz() == 200, timeout=10)
        assert ingest.worker_pids() == [worker]
        assert logs_in(ingest.port, "356307049100100")

        # SIGUSR1 (what the supervisor sends before a kill) dumps the stack
        # of a running worker too, and it goes on serving.
        os.kill(worker, signal.SIGUSR1)
        assert wait_until(lambda: "Current thread" in ingest.log(), timeout=5)
        assert ingest.worker_pids() == [worker]
        assert healthz(ingest)[0] == 200

        # The supervisor notes the recovery on its next look (every 0.5 s).
        assert wait_until(
            lambda: "worker 0 event loop turns again" in ingest.log(), timeout=3
        )
        log = ingest.log()
        assert f"worker 0 (pid {worker}) is hung" in log
        assert "TRACKGATE_WORKER_HANG_RESTART=false" in log
        assert supervisor_counts(ingest) == {
            "trackgate_worker_hangs_total": 1.0,
            "trackgate_worker_restarts_total": 0.0,
        }
    finally:
        if worker:
            with suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        ingest.stop()
