"""Start real processes for tests: redis-server on a free loopback port.

No fakes: the suite needs ``redis-server`` on PATH (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 for both TCP and UDP right now."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class RedisServer:
    """A redis-server process owned by the test run."""

    def __init__(
        self, port: int, workdir: Path, extra: list[str] | None = None
    ) -> None:
        self.port = port
        self.workdir = workdir
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: run scripts/setup.sh "
                "(or apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


@contextmanager
def redis_server(extra: list[str] | None = None) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="trackgate-redis-") as tmp:
        server = RedisServer(free_port(), Path(tmp), extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def trackgate_env(**overrides: str) -> dict[str, str]:
    """Environment for a trackgate subprocess, minus the caller's TRACKGATE_ vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    env.update(overrides)
    return env


class IngestProcess:
    """``trackgate ingest`` as a real process on free loopback ports."""

    def __init__(self, redis_url: str, *, workers: int = 1, **settings: str) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.admin_port = free_port()
        self.workers = workers
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(
            tempfile.mkstemp(prefix="trackgate-ingest-", suffix=".log")[1]
        )

    def env(self) -> dict[str, str]:
        env = trackgate_env(
            TRACKGATE_REDIS_URL=self.redis_url,
            TRACKGATE_HOST="127.0.0.1",
            TRACKGATE_PORT=str(self.port),
            TRACKGATE_ADMIN_HOST="127.0.0.1",
            TRACKGATE_ADMIN_PORT=str(self.admin_port),
            TRACKGATE_WORKERS=str(self.workers),
            TRACKGATE_LOG_LEVEL="INFO",
        )
        env.update({f"TRACKGATE_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def start(self) -> None:
        import sys

        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trackgate", "ingest"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=30)
        wait_for_port(self.admin_port, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> int:
        """HTTP status of the admin port's /readyz."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def stop(self, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill(self) -> None:
        """kill -9 the supervisor and its workers: a crash, nothing drains."""
        if self.process is None:
            return
        import signal as _signal

        for pid in self.worker_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, _signal.SIGKILL)
        self.process.kill()
        self.process.wait()
        self.process = None


@contextmanager
def ingest_process(redis_url: str, **options: object) -> Iterator[IngestProcess]:
    ingest = IngestProcess(redis_url, **options)  # type: ignore[arg-type]
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()
