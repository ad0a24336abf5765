"""The bridge against real Redis, single server and cluster: jobs, acks, recovery."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bridge.streams import IMEI, U64_MAX, entry_fields, record, write_records
from tests.support.servers import RedisServer, free_port
from trackgate.bridge import (
    BridgeConfigError,
    BridgeSettings,
    BridgeStats,
    build_bridge,
)
from trackgate.core.keys import Keys
from trackgate.core.redisconn import is_cluster_url, sync_client

JOB = "App\\Jobs\\IngestRecord@handle"
#: IMEIs that fall on different shards of three.
IMEIS = ["356307042441013", "356307042441021", "863719061234567", "352093081452251"]
SHARDS = 3

#: Fields every payload must carry for Laravel's worker and failure handling.
PAYLOAD_FIELDS = {
    "uuid", "displayName", "job", "maxTries", "maxExceptions", "failOnTimeout",
    "backoff", "timeout", "retryUntil", "data", "createdAt", "delay", "id",
    "attempts",
}  # fmt: skip

# What Laravel's pop does to a payload, written here for the test: decode
# with cjson, add one attempt, encode again.
POP_REENCODE_LUA = """
local job = cjson.decode(ARGV[1])
job['attempts'] = job['attempts'] + 1
return cjson.encode(job)
"""


def bridge_settings(url: str, **overrides: Any) -> BridgeSettings:
    values: dict[str, Any] = {
        "redis_url": url, "stream_shards": SHARDS, "laravel_job": JOB,
        "bridge_consumer": "bridge-1", "bridge_stats_interval_s": 3600,
    }  # fmt: skip
    values.update(overrides)
    return BridgeSettings(**values)


async def drain(settings: BridgeSettings) -> BridgeStats:
    """Run the bridge until every shard has been read empty."""
    bridge = build_bridge(settings, stop_when_empty=True)
    try:
        return await asyncio.wait_for(bridge.run(), 30)
    finally:
        await bridge.aclose()


def queue_name(url: str) -> str:
    tag = "{default}" if is_cluster_url(url) else "default"
    return f"laravel_database_queues:{tag}"


def queued(url: str) -> list[dict[str, Any]]:
    client = sync_client(url)
    try:
        return [json.loads(p) for p in client.lrange(queue_name(url), 0, -1)]
    finally:
        client.close()


def pending_total(url: str, settings: BridgeSettings) -> int:
    client = sync_client(url)
    try:
        return sum(
            int(client.xpending(stream, settings.bridge_group)["pending"])
            for stream in settings.keys().all_records()
        )
    finally:
        client.close()


def write(url: str, records: list[dict[str, Any]], shards: int = SHARDS) -> list[str]:
    client = sync_client(url)
    try:
        return write_records(client, Keys(shards=shards), records)
    finally:
        client.close()


def expected_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as a job carries it: integers over 14 digits as strings."""
    io = {k: str(v) if isinstance(v, int) and v >= 10**14 else v
          for k, v in rec["io"].items()}  # fmt: skip
    return {**rec, "io": io}


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.05)


def test_test_devices_are_spread_over_several_shards() -> None:
    keys = bridge_settings("redis://x").keys()
    assert len({keys.shard_of(imei) for imei in IMEIS}) >= 2


async def test_every_record_becomes_one_job_with_exact_values(
    any_redis_url: str,
) -> None:
    records = [record(imei, n) for imei in IMEIS for n in range(5)]
    ids = write(any_redis_url, records)
    settings = bridge_settings(any_redis_url)

    stats = await drain(settings)

    jobs = queued(any_redis_url)
    assert stats.pushed == stats.acked == len(records) == len(jobs)
    assert pending_total(any_redis_url, settings) == 0
    client = sync_client(any_redis_url)
    assert client.llen(queue_name(any_redis_url) + ":notify") == len(records)
    client.close()

    # Entry ids are unique per stream only: shards may repeat them.
    keys = settings.keys()
    by_id = {(job["data"]["stream"], job["data"]["entry_id"]): job for job in jobs}
    written = [
        (keys.records_for(r["imei"]), i) for r, i in zip(records, ids, strict=True)
    ]
    assert set(by_id) == set(written)
    for where, rec in zip(written, records, strict=True):
        job = by_id[where]
        assert set(job) == PAYLOAD_FIELDS
        assert job["job"] == JOB
        assert job["displayName"] == "App\\Jobs\\IngestRecord"
        assert job["attempts"] == 0
        assert len(job["id"]) == 32
        assert job["data"]["record"] == expected_record(rec)
    assert by_id[written[0]]["data"]["record"]["io"]["78"] == str(U64_MAX)


