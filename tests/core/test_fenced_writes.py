"""Script-free writes: a ledger in step with Redis, fenced by WATCH.

Every test runs against a real redis-server and checks what is in Redis
afterwards: stream entries, the dedup hash and the device hash.
"""

from __future__ import annotations

import dataclasses
import logging
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
from tests.support.servers import RedisServer, redis_server
from trackgate.core import store as store_module
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.core.store import (
    DedupLedger,
    PacketWrite,
    RecordStore,
    StoreError,
    pack_xadds,
    record_digest,
    xadd_commands,
)
from trackgate.protocol import AvlRecord, decode_tcp_frame, encode_avl_packet
from trackgate.sim import make_records

IMEI = "352093081452251"
KEYS = Keys()


def decoded(records: list[AvlRecord], codec: int = 0x8E) -> list[AvlRecord]:
    # Records carry their wire bytes (the dedup identity) only after decoding.
    packet = decode_tcp_frame(encode_avl_packet(codec, records))
    return list(packet.records)  # type: ignore[union-attr]


def write(
    records: list[AvlRecord],
    ledger: DedupLedger | None = None,
    received_at: int = 1_700_000_100_000,
    imei: str = IMEI,
) -> PacketWrite:
    return PacketWrite(
        imei=imei,
        codec=0x8E,
        records=records,
        received_at=received_at,
        transport="tcp",
        peer="127.0.0.1:1",
        ledger=ledger,
    )


async def calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def stream_timestamps(client: aioredis.Redis) -> list[int]:
    entries = await client.xrange(KEYS.records_for(IMEI))
    return [int(fields[b"timestamp"]) for _, fields in entries]


async def test_a_ledger_writes_without_a_script_after_its_first_packet(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(6, start_ms=1_700_000_000_000))
    ledger = DedupLedger()

    [first] = await store.write([write(records[:3], ledger)])
    assert first.stored == 3 and ledger.known
    assert ledger.window == await client.hget(KEYS.dedup(IMEI), "window")
    evalsha, exec_ = await calls(client, "evalsha"), await calls(client, "exec")

    [second] = await store.write([write(records[3:], ledger)])
    assert (second.stored, second.duplicates) == (3, 0)
    assert await calls(client, "evalsha") == evalsha  # no script ran
    assert await calls(client, "exec") == exec_ + 1
    dedup = await client.hgetall(KEYS.dedup(IMEI))
    assert dedup[b"window"] == ledger.window and len(ledger.window) == 6 * 8
    assert int(dedup[b"seq"]) == ledger.seq
    assert dedup[b"stored"] == b"6"
    assert await stream_timestamps(client) == [r.timestamp for r in records]
    assert 0 < await client.ttl(KEYS.dedup(IMEI)) <= store.dedup_ttl_s
    await client.aclose()


async def test_a_resend_without_a_script_is_acked_and_stored_once(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(8, start_ms=1_700_000_000_000))
    ledger = DedupLedger()
    await store.write([write(records[:2], ledger)])
    await store.write([write(records[2:], ledger)])
    # The ACK was lost; the device regroups its records and sends again,
    # one of them twice.
    [again] = await store.write([write([*records[4:], records[5]], ledger)])
    assert (again.stored, again.duplicates, again.accepted) == (0, 5, 5)
    assert await client.xlen(KEYS.records_for(IMEI)) == 8
    assert await client.hget(KEYS.dedup(IMEI), "duplicates") == b"5"
    await client.aclose()


def device_state(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def state_after(
    url: str, packets: list[tuple[list[AvlRecord], int, bool]], with_ledger: bool
) -> tuple[Any, ...]:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    store = RecordStore(client, KEYS, dedup_window=8)
    ledger = DedupLedger() if with_ledger else None
    results = []
    for records, received_at, burst in packets:
        packet = dataclasses.replace(
            write(records, ledger, received_at=received_at), burst=burst
        )
        [result] = await store.write([packet])
        results.append((result.stored, result.duplicates))
    dedup = await client.hgetall(KEYS.dedup(IMEI))
    dedup.pop(b"seq", None)
    entries = await client.xrange(KEYS.records_for(IMEI))
    fields = [device_state(f) for _, f in entries]
    device = device_state(await client.hgetall(KEYS.device(IMEI)))
    await client.aclose()
    return results, dedup, fields, device


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 11), min_size=1, max_size=6),
            st.integers(0, 10**6),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_both_ways_of_writing_leave_the_same_state(
    redis_proc: RedisServer, picks: list[tuple[list[int], int, bool]]
) -> None:
    # Packets of records picked from twelve, in any order and repeated,
    # with a window of 8: resends, regrouped packets, older positions after
    # newer ones, digests pushed out of the window.
    pool = decoded(make_records(12, start_ms=1_700_000_000_000))
    packets = [
        ([pool[i] for i in chosen], 1_700_000_100_000 + at, burst)
        for chosen, at, burst in picks
    ]
    # Each run starts from an empty Redis (state_after flushes it).
    scripted = await state_after(redis_proc.url, packets, with_ledger=False)
    fenced = await state_after(redis_proc.url, packets, with_ledger=True)
    assert fenced == scripted


