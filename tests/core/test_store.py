"""The record store against a real Redis: dedup, positions, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import signal
import time
from typing import Any
from unittest.mock import patch

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol import strategies as gen
from tests.support.servers import redis_server
from trackgate.core import store as store_module
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.core.store import (
    CLUSTER_CONCURRENCY,
    PacketWrite,
    RecordStore,
    Retention,
    StoreError,
    pack_store_records,
    record_fields,
    store_records_args,
    stream_health,
)
from trackgate.protocol import AvlRecord, decode_tcp_frame, encode_avl_packet
from trackgate.sim import make_records

IMEI = "352093081452251"


def packet(records: list, received_at: int | None = None) -> PacketWrite:
    # Records carry their wire bytes (the dedup identity) only after decoding.
    decoded = decode_tcp_frame(encode_avl_packet(0x8E, records))
    return PacketWrite(
        imei=IMEI,
        codec=0x8E,
        records=decoded.records,  # type: ignore[union-attr]
        received_at=received_at or int(time.time() * 1000),
        transport="tcp",
        peer="127.0.0.1:1",
    )


async def test_a_resend_in_another_packet_shape_is_still_deduplicated(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, Keys())
    records = make_records(6, start_ms=1_700_000_000_000)
    [first] = await store.write([packet(records[:4])])
    # The device regrouped: two old records and two new ones.
    [second] = await store.write([packet(records[2:])])
    assert (first.stored, first.duplicates) == (4, 0)
    assert (second.stored, second.duplicates) == (2, 2)
    assert second.accepted == 4
    assert await client.xlen(Keys().records_for(IMEI)) == 6
    await client.aclose()


async def test_the_dedup_window_forgets_the_oldest_digests(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, Keys(), dedup_window=16)
    records = make_records(40, start_ms=1_700_000_000_000)
    await store.write([packet(records[:20]), packet(records[20:])])
    window = await client.hget(Keys().dedup(IMEI), "window")
    assert window is not None and len(window) == 16 * 8
    [recent] = await store.write([packet(records[-16:])])
    assert recent.duplicates == 16
    [old] = await store.write([packet(records[:1])])
    # Older than the window: stored again. The window is sized so that a
    # device's real resends stay inside it (docs/ingest.md).
    assert old.stored == 1
    await client.aclose()


async def test_many_devices_in_one_batch_each_get_their_result(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, Keys(shards=4))
    batch = []
    for n in range(12):
        write = packet(make_records(3, start_ms=1_700_000_000_000, seed=n))
        write.imei = f"35209308145{n:04d}"
        batch.append(write)
    results = await store.write(batch)
    assert [r.stored for r in results] == [3] * 12
    lengths = [await client.xlen(k) for k in Keys(shards=4).all_records()]
    assert sum(lengths) == 36 and sum(1 for n in lengths if n) > 1
    await client.aclose()


async def test_age_retention_trims_and_warns_before_unread_entries_go(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys()
    stream = keys.records_for(IMEI)
    now = int(time.time() * 1000)
    day = 86_400_000
    for age_days in (10, 6, 5):
        await client.xadd(stream, {"imei": IMEI}, id=f"{now - age_days * day}-0")
    await client.xgroup_create(stream, "laravel", id="0")
    retention = Retention(strategy="age", max_age_s=7 * 86400, approximate=False)

    [report] = await stream_health(client, keys, retention, now_ms=now)
    [group] = report.groups
    assert report.length == 3 and group.lag == 3
    # Nothing read yet: the entry from 10 days ago is already past retention.
    assert group.at_risk and group.headroom is not None and group.headroom < 0

    store = RecordStore(client, keys, retention=retention)
    await store.write([packet(make_records(1))])
    remaining = [entry_id for entry_id, _ in await client.xrange(stream)]
    assert len(remaining) == 3  # the 10-day-old entry went, unread
    await client.aclose()


async def test_a_caught_up_group_is_not_at_risk(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys()
    stream = keys.records_for(IMEI)
    await client.xadd(stream, {"imei": IMEI})
    await client.xgroup_create(stream, "bridge", id="$")
    [report] = await stream_health(client, keys, Retention())
    assert report.groups[0].lag == 0 and not report.groups[0].at_risk
    await client.aclose()


async def test_wait_aof_the_server_cannot_honour_is_refused_up_front(
    redis_url: str,
) -> None:
    # The test server runs without AOF (and Redis 7.0 has no WAITAOF at
    # all): either way a local fsync cannot be promised.
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, Keys(), wait_aof=(1, 0, 100))
    try:
        await store.check_server()
    except StoreError as exc:
        assert "WAITAOF" in str(exc) and "7.2+" in str(exc)
    else:
        raise AssertionError("WAITAOF with numlocal=1 accepted without AOF")
    # A write that asks for it anyway is not reported as stored.
    [result] = await store.write([packet(make_records(1))])
    assert not result.ok and "WAITAOF" in (result.error or "")
    await client.aclose()


COMMAND = ("EVALSHA", "f" * 40, 2, "tg:records:{s3}", "tg:dedup:{s3}:x", "4096",
           "604800", "minid", "1700000000000-0", "1")  # fmt: skip


def packers() -> list[Any]:
    assert store_module._compiled_pack_entries is not None, "the packer was not built"
    return [store_module._compiled_pack_entries, None]


@pytest.mark.parametrize("packer", packers(), ids=["compiled", "python"])
@settings(max_examples=150, deadline=None)
@given(gen.packets(), st.sampled_from(["tcp", "udp"]), st.integers(0, 2**42))
def test_the_packed_store_command_is_what_hiredis_packs(
    packer: Any,
    drawn: tuple[int, list[AvlRecord], dict[str, int]],
    transport: str,
    at: int,
) -> None:
    codec, records, widths = drawn
    decoded = decode_tcp_frame(encode_avl_packet(codec, records, io_widths=widths))
    write = PacketWrite(
        imei=IMEI,
        codec=codec,
        records=decoded.records,  # type: ignore[union-attr]
        received_at=at,
        transport=transport,
        peer="10.0.0.1:4000",
    )
    expected = hiredis.pack_command((*COMMAND, *store_records_args(write)))
    with patch.object(store_module, "_compiled_pack_entries", packer):
        assert pack_store_records(COMMAND, write) == expected


# Records built by hand may hold what no decoder produces: the compiled
# packer renders what it can exactly and leaves the rest to orjson.
odd_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    st.booleans(),
    st.floats(allow_nan=False),
)
odd_records = st.builds(
    AvlRecord,
    timestamp=st.integers(-(2**65), 2**65),
    priority=st.integers(-3, 300),
    longitude=st.floats(allow_nan=False),
    latitude=st.floats(allow_nan=False, allow_infinity=False),
    altitude=st.integers(-40_000, 40_000),
    angle=st.integers(0, 2**16),
    satellites=st.integers(0, 255),
    speed=st.integers(0, 2**16),
    event_id=st.integers(0, 2**16),
    io=st.dictionaries(st.text(max_size=4), odd_values, max_size=5),
    generation_type=st.none() | st.integers(0, 255),
)


@pytest.mark.parametrize("packer", packers(), ids=["compiled", "python"])
@settings(max_examples=300, deadline=None)
@given(st.lists(odd_records, max_size=4))
def test_unusual_values_pack_the_same(packer: Any, records: list[AvlRecord]) -> None:
    try:
        args = store_records_args(
            PacketWrite(IMEI, 0x8E, records, 1, "udp", "10.0.0.1:1")
        )
    except TypeError:  # orjson refuses the IO map: neither packer may succeed
        with pytest.raises(TypeError):
            pack_store_records(COMMAND, PacketWrite(IMEI, 0x8E, records, 1, "udp", ""))
        return
    write = PacketWrite(IMEI, 0x8E, records, 1, "udp", "10.0.0.1:1")
    with patch.object(store_module, "_compiled_pack_entries", packer):
        packed = pack_store_records(COMMAND, write)
    assert packed == hiredis.pack_command((*COMMAND, *args))


async def test_stored_entries_hold_exactly_the_record_fields(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = RecordStore(client, Keys())
    write = packet(
        make_records(3, start_ms=1_700_000_000_000), received_at=1_700_000_009_000
    )
    [result] = await store.write([write])
    entries = await client.xrange(Keys().records_for(IMEI))
    assert result.stored == 3
    assert [list(sum(fields.items(), ())) for _, fields in entries] == [
        record_fields(IMEI, 0x8E, r, "1700000009000", "tcp") for r in write.records
    ]
    assert json.loads(entries[0][1]["io"])["256"] == b"WVWZZZ1JZXW000001".hex()
    await client.aclose()


async def test_a_record_repeated_inside_one_packet_is_stored_once(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, Keys())
    one, two = make_records(2, start_ms=1_700_000_000_000)
    [result] = await store.write([packet([one, two, one])])
    assert (result.stored, result.duplicates) == (2, 1)
    assert await client.xlen(Keys().records_for(IMEI)) == 2
    [again] = await store.write([packet([two, one])])
    assert (again.stored, again.duplicates) == (0, 2)
    await client.aclose()


async def test_the_device_hash_keeps_the_newest_position_and_counts(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = RecordStore(client, Keys())
    records = make_records(6, start_ms=1_700_000_000_000)
    newer, older = packet(records[3:], 1_700_000_010_000), packet(records[:3])
    older = dataclasses.replace(older, received_at=1_700_000_020_000, burst=True)
    await store.write([newer])
    await store.write([older])
    device = await client.hgetall(Keys().device(IMEI))
    latest = records[5]
    assert device["last_timestamp"] == str(latest.timestamp)
    assert device["last_latitude"] == repr(latest.latitude)
    assert device["last_speed"] == str(latest.speed)
    # Lag and seen_at follow the last packet, old or not.
    assert device["last_lag_ms"] == str(1_700_000_020_000 - records[2].timestamp)
    assert device["seen_at"] == "1700000020000"
    assert device["records_received"] == "6"
    assert device["bursts_total"] == "1"
    assert device["imei"] == IMEI and device["transport"] == "tcp"
    await client.aclose()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=40))
def test_coordinates_pack_as_their_repr(wire_values: list[int]) -> None:
    # The compiled packer writes wire coordinates without float formatting;
    # the text must still be repr() of the decoded float, edges included.
    edges = [0, 1, -1, 999, -999, 1000, -1000, 10**7, -(10**7), 2**31 - 1, -(2**31)]
    values = [v / 1e7 for v in wire_values + edges]
    records = [
        AvlRecord(timestamp=1, priority=0, longitude=v, latitude=-v, altitude=0,
                  angle=0, satellites=0, speed=0, event_id=0, io={})
        for v in values
    ]  # fmt: skip
    write = PacketWrite(IMEI, 0x08, records, 1, "tcp", "10.0.0.1:1")
    packed = pack_store_records(COMMAND, write)
    assert packed == hiredis.pack_command((*COMMAND, *store_records_args(write)))
    assert (
        f"$9\r\nlongitude\r\n${len(repr(values[0]))}\r\n{values[0]!r}\r\n".encode()
        in packed
    )


async def test_a_frozen_redis_fails_the_batch_within_the_socket_timeout() -> None:
    with redis_server() as server:
        assert server.process is not None
        client = async_client(server.url, socket_timeout=0.5)
        store = RecordStore(client, Keys())
        write = packet(make_records(2, start_ms=1_700_000_000_000))
        assert (await store.write([write]))[0].stored == 2

        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="no reply from Redis within 0.5 s"):
                await store.write([write])
            assert 0.4 < time.monotonic() - started < 3
        finally:
            server.process.send_signal(signal.SIGCONT)

        # A fresh connection serves the resend: ACKed in full, stored once
        # (whether or not Redis ran the abandoned batch when it woke up).
        [again] = await store.write([write])
        assert again.accepted == 2
        assert await client.xlen(Keys().records_for(IMEI)) == 2
        await client.aclose()


async def test_concurrent_batches_fit_the_store_client_on_both_backends(
    any_redis_url: str,
) -> None:
    # Two batches in flight, as the writer's two lanes have them, on a
    # client with the pool the worker gives its store: nothing refused.
    client = async_client(any_redis_url, max_connections=CLUSTER_CONCURRENCY)
    store = RecordStore(client, Keys(shards=4))
    records = decode_tcp_frame(encode_avl_packet(0x08, make_records(20, codec=8)))
    batches = [
        [PacketWrite(str(356_307_040_000_000 + lane * 1000 + n), 0x08,
                     records.records, 1, "tcp", "x")  # type: ignore[union-attr]
         for n in range(120)]
        for lane in range(2)
    ]  # fmt: skip
    results = await asyncio.gather(*(store.write(b) for b in batches))
    assert [r.error for batch in results for r in batch] == [None] * 240
    assert sum(r.stored for batch in results for r in batch) == 240 * 20
    await client.aclose()


def test_the_compiled_digest_is_blake2b_at_every_length() -> None:
    from trackgate.core import _resp  # type: ignore[attr-defined]

    data = bytes(range(256)) * 5
    # Every length up to five blocks of 128 bytes: empty, partial, exact.
    for n in range(len(data) + 1):
        expected = hashlib.blake2b(data[:n], digest_size=8).digest()
        assert _resp.digest(data[:n]) == expected, n


async def test_batches_in_flight_share_one_connection_in_order(redis_url: str) -> None:
    # Batches of different sizes written back to back on the store's one
    # connection: each must get its own replies (a mix-up would swap counts).
    name = f"line-{secrets.token_hex(4)}"
    client = async_client(redis_url, client_name=name)
    store = RecordStore(client, Keys())
    batches = []
    for size in (1, 6, 2, 9):
        batch = []
        for n in range(size):
            write = packet(make_records(size, start_ms=1_700_000_000_000, seed=n))
            write.imei = f"35209308{size:02d}{n:05d}"
            batch.append(write)
        batches.append(batch)
    results = await asyncio.gather(*(store.write(b) for b in batches))
    assert [[r.stored for r in batch] for batch in results] == [
        [size] * size for size in (1, 6, 2, 9)
    ]
    ours = [c for c in await client.client_list() if c["name"] == name]
    assert store._line is not None
    # A batch ends with its ZADD of the device index: one connection ran them.
    assert sum(1 for c in ours if c["cmd"] == "zadd") == 1
    await store.close()
    await client.aclose()


async def test_a_failed_batch_fails_the_batches_behind_it() -> None:
    with redis_server() as server:
        assert server.process is not None
        client = async_client(server.url, socket_timeout=0.5)
        store = RecordStore(client, Keys())
        first = packet(make_records(2, start_ms=1_700_000_000_000))
        second = dataclasses.replace(
            packet(make_records(3, start_ms=1_700_000_100_000)), imei="352093081452252"
        )
        await store.write([first])
        server.process.send_signal(signal.SIGSTOP)
        try:
            outcomes = await asyncio.gather(
                store.write([first]), store.write([second]), return_exceptions=True
            )
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert [type(o) for o in outcomes] == [StoreError, StoreError]
        # A new connection; whatever Redis ran on waking is recognised.
        again = await store.write([first, second])
        assert [r.accepted for r in again] == [2, 3]
        assert await client.xlen(Keys().records_for(IMEI)) == 5
        await store.close()
        await client.aclose()