async def test_records_of_one_device_keep_their_order(redis_url: str) -> None:
    records = [record(IMEI, n) for n in range(30)]
    write(redis_url, records)

    await drain(bridge_settings(redis_url, bridge_batch=7))

    stamps = [job["data"]["record"]["timestamp"] for job in queued(redis_url)]
    assert stamps == [rec["timestamp"] for rec in records]


async def test_payload_survives_laravel_pop_reencoding(any_redis_url: str) -> None:
    write(any_redis_url, [record(imei, 3) for imei in IMEIS])
    await drain(bridge_settings(any_redis_url))
    client = sync_client(any_redis_url)

    for job in queued(any_redis_url):
        raw = json.dumps(job)
        # Keys only route the script to the queue's node on a cluster.
        again = client.eval(POP_REENCODE_LUA, 1, queue_name(any_redis_url), raw)
        popped = json.loads(again)
        assert popped["attempts"] == 1
        assert popped["data"] == job["data"]
        assert popped["data"]["record"]["imei"] == job["data"]["record"]["imei"]
    client.close()


async def test_big_integers_sent_as_numbers_would_be_mangled(redis_url: str) -> None:
    client = sync_client(redis_url)
    again = client.eval(POP_REENCODE_LUA, 0, json.dumps({"attempts": 0, "v": U64_MAX}))
    client.close()
    assert json.loads(again)["v"] != U64_MAX


async def test_packet_mode_gives_one_job_per_packet(any_redis_url: str) -> None:
    packets = [
        [record(imei, n, received_at=1764780000000 + p) for n in range(4)]
        for imei in IMEIS[:2] for p in range(3)
    ]  # fmt: skip
    # Interleave the packets' records as concurrent ingest workers would.
    interleaved = [rec for group in zip(*packets, strict=True) for rec in group]
    write(any_redis_url, interleaved)

    stats = await drain(bridge_settings(any_redis_url, bridge_mode="packet"))

    jobs = queued(any_redis_url)
    assert stats.pushed == len(jobs) == len(packets)
    assert stats.acked == len(interleaved)
    for job in jobs:
        data = job["data"]
        assert len(data["records"]) == len(data["entry_ids"]) == 4
        assert {r["imei"] for r in data["records"]} == {data["imei"]}
        assert {r["received_at"] for r in data["records"]} == {data["received_at"]}
        assert [r["timestamp"] for r in data["records"]] == sorted(
            r["timestamp"] for r in data["records"]
        )


async def test_malformed_entry_is_dead_lettered_with_reason_and_acked(
    any_redis_url: str,
) -> None:
    settings = bridge_settings(any_redis_url)
    keys = settings.keys()
    bad = entry_fields(record(IMEI, 1))
    bad["latitude"] = "north"
    client = sync_client(any_redis_url)
    client.xadd(keys.records_for(IMEI), entry_fields(record(IMEI, 0)))
    bad_id = client.xadd(keys.records_for(IMEI), bad).decode()

    stats = await drain(settings)

    assert stats.pushed == 1 and stats.dead_lettered == 1 and stats.acked == 2
    assert pending_total(any_redis_url, settings) == 0
    dead = client.xrange(keys.deadletter(keys.shard_of(IMEI)))
    client.close()
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["source_id"] == bad_id
    assert fields["latitude"] == "north"
    assert "latitude" in fields["reason"] and "north" in fields["reason"]
    assert fields["imei"] == IMEI


