"""Fault tests: every record a device sent is stored exactly once.

A fleet of simulated devices that behave like real ones (resend unACKed
packets, reconnect with backoff) runs while the gateway or Redis is killed
and restarted; afterwards the stream is audited record by record.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from tests.support.servers import IngestProcess, RedisServer, redis_server
from trackgate.core.keys import Keys
from trackgate.sim import SimDevice, imei_for

KEYS = Keys()
pytestmark = pytest.mark.slow


def fleet(devices: int, packets: int, records: int, first: int) -> list[SimDevice]:
    return [
        SimDevice.with_records(
            imei_for(first + i),
            packets,
            records,
            codec=0x8E,
            seed=i,
            response_timeout=3.0,
            reconnect_delays=(0.1, 0.2, 0.5),
            interval=0.05,
        )  # fmt: skip
        for i in range(devices)
    ]


def audit(redis_url: str, devices: list[SimDevice]) -> dict[str, int]:
    """Records sent vs stored: stored once, twice, or missing."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored: Counter[tuple[str, str]] = Counter()
    for stream in KEYS.all_records():
        for _id, fields in client.xrange(stream):
            stored[(fields["imei"], fields["timestamp"])] += 1
    client.close()
    sent = {
        (d.imei, str(r.timestamp))
        for d in devices
        for _frame, recs in d.packets
        for r in recs
    }
    return {
        "sent": len(sent),
        "stored": sum(1 for key in sent if stored[key] >= 1),
        "duplicated": sum(1 for key in sent if stored[key] > 1),
        "lost": sum(1 for key in sent if stored[key] == 0),
        "acked": sum(d.stats.records_acked for d in devices),
        "resends": sum(d.stats.resends for d in devices),
    }


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    # Persistence on, so a stopped and restarted Redis keeps what it ACKed.
    with redis_server(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


async def test_kill_9_of_the_gateway_loses_and_duplicates_nothing(
    own_redis: RedisServer,
) -> None:
    ingest = IngestProcess(own_redis.url, store_timeout_s="5")
    await asyncio.to_thread(ingest.start)
    devices = fleet(20, 30, 4, first=1000)
    runs = asyncio.gather(
        *(d.run("127.0.0.1", ingest.port, deadline=None) for d in devices)
    )
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(ingest.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(ingest.start)
        await asyncio.wait_for(runs, timeout=120)
    finally:
        await asyncio.to_thread(ingest.stop)
    result = audit(own_redis.url, devices)
    print("kill -9:", json.dumps(result))
    assert result["sent"] == 20 * 30 * 4
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["stored"] == result["sent"]


async def test_redis_stop_and_start_mid_stream_loses_and_duplicates_nothing(
    own_redis: RedisServer,
) -> None:
    ingest = IngestProcess(own_redis.url, store_timeout_s="30")
    await asyncio.to_thread(ingest.start)
    devices = fleet(20, 30, 4, first=2000)
    runs = asyncio.gather(*(d.run("127.0.0.1", ingest.port) for d in devices))
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(2.0)
        # Not ready while Redis is gone, yet still accepting connections.
        assert ingest.readyz() == 503
        await asyncio.to_thread(own_redis.start)
        await asyncio.wait_for(runs, timeout=120)
        assert ingest.readyz() == 200
    finally:
        await asyncio.to_thread(ingest.stop)
    result = audit(own_redis.url, devices)
    print("redis stop/start:", json.dumps(result))
    assert result["sent"] == 20 * 30 * 4
    assert result["lost"] == 0
    assert result["duplicated"] == 0


async def test_sigterm_drains_and_exits_within_the_grace_period(
    redis_proc: RedisServer, redis_url: str
) -> None:
    ingest = IngestProcess(redis_url, drain_seconds="3")
    await asyncio.to_thread(ingest.start)
    devices = fleet(10, 1000, 2, first=3000)
    runs = asyncio.gather(
        *(d.run("127.0.0.1", ingest.port, deadline=None) for d in devices),
        return_exceptions=True,
    )
    await asyncio.sleep(1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = await asyncio.to_thread(ingest.stop, 15)
    took = loop.time() - started
    runs.cancel()
    await asyncio.gather(runs, return_exceptions=True)
    assert code == 0
    assert took < 3 + 5
    result = audit(redis_url, devices)
    # Whatever was ACKed is stored; nothing twice.
    assert result["duplicated"] == 0
    acked = {(d.imei, str(ts)) for d in devices for ts in d.stats.acked_timestamps}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = {
        (f["imei"], f["timestamp"])
        for stream in KEYS.all_records()
        for _id, f in client.xrange(stream)
    }
    client.close()
    assert acked <= stored
    assert "worker stopped" in ingest.log()