async def test_a_write_by_another_session_trips_the_fence(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(6, start_ms=1_700_000_000_000))
    mine, theirs = DedupLedger(), DedupLedger()
    await store.write([write(records[:2], mine)])
    # The device reconnected elsewhere and sent records 2 and 3 there.
    await store.write([write(records[2:4], theirs)])

    # This session, stale, sends record 3 again with record 4.
    [result] = await store.write([write(records[3:5], mine)])
    assert (result.stored, result.duplicates) == (1, 1)
    assert await stream_timestamps(client) == [r.timestamp for r in records[:5]]
    dedup = await client.hgetall(KEYS.dedup(IMEI))
    # The batch was refused through its fence key, then written by script.
    assert len(await client.keys(KEYS.fence("*"))) == 1
    # Written again by script, the ledger is in step again.
    assert mine.known and mine.seq == int(dedup[b"seq"])
    assert mine.window == dedup[b"window"]
    await client.aclose()


async def test_a_newer_position_written_meanwhile_is_never_replaced(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(6, start_ms=1_700_000_000_000))
    mine = DedupLedger()
    await store.write([write(records[:2], mine)])
    # Another session stores the newest record; then this one, stale,
    # stores an older one. The position must stay the newest.
    await store.write([write(records[5:], DedupLedger())])
    await store.write([write(records[2:3], mine)])
    device = await client.hgetall(KEYS.device(IMEI))
    assert device["last_timestamp"] == str(records[5].timestamp)
    assert device["last_latitude"] == repr(records[5].latitude)
    assert device["records_received"] == "4"
    await client.aclose()


async def test_a_lost_dedup_hash_trips_the_fence(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(4, start_ms=1_700_000_000_000))
    ledger = DedupLedger()
    await store.write([write(records[:2], ledger)])
    old_seq = ledger.seq
    await client.delete(KEYS.dedup(IMEI))  # a failover that lost it, say

    [result] = await store.write([write(records[2:], ledger)])
    assert result.stored == 2
    dedup = await client.hgetall(KEYS.dedup(IMEI))
    assert len(await client.keys(KEYS.fence("*"))) == 1
    # The hash was made again from a random start: never the old seq.
    assert ledger.seq == int(dedup[b"seq"]) != old_seq
    assert dedup[b"window"] == b"".join(record_digest(0x8E, r) for r in records[2:])
    await client.aclose()