async def test_entries_left_pending_by_a_crash_are_pushed_on_restart(
    any_redis_url: str,
) -> None:
    settings = bridge_settings(any_redis_url, stream_shards=1)
    ids = write(any_redis_url, [record(IMEI, n) for n in range(5)], shards=1)
    stream = settings.keys().records(0)
    client = sync_client(any_redis_url)
    # The same consumer read them, then died before pushing or acking.
    client.xgroup_create(stream, settings.bridge_group, id="0")
    client.xreadgroup(settings.bridge_group, "bridge-1", {stream: ">"}, count=10)
    client.close()
    assert pending_total(any_redis_url, settings) == 5

    stats = await drain(settings)

    assert sorted(j["data"]["entry_id"] for j in queued(any_redis_url)) == sorted(ids)
    assert stats.acked == 5
    assert pending_total(any_redis_url, settings) == 0


async def test_stale_entries_of_a_dead_consumer_are_claimed(any_redis_url: str) -> None:
    settings = bridge_settings(any_redis_url, stream_shards=1, bridge_claim_idle_ms=200)
    ids = write(any_redis_url, [record(IMEI, n) for n in range(5)], shards=1)
    stream = settings.keys().records(0)
    client = sync_client(any_redis_url)
    client.xgroup_create(stream, settings.bridge_group, id="0")
    client.xreadgroup(settings.bridge_group, "dead-pod", {stream: ">"}, count=10)
    client.close()
    await asyncio.sleep(0.3)

    stats = await drain(settings)

    assert stats.claimed == 5
    assert sorted(j["data"]["entry_id"] for j in queued(any_redis_url)) == sorted(ids)
    assert pending_total(any_redis_url, settings) == 0


async def test_recent_entries_of_a_live_consumer_are_left_alone(redis_url: str) -> None:
    settings = bridge_settings(redis_url, stream_shards=1)
    write(redis_url, [record(IMEI, n) for n in range(3)], shards=1)
    stream = settings.keys().records(0)
    client = sync_client(redis_url)
    client.xgroup_create(stream, settings.bridge_group, id="0")
    client.xreadgroup(settings.bridge_group, "busy-pod", {stream: ">"}, count=10)
    client.close()

    stats = await drain(settings)

    assert stats.claimed == 0 and stats.pushed == 0
    assert pending_total(redis_url, settings) == 3


async def test_entry_delivered_too_often_is_dead_lettered(any_redis_url: str) -> None:
    settings = bridge_settings(any_redis_url, stream_shards=1, bridge_max_deliveries=3)
    write(any_redis_url, [record(IMEI, 0)], shards=1)
    stream = settings.keys().records(0)
    client = sync_client(any_redis_url)
    client.xgroup_create(stream, settings.bridge_group, id="0")
    # Read once, then three restarts of this consumer crashed on the entry.
    client.xreadgroup(settings.bridge_group, "bridge-1", {stream: ">"})
    for _ in range(3):
        client.xreadgroup(settings.bridge_group, "bridge-1", {stream: "0"})

    stats = await drain(settings)

    assert stats.dead_lettered == 1 and stats.pushed == 0
    dead = client.xrange(settings.keys().deadletter(0))
    client.close()
    assert dead[0][1][b"reason"] == b"delivered 5 times"
    assert pending_total(any_redis_url, settings) == 0


