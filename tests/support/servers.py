"""Start real processes for tests: redis-server on a free loopback port.

No fakes: the suite needs ``redis-server`` on PATH (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

#: Ports this test run handed out: never twice, even before they are bound.
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for bind(0) and outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    """Free on 127.0.0.1 for both TCP and UDP right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP, outside the ephemeral range.

    A port the kernel picked for bind(0) and that was closed again is free
    for the next bind(0) of any process too: a server started later with it
    may find it taken (by a worker's internal admin port, say). Ports
    outside ``ip_local_port_range`` are never picked by the kernel, so once
    checked free they stay free for the test unless someone asks for them
    by number; none is handed out twice in a run.
    """
    low, high = _ephemeral_range()
    candidates = [
        *range(max(1024, 10_000), min(low, 65_536)),
        *range(max(high + 1, 1024), 65_536),
    ]
    rng = random.SystemRandom()
    for _ in range(200):
        if not candidates:
            break
        port = rng.choice(candidates)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    # No room outside the ephemeral range (a machine that widened it).
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ``host:port`` accepts; give up early if ``process`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(
                f"nothing listens on {host}:{port}: the process exited "
                f"with {process.returncode}"
            )
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
        try:
            wait_for_port(self.port, process=self.process)
        except BaseException:
            # Not left running behind a failed start.
            self.stop(kill=True)
            raise

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
        fd, path = tempfile.mkstemp(prefix="trackgate-ingest-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

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
        # A pod name of its own (gateways under one name refuse to share it).
        env["TRACKGATE_POD_NAME"] = f"test-{self.port}"
        env.update({f"TRACKGATE_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def launch(self) -> None:
        """Start the process; do not wait for it to serve."""
        import sys

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trackgate", "ingest"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        """Start the process and wait until it serves both ports."""
        self.launch()
        assert self.process is not None
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
            wait_for_port(self.admin_port, timeout=30, process=self.process)
        except TimeoutError as exc:
            # Stopped, so that nothing outlives the failed start.
            self.stop(timeout=10)
            tail = "\n".join(self.log().splitlines()[-80:])
            raise TimeoutError(
                f"{exc}; the end of the ingest log {self.log_path}:\n{tail}"
            ) from None
        except BaseException:
            self.stop(timeout=10)
            raise

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
