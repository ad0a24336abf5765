"""Bearer tokens: missing, unknown, too small a scope, rotated, malformed."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import COMMANDS, READ, client_for, error_of
from trackgate.api.settings import ApiSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

IMEI = "356307042441013"


async def test_request_without_token_gets_401_with_a_bearer_challenge(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/v1/devices")

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthorized"


async def test_unknown_token_gets_401_invalid_token(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/v1/devices", headers={"Authorization": "Bearer not-a-token-at-all-xxxx"}
    )

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert error_of(response)["code"] == "invalid_token"


async def test_basic_auth_header_is_not_a_bearer_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/devices", headers={"Authorization": "Basic abc"})

    assert response.status_code == 401


async def test_read_token_cannot_queue_a_command(api: httpx.AsyncClient) -> None:
    response = await api.post(
        f"/v1/devices/{IMEI}/commands", json={"text": "getinfo"}, headers=READ
    )

    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "insufficient_scope"
    assert error["details"] == {"required": "commands"}


async def test_commands_token_also_reads(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/devices", headers=COMMANDS)

    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_health_readiness_and_metrics_need_no_token(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    await api.get("/v1/devices")  # one refused request, to be counted
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert 'trackgate_api_auth_failures_total{reason="missing"}' in metrics.text
    assert 'route="/v1/devices",status="401"' in metrics.text


async def test_metrics_need_a_read_token_when_not_public(
    make_settings: Callable[..., ApiSettings],
) -> None:
    async for client in client_for(make_settings(api_metrics_public=False)):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=READ)).status_code == 200


async def test_readiness_is_503_when_redis_is_unreachable(
    make_settings: Callable[..., ApiSettings],
) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    async for client in client_for(settings):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert error_of(ready)["code"] == "redis_unavailable"
        devices = await client.get("/v1/devices", headers=READ)
        assert devices.status_code == 503
        assert error_of(devices)["code"] == "redis_unavailable"
        assert (await client.get("/healthz")).status_code == 200


async def test_rotated_token_file_takes_effect_without_restart(
    api: httpx.AsyncClient, tokens_file: Path
) -> None:
    new_token = "rotated-0123456789abcdef"
    tokens_file.write_text(f"read {new_token}\n")
    # The file is checked at most once a second; make the change visible.
    later = time.time() + 5
    os.utime(tokens_file, (later, later))
    await asyncio.sleep(1.05)

    rotated = await api.get(
        "/v1/devices", headers={"Authorization": f"Bearer {new_token}"}
    )
    old = await api.get("/v1/devices", headers=READ)

    assert rotated.status_code == 200
    assert old.status_code == 401
