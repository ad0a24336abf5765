"""``trackgate api`` as a real uvicorn process whose log the test can read.

Unlike the session-wide ``api_server`` fixture, each :class:`ApiProcess`
has its own token file and key prefix, so a test may change the file under
it, and its stderr goes to a file that the test reads back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.api.conftest import COMMANDS_TOKEN, READ_TOKEN
from tests.support.servers import free_port, trackgate_env, wait_for_port


class ApiProcess:
    """``trackgate api`` on a free loopback port, tokens in ``tokens_file``."""

    def __init__(self, redis_url: str, workdir: Path, **settings: str) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.tokens_file = workdir / "tokens"
        self.tokens_file.write_text(f"read {READ_TOKEN}\ncommands {COMMANDS_TOKEN}\n")
        self.settings = settings
        self.log_path = Path(
            tempfile.mkstemp(prefix="trackgate-api-", suffix=".log", dir=workdir)[1]
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = trackgate_env(
            TRACKGATE_REDIS_URL=self.redis_url,
            TRACKGATE_API_TOKENS_FILE=str(self.tokens_file),
            TRACKGATE_API_HOST="127.0.0.1",
            TRACKGATE_API_PORT=str(self.port),
            TRACKGATE_LOG_LEVEL="INFO",
            TRACKGATE_LOG_FORMAT="json",
        )
        env.update({f"TRACKGATE_{k.upper()}": v for k, v in self.settings.items()})
        command = [str(Path(sys.executable).with_name("trackgate")), "api"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port, timeout=30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def entries(self, level: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (``TRACKGATE_LOG_FORMAT=json``), of ``level``."""
        found = []
        for line in self.log().splitlines():
            if not line.startswith("{"):
                continue
            entry: dict[str, Any] = json.loads(line)
            if level is None or entry["level"] == level:
                found.append(entry)
        return found

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The log once it holds ``text`` (uvicorn writes it asynchronously)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the API log:\n{log[-3000:]}")
            time.sleep(0.05)
        return log
