"""Commands through the API: queue, read, list, cancel, idempotency, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.api.conftest import COMMANDS, KEYS, READ, client_for, error_of
from trackgate.api.settings import ApiSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

IMEI = "356307042441013"
URL = f"/v1/devices/{IMEI}/commands"


async def queue(
    api: httpx.AsyncClient, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await api.post(URL, json=body, headers=COMMANDS | headers)


async def test_queued_command_is_stored_queued_and_announced(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    pubsub = sync_redis.pubsub()
    pubsub.subscribe(KEYS.events())
    pubsub.get_message(timeout=1)

    response = await queue(api, {"text": "getinfo", "expires_in_s": 600})

    assert response.status_code == 201
    command = response.json()
    assert command["state"] == "queued"
    assert (command["text"], command["codec"], command["attempts"]) == (
        "getinfo",
        12,
        0,
    )
    assert command["max_attempts"] == 3
    # expires_at is taken when the request arrives, created_at when it is
    # stored: the same millisecond, or one or two later.
    assert 599_000 <= command["expires_at"] - command["created_at"] <= 600_000
    assert [h["state"] for h in command["history"]] == ["queued"]
    assert sync_redis.lrange(KEYS.command_queue(IMEI), 0, -1) == [command["id"]]
    assert (
        sync_redis.zscore(KEYS.command_log(IMEI), command["id"])
        == command["created_at"]
    )
    stored = sync_redis.hgetall(KEYS.command(IMEI, command["id"]))
    assert (stored["state"], stored["text"]) == ("queued", "getinfo")
    wake = None
    for _ in range(20):
        wake = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if wake is not None:
            break
    assert wake is not None and json.loads(wake["data"]) == {
        "type": "command",
        "imei": IMEI,
    }
    pubsub.close()


async def test_binary_payload_is_queued_as_hex_with_codec_14(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    response = await queue(api, {"payload_hex": "010300010015D5C5", "codec": 14})

    command = response.json()
    assert response.status_code == 201
    assert (command["payload_hex"], command["text"], command["codec"]) == (
        "010300010015d5c5", None, 14,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x" * 1025}, "text"),
        ({"text": "getinfo\x01"}, "text"),
        ({"text": "caf\u00e9"}, "text"),
        ({"text": ""}, "text"),
        ({"payload_hex": "abc"}, "payload_hex"),
        ({"text": "getinfo", "codec": 13}, "codec"),
        ({"text": "getinfo", "max_attempts": 11}, "max_attempts"),
        ({"text": "getinfo", "expires_in_s": 0}, "expires_in_s"),
    ],
)
async def test_invalid_command_is_422_naming_the_field(
    api: httpx.AsyncClient, sync_redis: redis.Redis, body: dict[str, Any], field: str
) -> None:
    response = await queue(api, body)

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["details"][0]["loc"][0] == "body"
    assert error["details"][0]["loc"][-1] == field
    assert sync_redis.llen(KEYS.command_queue(IMEI)) == 0


@pytest.mark.parametrize(
    ("body", "complaint"),
    [({"text": "a", "payload_hex": "00"}, "extra_forbidden"), ({}, "missing")],
)
async def test_command_needs_exactly_one_of_text_and_payload(
    api: httpx.AsyncClient, body: dict[str, Any], complaint: str
) -> None:
    response = await queue(api, body)

    assert response.status_code == 422
    assert error_of(response)["details"][0]["type"] == complaint


async def test_command_can_be_read_listed_and_cancelled_once(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    first = (await queue(api, {"text": "getver"})).json()
    await asyncio.sleep(0.002)  # a later millisecond: a defined list order
    second = (await queue(api, {"text": "getinfo"})).json()

    got = await api.get(f"{URL}/{first['id']}", headers=READ)
    listed = (await api.get(URL, headers=READ)).json()
    cancelled = await api.post(f"{URL}/{first['id']}/cancel", headers=COMMANDS)
    again = await api.post(f"{URL}/{first['id']}/cancel", headers=COMMANDS)

    assert got.json()["text"] == "getver"
    assert [c["id"] for c in listed["items"]] == [second["id"], first["id"]]
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert [h["state"] for h in cancelled.json()["history"]] == ["queued", "cancelled"]
    assert sync_redis.lrange(KEYS.command_queue(IMEI), 0, -1) == [second["id"]]
    assert again.status_code == 409
    assert error_of(again)["code"] == "invalid_state"
    assert error_of(again)["details"] == {"state": "cancelled"}


async def test_sent_command_cannot_be_cancelled(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    command = (await queue(api, {"text": "getver"})).json()
    sync_redis.hset(KEYS.command(IMEI, command["id"]), "state", "sent")

    response = await api.post(f"{URL}/{command['id']}/cancel", headers=COMMANDS)

    assert response.status_code == 409
    assert error_of(response)["details"] == {"state": "sent"}


async def test_unknown_command_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{URL}/{'0' * 32}", headers=READ)

    assert response.status_code == 404
    assert error_of(response)["code"] == "command_not_found"


async def test_queued_command_past_its_expiry_reads_as_expired(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    command = (await queue(api, {"text": "getver", "expires_in_s": 1})).json()
    sync_redis.hset(
        KEYS.command(IMEI, command["id"]), "expires_at", command["created_at"]
    )

    read = (await api.get(f"{URL}/{command['id']}", headers=READ)).json()

    assert read["state"] == "expired"
    assert read["history"][-1]["detail"] == "not delivered before it expired"
    assert sync_redis.llen(KEYS.command_queue(IMEI)) == 0


async def test_same_idempotency_key_returns_the_same_command(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    first = await queue(api, {"text": "getinfo"}, **{"Idempotency-Key": "order-17"})
    replay = await queue(api, {"text": "getinfo"}, **{"Idempotency-Key": "order-17"})
    other = await queue(api, {"text": "getver"}, **{"Idempotency-Key": "order-17"})

    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["idempotency_key"] == "order-17"
    assert sync_redis.llen(KEYS.command_queue(IMEI)) == 1
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_conflict"
    assert error_of(other)["details"] == {"id": first.json()["id"]}


async def test_rate_limit_refuses_with_429_and_retry_after(
    make_settings: Callable[..., ApiSettings], sync_redis: redis.Redis
) -> None:
    settings = make_settings(api_command_rate_limit=3, api_command_rate_window_s=30)
    async for api in client_for(settings):
        statuses = [
            (await queue(api, {"text": f"getio {n}"})).status_code for n in range(3)
        ]
        refused = await queue(api, {"text": "getio 3"})
        other_device = await api.post(
            "/v1/devices/356307042441021/commands", json={"text": "getver"},
            headers=COMMANDS,
        )  # fmt: skip

    assert statuses == [201, 201, 201]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert error_of(refused)["code"] == "rate_limited"
    assert other_device.status_code == 201
    assert sync_redis.llen(KEYS.command_queue(IMEI)) == 3


async def test_full_queue_refuses_with_409(
    make_settings: Callable[..., ApiSettings],
) -> None:
    async for api in client_for(make_settings(api_command_queue_max=2)):
        for n in range(2):
            assert (await queue(api, {"text": f"getio {n}"})).status_code == 201
        refused = await queue(api, {"text": "getio 2"})

    assert refused.status_code == 409
    assert error_of(refused)["code"] == "queue_full"


async def test_command_pages_cover_every_command_once(api: httpx.AsyncClient) -> None:
    ids = [(await queue(api, {"text": f"getio {n}"})).json()["id"] for n in range(5)]
    await asyncio.sleep(0)

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get(URL, params=params, headers=READ)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == sorted(ids) and len(seen) == 5