async def test_entries_stay_pending_until_laravel_redis_takes_the_push(
    redis_url: str,
) -> None:
    port = free_port()
    laravel_url = f"redis://127.0.0.1:{port}/0"
    settings = bridge_settings(
        redis_url, stream_shards=1, laravel_redis_url=laravel_url
    )
    write(redis_url, [record(IMEI, n) for n in range(4)], shards=1)
    bridge = build_bridge(settings)
    task = asyncio.create_task(bridge.run())
    try:
        await until(lambda: bridge.stats.push_failures >= 2)
        assert bridge.stats.acked == 0
        assert pending_total(redis_url, settings) == 4

        with tempfile.TemporaryDirectory() as workdir:
            laravel_redis = RedisServer(port, Path(workdir))
            laravel_redis.start()
            try:
                await until(lambda: bridge.stats.acked == 4)
                client = sync_client(laravel_url)
                assert client.llen("laravel_database_queues:default") == 4
                client.close()
            finally:
                laravel_redis.stop()
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 10)
        await bridge.aclose()
    assert pending_total(redis_url, settings) == 0


async def test_report_shows_the_group_lag(redis_url: str) -> None:
    settings = bridge_settings(redis_url, stream_shards=1)
    await drain(settings)
    write(redis_url, [record(IMEI, n) for n in range(6)], shards=1)
    bridge = build_bridge(settings)

    await bridge.report()
    stream = settings.keys().records(0)
    assert bridge.stats.lag[stream] == 6 and bridge.stats.pending[stream] == 0

    await bridge.aclose()
    await drain(settings)
    after = build_bridge(settings)
    await after.report()
    await after.aclose()
    assert after.stats.lag[stream] == 0


@pytest.mark.parametrize("mode", ["record", "packet"])
async def test_jobs_use_the_configured_prefix_and_queue(
    redis_url: str, mode: str
) -> None:
    settings = bridge_settings(
        redis_url, laravel_prefix="shop_", laravel_queue="gps", bridge_mode=mode
    )
    write(redis_url, [record(IMEI, 0)], shards=1)

    await drain(settings)

    client = sync_client(redis_url)
    assert client.llen("shop_queues:gps") == 1
    assert client.llen("shop_queues:gps:notify") == 1
    assert client.llen("laravel_database_queues:default") == 0
    client.close()


async def test_stale_entries_beyond_one_claim_scan_are_claimed(redis_url: str) -> None:
    # XAUTOCLAIM looks at 10 x COUNT pending entries per call: with a batch of
    # 2, the 5 stale entries sit behind 25 fresh ones, out of the first scan.
    settings = bridge_settings(
        redis_url, stream_shards=1, bridge_batch=2, bridge_claim_idle_ms=200
    )
    ids = write(redis_url, [record(IMEI, n) for n in range(30)], shards=1)
    stream = settings.keys().records(0)
    client = sync_client(redis_url)
    client.xgroup_create(stream, settings.bridge_group, id="0")
    client.xreadgroup(settings.bridge_group, "dead-pod", {stream: ">"}, count=30)
    await asyncio.sleep(0.3)
    client.xclaim(stream, settings.bridge_group, "busy-pod", 0, ids[:25])
    client.close()

    stats = await drain(settings)

    assert stats.claimed == 5
    assert [j["data"]["entry_id"] for j in queued(redis_url)] == ids[25:]


async def test_deleted_group_is_created_again(redis_url: str) -> None:
    settings = bridge_settings(redis_url, stream_shards=1, bridge_block_ms=200)
    stream = settings.keys().records(0)
    bridge = build_bridge(settings)
    task = asyncio.create_task(bridge.run())
    client = sync_client(redis_url)
    try:
        await until(lambda: bool(client.exists(stream)))
        client.xgroup_destroy(stream, settings.bridge_group)
        write(redis_url, [record(IMEI, n) for n in range(3)], shards=1)
        await until(lambda: bridge.stats.acked == 3)
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 10)
        await bridge.aclose()
    assert client.llen(queue_name(redis_url)) == 3
    client.close()


async def test_records_key_of_another_type_stops_the_bridge(redis_url: str) -> None:
    settings = bridge_settings(redis_url, stream_shards=1)
    client = sync_client(redis_url)
    client.set(settings.keys().records(0), "not a stream")
    client.close()
    bridge = build_bridge(settings)

    with pytest.raises(BridgeConfigError, match="is not a stream"):
        await asyncio.wait_for(bridge.run(), 10)
    await bridge.aclose()
