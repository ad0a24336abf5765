"""The live feed (server-sent events) and diagnostics, over a real socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis

from tests.api.conftest import COMMANDS, READ, SERVED_PREFIX, error_of, seed_record
from trackgate.core.keys import Keys

pytestmark = pytest.mark.asyncio(loop_scope="session")

IMEI, OTHER = "356307042441013", "356307042441021"
SERVED = Keys(prefix=SERVED_PREFIX)


async def _events(lines: Any, wanted: int) -> list[tuple[str, dict[str, Any], str]]:
    """The next ``wanted`` events of an SSE line stream: (event, data, id)."""
    events: list[tuple[str, dict[str, Any], str]] = []
    event, data, event_id = "message", "", ""
    async for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line == "" and data:
            events.append((event, json.loads(data), event_id))
            event, data, event_id = "message", "", ""
            if len(events) == wanted:
                return events
    return events


async def test_live_feed_streams_the_device_s_records_and_command_changes(
    api_server: str, redis_url: str
) -> None:
    writer = redis.Redis.from_url(redis_url, decode_responses=True)
    async with (
        httpx.AsyncClient(base_url=api_server, timeout=10) as client,
        client.stream("GET", f"/v1/devices/{IMEI}/events", headers=READ) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        await asyncio.sleep(0.3)  # the feed is subscribed and reading

        seed_record(writer, OTHER, at=1_764_780_000_001, keys=SERVED)
        own = seed_record(writer, IMEI, at=1_764_780_000_002, keys=SERVED)
        queued = await client.post(
            f"/v1/devices/{IMEI}/commands", json={"text": "getver"},
            headers=COMMANDS,
        )  # fmt: skip
        command_id = queued.json()["id"]
        await client.post(
            f"/v1/devices/{IMEI}/commands/{command_id}/cancel", headers=COMMANDS
        )

        events = await asyncio.wait_for(_events(stream.aiter_lines(), 2), 10)

    writer.close()
    kinds = sorted(event for event, _data, _id in events)
    assert kinds == ["command", "record"]
    record = next(data for event, data, _ in events if event == "record")
    record_id = next(event_id for event, _, event_id in events if event == "record")
    assert (record["imei"], record["id"], record_id) == (IMEI, own, own)
    command = next(data for event, data, _ in events if event == "command")
    assert (command["id"], command["state"]) == (command_id, "cancelled")


async def test_live_feed_resumes_after_last_event_id(
    api_server: str, redis_url: str
) -> None:
    writer = redis.Redis.from_url(redis_url, decode_responses=True)
    first = seed_record(writer, IMEI, at=1_764_780_001_000, keys=SERVED)
    missed = seed_record(writer, IMEI, at=1_764_780_002_000, keys=SERVED)
    writer.close()

    resume = READ | {"Last-Event-ID": first}
    async with (
        httpx.AsyncClient(base_url=api_server, timeout=10) as client,
        client.stream("GET", f"/v1/devices/{IMEI}/events", headers=resume) as stream,
    ):
        events = await asyncio.wait_for(_events(stream.aiter_lines(), 1), 10)

    assert [(event, event_id) for event, _, event_id in events] == [("record", missed)]


async def test_live_feed_needs_a_token(api_server: str) -> None:
    async with httpx.AsyncClient(base_url=api_server, timeout=10) as client:
        response = await client.get(f"/v1/devices/{IMEI}/events")

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


async def test_diagnostics_report_this_namespace_s_listener_and_counters(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/v1/diagnostics", params={"seconds": 0}, headers=READ)

    assert response.status_code == 200
    report = response.json()
    assert report["port"] == 5027
    assert report["report_version"] == 1
    assert "TcpExtListenOverflows" in str(report["counters"])
    assert isinstance(report["findings"], list)


async def test_diagnostics_refuse_long_sampling(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/diagnostics", params={"seconds": 30}, headers=READ)

    assert response.status_code == 422
    assert "at most 10" in error_of(response)["message"]
