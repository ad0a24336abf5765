"""``records_stored`` and ``duplicates`` of devices the real ingest wrote.

A gateway (``trackgate ingest``) and the API (``trackgate api``) run as
processes on one Redis; simulated devices log in and send packets, and the
counters are read over HTTP from the status and from the list.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
import redis

from tests.api.conftest import READ
from tests.api.served import ApiProcess
from tests.support.servers import IngestProcess
from trackgate.core.keys import Keys
from trackgate.protocol import encode_imei
from trackgate.sim import SimDevice

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYS = Keys()
HOST = "127.0.0.1"
A, B, C = "356307042441013", "356307042441021", "356307042441039"


async def status(api: ApiProcess, imei: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=api.url, headers=READ) as client:
        response = await client.get(f"/v1/devices/{imei}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(api: ApiProcess) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=api.url, headers=READ) as client:
        response = await client.get("/v1/devices")
    assert response.status_code == 200, response.text
    return {item["imei"]: item for item in response.json()["items"]}


def counters(device: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (device["records_received"], device["records_stored"], device["duplicates"])


async def test_device_without_resends_has_zero_duplicates_not_null(
    gateway: IngestProcess, served: ApiProcess, redis_url: str
) -> None:
    device = SimDevice.with_records(A, 2, 3)
    await device.run(HOST, gateway.port, deadline=time.monotonic() + 30)

    assert device.stats.records_acked == 6
    assert counters(await status(served, A)) == (6, 6, 0)
    assert counters((await listed(served))[A]) == (6, 6, 0)


async def test_resent_packet_counts_as_duplicates(
    gateway: IngestProcess, served: ApiProcess, redis_url: str
) -> None:
    template = SimDevice.with_records(B, 1, 4)
    # The same packet twice, as a device that missed the first ACK sends it.
    device = SimDevice(B, [template.packets[0], template.packets[0]])
    await device.run(HOST, gateway.port, deadline=time.monotonic() + 30)

    assert device.stats.records_acked == 8
    assert counters(await status(served, B)) == (8, 4, 4)
    assert counters((await listed(served))[B]) == (8, 4, 4)


async def test_device_that_never_sent_a_record_counts_zeros(
    gateway: IngestProcess, served: ApiProcess, redis_url: str
) -> None:
    # A login and nothing else: the gateway knows the device, no record.
    with socket.create_connection((HOST, gateway.port), timeout=5) as sock:
        sock.sendall(encode_imei(C))
        assert sock.recv(1) == b"\x01"
        deadline = time.monotonic() + 10
        while not redis.Redis.from_url(redis_url).exists(KEYS.device(C)):
            assert time.monotonic() < deadline, "the login was not recorded"
            await asyncio.sleep(0.05)

        device = await status(served, C)
        assert device["connected"] is True
        assert counters(device) == (0, 0, 0)
        assert counters((await listed(served))[C]) == (0, 0, 0)


async def test_expired_counters_are_null_not_zero(
    gateway: IngestProcess, served: ApiProcess, redis_url: str
) -> None:
    device = SimDevice.with_records(A, 1, 2)
    await device.run(HOST, gateway.port, deadline=time.monotonic() + 30)
    # What the dedup hash's expiry (a week after the last packet) does.
    redis.Redis.from_url(redis_url).delete(KEYS.dedup(A))

    assert counters(await status(served, A)) == (2, None, None)
    assert counters((await listed(served))[A]) == (2, None, None)
