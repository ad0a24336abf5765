"""A command queued for a tracker that never connected (provisioning).

The API accepts it (201), keeps answering 404 for the device's status
until the device logs in, lists and shows the command meanwhile, and the
gateway delivers it at the device's first login. Real processes: the API,
the gateway and a simulated device on real sockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.api.conftest import COMMANDS, READ, error_of
from tests.api.served import ApiProcess
from tests.support.servers import IngestProcess
from trackgate.sim import SimDevice

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOST = "127.0.0.1"
NEW = "356307042441047"


async def test_command_for_an_unknown_device_waits_for_its_first_login(
    gateway: IngestProcess, served: ApiProcess, redis_url: str
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as api:
        queued = await api.post(
            f"/v1/devices/{NEW}/commands", json={"text": "getver"}, headers=COMMANDS
        )
        device = await api.get(f"/v1/devices/{NEW}", headers=READ)
        listed = await api.get(f"/v1/devices/{NEW}/commands", headers=READ)
        command_id = queued.json()["id"]
        shown = await api.get(f"/v1/devices/{NEW}/commands/{command_id}", headers=READ)

        assert queued.status_code == 201
        assert queued.json()["state"] == "queued"
        assert device.status_code == 404
        assert error_of(device)["code"] == "device_not_found"
        assert listed.status_code == 200
        assert [c["id"] for c in listed.json()["items"]] == [command_id]
        assert shown.status_code == 200
        assert shown.json()["state"] == "queued"

        # The tracker connects for the first time and gets the command.
        tracker = SimDevice.with_records(NEW, 1, 1, linger=10.0)
        run = asyncio.create_task(
            tracker.run(HOST, gateway.port, deadline=time.monotonic() + 30)
        )
        try:
            command = await until_settled(api, command_id)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        device = await api.get(f"/v1/devices/{NEW}", headers=READ)

    assert command["state"] == "answered"
    assert command["response"].startswith("Ver:")
    assert device.status_code == 200


async def test_unknown_device_command_can_be_cancelled(
    served: ApiProcess, redis_url: str
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as api:
        queued = await api.post(
            f"/v1/devices/{NEW}/commands", json={"text": "getinfo"}, headers=COMMANDS
        )
        command_id = queued.json()["id"]
        cancelled = await api.post(
            f"/v1/devices/{NEW}/commands/{command_id}/cancel", headers=COMMANDS
        )

    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"


async def until_settled(api: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        response = await api.get(
            f"/v1/devices/{NEW}/commands/{command_id}", headers=READ
        )
        command: dict[str, Any] = response.json()
        if command["state"] not in ("queued", "sent"):
            return command
        assert time.monotonic() < deadline, f"still {command['state']}"
        await asyncio.sleep(0.05)