async def test_two_sessions_of_one_device_in_one_batch_store_each_record_once(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RecordStore(client, KEYS)
    records = decoded(make_records(6, start_ms=1_700_000_000_000))
    old, new = DedupLedger(), DedupLedger()
    await store.write([write(records[:1], old)])
    await store.write([write(records[1:2], new)])
    # The old session (stale) and the new one send overlapping packets that
    # land in the same batch: one goes without a script, the other by script.
    first, second = await store.write(
        [write(records[2:4], old), write(records[3:5], new)]
    )
    assert first.accepted == 2 and second.accepted == 2
    assert first.stored + second.stored == 3
    assert first.duplicates + second.duplicates == 1
    # Stream order is write order; what counts is each record once.
    assert sorted(await stream_timestamps(client)) == [r.timestamp for r in records[:5]]
    await client.aclose()


async def test_many_devices_without_a_script_in_one_batch(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(shards=3)
    store = RecordStore(client, keys)
    imeis = [f"35209308145{n:04d}" for n in range(10)]
    ledgers = {imei: DedupLedger() for imei in imeis}
    for round_ in range(3):
        batch = [
            write(
                decoded(make_records(4, start_ms=1_700_000_000_000 + round_ * 10_000,
                                     seed=n)),
                ledgers[imei],
                imei=imei,
            )
            for n, imei in enumerate(imeis)
        ]  # fmt: skip
        results = await store.write(batch)
        assert [r.stored for r in results] == [4] * 10
    lengths = [await client.xlen(k) for k in keys.all_records()]
    assert sum(lengths) == 120
    for imei in imeis:
        assert int(await client.hget(keys.dedup(imei), "seq")) == ledgers[imei].seq
    await client.aclose()


async def test_an_unknown_outcome_empties_the_ledger() -> None:
    with redis_server() as server:
        assert server.process is not None
        client = async_client(server.url, socket_timeout=0.5)
        store = RecordStore(client, KEYS)
        records = decoded(make_records(4, start_ms=1_700_000_000_000))
        ledger = DedupLedger()
        await store.write([write(records[:2], ledger)])
        assert ledger.known

        server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreError):
                await store.write([write(records[2:], ledger)])
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert not ledger.known

        # Redis may have applied the abandoned batch on waking: the resend
        # goes by script, is ACKed in full and stored once.
        [again] = await store.write([write(records[2:], ledger)])
        assert again.accepted == 2 and ledger.known
        assert await client.xlen(KEYS.records_for(IMEI)) == 4
        await client.aclose()


async def test_a_fence_redis_refuses_turns_script_free_writes_off(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    # A user that may run stored scripts but not EVAL: the fence fails.
    await admin.acl_setuser(
        "noeval", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-eval"],
    )  # fmt: skip
    client = aioredis.Redis.from_url(redis_url.replace("//", "//noeval:pw@"))
    store = RecordStore(client, KEYS)
    records = decoded(make_records(6, start_ms=1_700_000_000_000))
    ledger = DedupLedger()
    await store.write([write(records[:2], ledger)])
    with caplog.at_level(logging.ERROR, logger="trackgate.store"):
        [unchecked] = await store.write([write(records[2:4], ledger)])
    # Applied without the check: stored, but nothing is trusted after it.
    assert unchecked.stored == 2 and not ledger.known
    assert not store.fenced_writes
    assert "script-free writes disabled" in caplog.text
    [later] = await store.write([write(records[3:], ledger)])
    assert (later.stored, later.duplicates) == (2, 1)
    assert await client.xlen(KEYS.records_for(IMEI)) == 6
    await admin.acl_deluser("noeval")
    await client.aclose()
    await admin.aclose()


async def test_replies_are_read_straight_from_hiredis(redis_url: str) -> None:
    # The batch reader uses redis-py's hiredis parser directly; if redis-py
    # changes those internals the store still works, slowly: catch it here.
    client = async_client(redis_url)
    assert store_module._HiredisParser is not None
    connection = await client.connection_pool.get_connection()  # type: ignore[union-attr]
    try:
        assert type(connection._parser) is store_module._HiredisParser
    finally:
        await client.connection_pool.release(connection)  # type: ignore[union-attr]
    await client.aclose()


def packers() -> list[Any]:
    assert store_module._compiled_pack_xadds is not None, "the packer was not built"
    return [store_module._compiled_pack_xadds, None]


@pytest.mark.parametrize("packer", packers(), ids=["compiled", "python"])
@settings(max_examples=150, deadline=None)
@given(gen.packets(), st.data())
def test_packed_xadds_are_what_hiredis_packs(
    packer: Any, drawn: tuple[int, list[AvlRecord], dict[str, int]], data: Any
) -> None:
    codec, records, widths = drawn
    frame = decode_tcp_frame(encode_avl_packet(codec, records, io_widths=widths))
    records = list(frame.records)  # type: ignore[union-attr]
    # A window holding some of the packet's digests, at 8-byte slots, and
    # one straddling two slots, which must not count.
    digests = [record_digest(codec, r) for r in records]
    known = data.draw(st.lists(st.sampled_from(digests))) if digests else []
    window = b"".join(known) + (digests[0][4:] + digests[0][:4] if digests else b"")
    packet = PacketWrite(IMEI, codec, records, 1_700_000_000_000, "tcp", "x:1")
    stream = KEYS.records_for(IMEI)

    commands, new, duplicates = xadd_commands(stream, packet, window)
    with patch.object(store_module, "_compiled_pack_xadds", packer):
        packed = pack_xadds(stream, packet, window)
    assert packed == (
        b"".join(hiredis.pack_command(c) for c in commands),
        new,
        duplicates,
    )
    assert duplicates == sum(
        1 for n, d in enumerate(digests) if d in known or d in digests[:n]
    )


async def test_the_gateway_writes_without_scripts(redis_url: str) -> None:
    """Through a real ingest service: after its login packet, a device's
    packets are written by MULTI/EXEC, not by the store script."""
    from tests.support.servers import ingest_process
    from trackgate.sim import SimDevice

    client = aioredis.Redis.from_url(redis_url)
    with ingest_process(redis_url) as gateway:
        device = SimDevice.with_records(IMEI, 5, 4, codec=0x8E)
        started = time.monotonic()
        await device.run("127.0.0.1", gateway.port)
        assert time.monotonic() - started < 30
    assert await client.xlen(KEYS.records_for(IMEI)) == 20
    stats = await client.info("commandstats")
    assert int(stats["cmdstat_exec"]["calls"]) >= 4
    await client.aclose()


def test_records_of_another_class_pack_the_same() -> None:
    # The compiled packer reads AvlRecord's slots directly; any other object
    # with the same attributes goes through getattr, to the same bytes.
    class Plain:
        def __init__(self, record: AvlRecord) -> None:
            for name in AvlRecord.__slots__:
                setattr(self, name, getattr(record, name))

    records = decoded(make_records(3, start_ms=1_700_000_000_000))
    stream = KEYS.records_for(IMEI)
    slotted = pack_xadds(stream, write(records), b"")
    plain = pack_xadds(stream, write([Plain(r) for r in records]), b"")  # type: ignore[misc]
    assert plain == slotted
    assert slotted[0] == b"".join(
        hiredis.pack_command(c) for c in xadd_commands(stream, write(records), b"")[0]
    )
