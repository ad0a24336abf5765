"""The command life cycle through the real ingest service and the real API.

``trackgate ingest`` runs as a subprocess (one worker) against a real
Redis; trackers connect to it over TCP; commands are queued through the
API app. This is the same path a production pod takes: API -> Redis ->
events channel -> the worker holding the session -> the device -> back.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import COMMANDS, COMMANDS_TOKEN, client_for
from tests.ingest.test_commands_delivery import (
    FMB_ANSWERS,
    IMEI,
    Tracker,
    never_answers,
    settled,
)
from tests.support.servers import RedisServer, free_port, trackgate_env, wait_for_port
from trackgate.api.settings import ApiSettings
from trackgate.core.commands import CommandState, CommandStore
from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient, async_client

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

URL = f"/v1/devices/{IMEI}/commands"


@pytest.fixture(scope="module")
def ingest_port(redis_proc: RedisServer) -> Iterator[int]:
    """One ingest service for the module; each test still starts on an empty
    Redis (the ``redis_url`` fixture flushes it)."""
    port = free_port()
    env = trackgate_env(
        TRACKGATE_REDIS_URL=redis_proc.url,
        TRACKGATE_HOST="127.0.0.1",
        TRACKGATE_PORT=str(port),
        TRACKGATE_WORKERS="1",
        TRACKGATE_ADMIN_PORT="0",
        TRACKGATE_COMMAND_RESPONSE_TIMEOUT_S="0.5",
        TRACKGATE_COMMAND_RETRY_DELAY_S="0.1",
        TRACKGATE_LOG_LEVEL="WARNING",
    )
    command = [str(Path(sys.executable).with_name("trackgate")), "ingest"]
    process = subprocess.Popen(command, env=env)
    try:
        wait_for_port(port, timeout=30)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def api(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"commands {COMMANDS_TOKEN}\n")
    async for client in client_for(
        ApiSettings(redis_url=redis_url, api_tokens_file=tokens)
    ):
        yield client


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[CommandStore]:
    client: AsyncClient = async_client(redis_url, decode_responses=True)
    yield CommandStore(client, Keys())
    await client.aclose()


async def test_command_life_cycle_through_ingest(
    redis_url: str, ingest_port: int, api: httpx.AsyncClient, store: CommandStore
) -> None:
    tracker = Tracker(IMEI, ingest_port)
    await tracker.connect()
    assert await tracker.send_record() == 1

    queued = await api.post(URL, json={"text": "getinfo"}, headers=COMMANDS)
    command_id = queued.json()["id"]
    assert (await tracker.next_command()).payload == b"getinfo"
    await settled(store, command_id, CommandState.ANSWERED)
    answered = (await api.get(f"{URL}/{command_id}", headers=COMMANDS)).json()

    assert answered["response"] == FMB_ANSWERS[b"getinfo"].decode()
    assert [h["state"] for h in answered["history"]] == ["queued", "sent", "answered"]
    device = (await api.get(f"/v1/devices/{IMEI}", headers=COMMANDS)).json()
    assert answered["session_id"] == device["session_id"]
    await tracker.close()


async def test_queued_while_offline_then_silent_then_answered_on_reconnect(
    redis_url: str, ingest_port: int, api: httpx.AsyncClient, store: CommandStore
) -> None:
    first = (await api.post(URL, json={"text": "getver"}, headers=COMMANDS)).json()
    second = (await api.post(URL, json={"text": "getinfo"}, headers=COMMANDS)).json()

    mute = Tracker(IMEI, ingest_port, answer=never_answers)
    await mute.connect()
    assert (await mute.next_command()).payload == b"getver"
    await mute.close()
    lost = await settled(store, first["id"], CommandState.QUEUED)
    assert lost.attempts == 1

    back = Tracker(IMEI, ingest_port)
    await back.connect()
    await settled(store, second["id"], CommandState.ANSWERED, timeout=10)

    assert [m.payload for m in back.received] == [b"getver", b"getinfo"]
    again = await store.get(IMEI, first["id"])
    assert (again.state, again.attempts) == (CommandState.ANSWERED, 2)
    await back.close()
