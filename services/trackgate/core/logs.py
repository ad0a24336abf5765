"""Logging set-up: one line per event, as text or JSON, and a rate limiter.

Log lines about a connection carry ``imei=`` and ``peer=``; per-packet
detail is DEBUG only. Malformed input is logged at WARNING through
:class:`LogLimiter`, so that a peer sending garbage produces a counter
increase per event but at most a few lines per minute.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send trackgate's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries stay quiet unless something is wrong.
    for noisy in ("aiohttp.access", "asyncio", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class LogLimiter:
    """Allows ``burst`` lines per key and ``period`` seconds, then counts."""

    #: Bound on tracked keys, so a flood from many addresses cannot grow it.
    MAX_KEYS = 4096

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether to log now, and how many lines were suppressed before."""
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            suppressed = max(count - self.burst, 0)
            self._windows[key] = (now, 1)
            return True, suppressed
        if len(self._windows) >= self.MAX_KEYS and key not in self._windows:
            self._windows.clear()
        self._windows[key] = (start, count + 1)
        return count < self.burst, 0
