"""Latency of the API against a running gateway and fleet (not a test).

Run ``trackgate dev`` and ``trackgate simulate fleet`` first, then::

    python -m tests.api.latency --api http://127.0.0.1:8080 --token TOKEN

It reads the connected devices from the API, then measures (1) the status
endpoint, sequential requests over one keep-alive connection, timed by the
client; (2) commands from queueing to answered, by the server's own
timestamps (``answered_at - created_at``) and by the client (POST until a
poll sees ``answered``, 5 ms polls), one command at a time. Prints a JSON
summary. Mind the per-device rate limit (10 a minute by default): 100
commands need at least 10 connected devices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1], 2)}  # fmt: skip


async def _status(client: httpx.AsyncClient, imeis: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(f"/v1/devices/{random.choice(imeis)}")
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


async def _command(client: httpx.AsyncClient, imei: str) -> tuple[float, float]:
    started = time.perf_counter()
    created = await client.post(f"/v1/devices/{imei}/commands", json={"text": "getver"})
    created.raise_for_status()
    command_id = created.json()["id"]
    while True:
        command = (await client.get(f"/v1/devices/{imei}/commands/{command_id}")).json()
        if command["state"] not in ("queued", "sent"):
            break
        await asyncio.sleep(0.005)
    assert command["state"] == "answered", command
    client_ms = (time.perf_counter() - started) * 1000
    return float(command["answered_at"] - command["created_at"]), client_ms


async def main(api: str, token: str, requests: int, commands: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as client:
        page = (await client.get("/v1/devices?connected=true&limit=500")).json()
        imeis = [device["imei"] for device in page["items"]]
        assert imeis, "no connected devices: start trackgate simulate fleet first"
        await _status(client, imeis, 50)  # warm-up
        status = await _status(client, imeis, requests)
        server, seen = [], []
        # One command at a time, devices in turn: the client figure is then
        # one command's round trip, not the cost of many pollers at once.
        for n in range(commands):
            server_ms, client_ms = await _command(client, imeis[n % len(imeis)])
            server.append(server_ms)
            seen.append(client_ms)
    return {
        "devices_connected": len(imeis),
        "status_ms": _percentiles(status),
        "command_queued_to_answered_ms_server": _percentiles(server),
        "command_queued_to_answered_ms_client": _percentiles(seen),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--token", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args()
    summary = asyncio.run(main(args.api, args.token, args.requests, args.commands))
    print(json.dumps(summary, indent=2))
