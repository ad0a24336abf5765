"""Fixtures for the API tests: a token file, the app on a real Redis, data.

The app runs in-process behind httpx's ASGI transport with its lifespan
entered, so every request goes through routing, auth, validation and the
real Redis; ``api_server`` also runs ``trackgate api`` as a real uvicorn
process for the tests that need a socket (schema fuzzing, live streams).
``seed_device`` and ``seed_record`` write data the way the ingest service
does (docs/redis-contract.md), without depending on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis

from tests.support.servers import RedisServer, free_port, trackgate_env, wait_for_port
from trackgate.api.main import create_app
from trackgate.api.settings import ApiSettings
from trackgate.core.keys import Keys

if TYPE_CHECKING:
    from tests.api.served import ApiProcess

READ_TOKEN = "read-0123456789abcdef0123"
COMMANDS_TOKEN = "commands-0123456789abcdef01"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
COMMANDS = {"Authorization": f"Bearer {COMMANDS_TOKEN}"}
KEYS = Keys()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(
        f"# scopes: read, commands\n\nread {READ_TOKEN}\ncommands {COMMANDS_TOKEN}\n"
    )
    return path


@pytest.fixture
def make_settings(redis_url: str, tokens_file: Path) -> Callable[..., ApiSettings]:
    def make(**overrides: Any) -> ApiSettings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "api_tokens_file": tokens_file,
            "pod_name": "api-test",
        }
        values.update(overrides)
        return ApiSettings(**values)

    return make


#: Key prefix of the API served as a subprocess (``api_server``).
SERVED_PREFIX = "served"


@pytest.fixture(scope="session")
def api_server(
    redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tokens = tmp_path_factory.mktemp("api") / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\ncommands {COMMANDS_TOKEN}\n")
    port = free_port()
    env = trackgate_env(
        TRACKGATE_REDIS_URL=redis_proc.url,
        TRACKGATE_API_TOKENS_FILE=str(tokens),
        TRACKGATE_API_HOST="127.0.0.1",
        TRACKGATE_API_PORT=str(port),
        TRACKGATE_KEY_PREFIX=SERVED_PREFIX,
        TRACKGATE_LOG_LEVEL="WARNING",
    )
    command = [str(Path(sys.executable).with_name("trackgate")), "api"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def client_for(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test"
        ) as client:
            yield client


@pytest.fixture
async def api(
    make_settings: Callable[..., ApiSettings],
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(make_settings()):
        yield client


@pytest.fixture
def sync_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def seed_device(r: redis.Redis, imei: str, *, seen_at: int, connected: bool = True,
                **fields: Any) -> None:  # fmt: skip
    """A device hash and index entry as the ingest service writes them."""
    values = {
        "imei": imei, "seen_at": seen_at, "connected": int(connected),
        "session_id": f"s-{imei[-4:]}", "session_start": seen_at - 60_000,
        "pod": "ingest-0", "worker": "1", "peer": "10.1.2.3:40000",
        "transport": "tcp", "last_timestamp": seen_at - 1500,
        "last_latitude": "54.6872", "last_longitude": "-25.3011",
        "last_altitude": "-6", "last_angle": "214", "last_speed": "42",
        "last_satellites": "9", "last_lag_ms": "1500", "records_received": "12",
        "bursts_total": "0",
    }  # fmt: skip
    values.update(fields)
    r.hset(KEYS.device(imei), mapping={k: str(v) for k, v in values.items()})
    r.zadd(KEYS.devices(), {imei: seen_at})


def seed_record(r: redis.Redis, imei: str, *, at: int, seq: int = 0,
                keys: Keys = KEYS, **fields: Any) -> str:  # fmt: skip
    """One stream entry as the record store writes it; returns its id."""
    values: dict[str, Any] = {
        "imei": imei, "timestamp": at - 1000, "received_at": at, "priority": 1,
        "longitude": "25.3011", "latitude": "-54.6872", "altitude": -6,
        "angle": 214, "satellites": 9, "speed": 42, "event_id": 239,
        "io": json.dumps({"21": 3, "66": 24079, "78": 18446744073709551615}),
        "codec": 142, "transport": "tcp",
    }  # fmt: skip
    values.update(fields)
    entry_id = f"{at}-{seq}"
    r.xadd(keys.records_for(imei), {k: str(v) for k, v in values.items()}, id=entry_id)
    return entry_id


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error object of a response, checking the stable shape on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return error


@pytest.fixture(scope="module")
def served(
    redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    """``trackgate api`` as a process of its own with a log the test reads."""
    from tests.api.served import ApiProcess  # it reads this module's tokens

    api = ApiProcess(redis_proc.url, tmp_path_factory.mktemp("api"))
    api.start()
    try:
        yield api
    finally:
        api.stop()
