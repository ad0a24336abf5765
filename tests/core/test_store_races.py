"""The record store under races and faults: several workers and sessions
of one device, cancelled writes, killed connections, scripts flushed,
Redis paused, restarted, a MULTI refused, large batches.

Every test runs against a real redis-server and checks what is in Redis
afterwards: each record of each device exactly once in the stream once the
device has resent what was not ACKed, the dedup hash's `stored` equal to
the entries, and where nothing failed the counters exactly as the results
reported them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.servers import RedisServer, redis_server
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.core.store import (
    STORE_RECORDS_LUA,
    UPDATE_DEVICE_LUA,
    DedupLedger,
    PacketWrite,
    RecordStore,
    StoreError,
    WriteResult,
)
from trackgate.protocol import AvlRecord, decode_tcp_frame, encode_avl_packet
from trackgate.sim import make_records

KEYS = Keys()
START = 1_700_000_000_000


def decoded(records: list[AvlRecord], codec: int = 0x8E) -> list[AvlRecord]:
    # Records carry their wire bytes (the dedup identity) only after decoding.
    packet = decode_tcp_frame(encode_avl_packet(codec, records))
    return list(packet.records)  # type: ignore[union-attr]


def packet_of(
    imei: str, records: list[AvlRecord], ledger: DedupLedger | None = None
) -> PacketWrite:
    return PacketWrite(imei, 0x8E, records, START + 10**6, "tcp", "127.0.0.1:1",
                       ledger=ledger)  # fmt: skip


@dataclass
class Device:
    """A tracker: it resends what was not ACKed, from any of its sessions."""

    imei: str
    records: list[AvlRecord]
    sessions: list[DedupLedger]
    unacked: list[AvlRecord] = field(default_factory=list)
    #: stored, duplicates and records received, as the results reported them
    tally: list[int] = field(default_factory=lambda: [0, 0, 0])

    @classmethod
    def make(cls, n: int, count: int, sessions: int = 2) -> Device:
        records: list[AvlRecord] = []
        for chunk in range(0, count, 20):
            records += decoded(
                make_records(min(20, count - chunk), start_ms=START + chunk * 1000,
                             seed=n)
            )  # fmt: skip
        ledgers = [DedupLedger() for _ in range(sessions)]
        return cls(f"3520930814{n:05d}", records, ledgers, list(records))

    async def send(self, store: RecordStore, session: int, size: int) -> bool:
        """Sends the oldest unACKed records; True when they were ACKed."""
        chunk = self.unacked[:size]
        if not chunk:
            return True
        packet = packet_of(self.imei, chunk, self.sessions[session])
        try:
            [result] = await store.write([packet])
        except StoreError:
            return False
        if not result.ok:
            return False
        assert result.accepted == len(chunk)
        self.acked(chunk, result)
        return True

    def acked(self, chunk: list[AvlRecord], result: WriteResult) -> None:
        for record in chunk[: result.accepted]:
            if record in self.unacked:
                self.unacked.remove(record)
        self.tally[0] += result.stored
        self.tally[1] += result.duplicates
        self.tally[2] += len(chunk)

    async def drain(self, store: RecordStore) -> None:
        """The device reconnects and resends until everything is ACKed."""
        for _ in range(50):
            if not self.unacked:
                return
            await self.send(store, 0, 10)
        raise AssertionError(f"{self.imei}: {len(self.unacked)} records never ACKed")


async def check(client: aioredis.Redis, devices: list[Device], *, exact: bool) -> None:
    """Each device's records once in its stream; its counters right.

    ``exact``: no write failed, so the dedup counters and records_received
    are exactly what the results reported.
    """
    for device in devices:
        entries = await client.xrange(KEYS.records_for(device.imei))
        times = Counter(
            int(fields[b"timestamp"])
            for _, fields in entries
            if fields[b"imei"] == device.imei.encode()
        )
        assert times == Counter(r.timestamp for r in device.records), device.imei
        dedup = await client.hgetall(KEYS.dedup(device.imei))
        assert int(dedup[b"stored"]) == len(device.records)
        if exact:
            status = await client.hgetall(KEYS.device(device.imei))
            counted = [
                int(dedup[b"stored"]),
                int(dedup.get(b"duplicates", 0)),
                int(status[b"records_received"]),
            ]
            assert counted == device.tally, device.imei
            newest = max(r.timestamp for r in device.records)
            assert int(status[b"last_timestamp"]) == newest


def stores(url: str, count: int, **options: Any) -> list[RecordStore]:
    return [
        RecordStore(async_client(url, **options), KEYS, dedup_window=16)
        for _ in range(count)
    ]


async def close(workers: list[RecordStore]) -> None:
    for store in workers:
        await store.close()
        pool = store.client.connection_pool  # type: ignore[union-attr]
        # Every connection the store took is back in its pool.
        assert not pool._in_use_connections
        await store.client.aclose()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 1),  # worker
                st.integers(0, 1),  # session of the device
                st.integers(0, 1),  # device
                st.integers(1, 6),  # records in the packet
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=12,
    )
)
async def test_workers_and_sessions_of_a_device_interleaved_store_each_record_once(
    redis_proc: RedisServer, rounds: list[list[tuple[int, int, int, int]]]
) -> None:
    """Two workers (one connection each, batches pipelined on it), two
    sessions of each device with their own ledgers, packets of a round in
    flight together: ledgers in step write without a script, stale ones
    are refused by the fence. A window of 16 digests wraps many times."""
    client = aioredis.Redis.from_url(redis_proc.url)
    await client.flushall()
    workers = stores(redis_proc.url, 2)
    devices = [Device.make(n, 40) for n in range(2)]
    try:
        for sends in rounds:
            await asyncio.gather(*(
                devices[d].send(workers[w], s, size) for w, s, d, size in sends
            ))  # fmt: skip
        for device in devices:
            await device.drain(workers[0])
        await check(client, devices, exact=True)
    finally:
        await close(workers)
        await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
async def test_faults_in_the_middle_of_pipelined_batches_lose_and_duplicate_nothing(
    redis_url: str, seed: int
) -> None:
    """Three workers, three devices with two sessions each, writes in
    flight together; meanwhile connections are killed, the script cache is
    flushed, Redis is paused (briefly and past the batches' deadline) and
    write tasks are cancelled. Once each device has resent what was not
    ACKed, every record is stored exactly once."""
    rng = random.Random(seed)
    admin = aioredis.Redis.from_url(redis_url)
    workers = stores(redis_url, 3, socket_timeout=0.3)
    devices = [Device.make(n, 60) for n in range(3)]
    faults = Counter[str]()
    try:
        for _ in range(30):
            tasks = [
                asyncio.ensure_future(
                    rng.choice(devices).send(
                        rng.choice(workers), rng.randrange(2), rng.randint(1, 6)
                    )
                )
                for _ in range(rng.randint(2, 8))
            ]
            await asyncio.sleep(rng.random() * 0.002)
            fault = rng.choice(["kill", "flush", "pause", "stall", "cancel", "none"])
            faults[fault] += 1
            if fault == "kill":
                await admin.client_kill_filter(_type="normal", skipme=True)
            elif fault == "flush":
                await admin.script_flush()
            elif fault == "pause":
                await admin.execute_command("CLIENT", "PAUSE", 50, "WRITE")
            elif fault == "stall":  # past the deadline of the batches
                await admin.execute_command("CLIENT", "PAUSE", 400, "WRITE")
            elif fault == "cancel":
                rng.choice(tasks).cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the last pause is over
        for device in devices:
            await device.drain(workers[0])
        await check(admin, devices, exact=False)
        assert faults["kill"] and faults["flush"] and faults["cancel"]
    finally:
        await close(workers)
        await admin.aclose()


async def test_scripts_flushed_between_batches_count_each_record_once(
    redis_url: str,
) -> None:
    """SCRIPT FLUSH at random moments while two workers write: a packet
    whose two scripts met different caches (one ran, one was refused) runs
    only the refused one again, so records_received and the position are
    right and nothing is counted twice."""
    rng = random.Random(7)
    admin = aioredis.Redis.from_url(redis_url)
    workers = stores(redis_url, 2)
    devices = [Device.make(n, 60) for n in range(3)]
    try:
        for _ in range(40):
            tasks = [
                asyncio.ensure_future(
                    rng.choice(devices).send(
                        rng.choice(workers), rng.randrange(2), rng.randint(1, 6)
                    )
                )
                for _ in range(rng.randint(2, 8))
            ]
            await asyncio.sleep(rng.random() * 0.002)
            await admin.script_flush()
            assert all(await asyncio.gather(*tasks))
        for device in devices:
            await device.drain(workers[0])
        await check(admin, devices, exact=True)
    finally:
        await close(workers)
        await admin.aclose()


@pytest.mark.parametrize("known", ["store", "device"])
async def test_a_packet_whose_scripts_met_different_caches_runs_each_once(
    redis_url: str, known: str
) -> None:
    """Redis knows only one of the two scripts when the batch arrives (the
    cache was flushed, and another worker loaded them between the two
    calls): the one that ran is not run again, the other one is."""
    admin = aioredis.Redis.from_url(redis_url)
    [store] = stores(redis_url, 1)
    device = Device.make(0, 6, sessions=1)
    try:
        assert await device.send(store, 0, 2)
        await admin.script_flush()
        await admin.script_load(
            STORE_RECORDS_LUA if known == "store" else UPDATE_DEVICE_LUA
        )
        [result] = await store.write([packet_of(device.imei, device.unacked[:2])])
        assert (result.stored, result.duplicates) == (2, 0)
        device.acked(device.unacked[:2], result)
        status = await admin.hgetall(KEYS.device(device.imei))
        assert int(status[b"records_received"]) == 4
        assert int(status[b"last_timestamp"]) == device.records[3].timestamp
        await device.drain(store)
        await check(admin, [device], exact=True)
    finally:
        await close([store])
        await admin.aclose()


async def test_a_cancelled_write_leaves_the_batches_around_it_alone(
    redis_url: str,
) -> None:
    """Three batches in flight on a worker's connection, Redis slow to
    answer; the middle one's caller gives up. The first and the last are
    stored and ACKed as usual, the connection stays in use, and the
    abandoned packet, resent, is stored once."""
    admin = aioredis.Redis.from_url(redis_url)
    [store] = stores(redis_url, 1, socket_timeout=5)
    devices = [Device.make(n, 4, sessions=1) for n in range(3)]
    try:
        for device in devices:
            assert await device.send(store, 0, 1)  # ledgers known
        line = store._line
        await admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        first, middle, last = (
            asyncio.ensure_future(device.send(store, 0, 3)) for device in devices
        )
        await asyncio.sleep(0.05)
        middle.cancel()
        assert await first and await last
        with pytest.raises(asyncio.CancelledError):
            await middle
        assert store._line is line and not line.broken
        assert await devices[1].send(store, 0, 3)  # the resend
        assert devices[1].tally[:2] == [1, 3]  # its records were in already
        await check(admin, devices, exact=False)
    finally:
        await close([store])
        await admin.aclose()


async def test_a_connection_killed_under_pipelined_batches(redis_url: str) -> None:
    """CLIENT KILL while three batches wait for their replies: all three
    fail (their outcome is unknown), the connection goes back to the pool
    once the last of them is done, the next write opens a new one, and the
    resends are stored once."""
    admin = aioredis.Redis.from_url(redis_url)
    [store] = stores(redis_url, 1, socket_timeout=5)
    devices = [Device.make(n, 4) for n in range(3)]
    try:
        for device in devices:
            assert await device.send(store, 0, 1)
        line = store._line
        assert line is not None
        await admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        sends = [asyncio.ensure_future(d.send(store, 0, 3)) for d in devices]
        await asyncio.sleep(0.05)
        await admin.client_kill_filter(_type="normal", skipme=True)
        assert await asyncio.gather(*sends) == [False, False, False]
        assert line.broken and line.connection not in line.pool._in_use_connections
        for device in devices:
            assert not device.sessions[0].known  # outcome unknown: by script
            await device.drain(store)
        assert store._line is not line
        await check(admin, devices, exact=False)
    finally:
        await close([store])
        await admin.aclose()


async def test_multi_refused_under_a_running_worker_turns_script_free_writes_off(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that takes MULTI away from a running worker: the commands of
    the batch then run one by one, unchecked. The packet is not ACKed,
    script-free writes stop, and its resend is stored once."""
    admin = aioredis.Redis.from_url(redis_url)
    await admin.acl_setuser(
        "gateway", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    url = redis_url.replace("//", "//gateway:pw@")
    [store] = stores(url, 1)
    device = Device.make(0, 6, sessions=1)
    try:
        assert await device.send(store, 0, 2)
        assert device.sessions[0].known and store.fenced_writes
        await admin.acl_setuser("gateway", commands=["-multi"])
        with caplog.at_level(logging.ERROR, logger="trackgate.store"):
            assert not await device.send(store, 0, 2)
        assert not store.fenced_writes
        assert "MULTI refused" in caplog.text
        await device.drain(store)
        await check(admin, [device], exact=False)
    finally:
        await close([store])
        await admin.acl_deluser("gateway")
        await admin.aclose()


@pytest.mark.slow
async def test_redis_killed_and_restarted_under_batches_in_flight() -> None:
    """kill -9 of Redis (appendfsync always) while batches are in flight,
    then a restart from its AOF: the batches fail, the devices resend, each
    record once. Sessions whose last write had succeeded keep writing
    without a script: Redis holds exactly what their ledgers say."""
    with redis_server(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        admin = aioredis.Redis.from_url(server.url)
        [store] = stores(server.url, 1, socket_timeout=2)
        devices = [Device.make(n, 30, sessions=1) for n in range(4)]
        try:
            for device in devices:
                assert await device.send(store, 0, 3)
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            sends = [asyncio.ensure_future(d.send(store, 0, 5)) for d in devices[:2]]
            await asyncio.sleep(0.1)
            server.stop(kill=True)
            assert await asyncio.gather(*sends) == [False, False]
            server.start()
            await admin.aclose()
            admin = aioredis.Redis.from_url(server.url)
            evals = await calls(admin, "evalsha")
            for device in devices[2:]:
                assert device.sessions[0].known
                assert await device.send(store, 0, 5)
            assert await calls(admin, "evalsha") == evals  # no script ran
            for device in devices:
                await device.drain(store)
            await check(admin, devices, exact=False)
        finally:
            await close([store])
            await admin.aclose()


async def test_a_restart_that_lost_the_data_refuses_the_ledgers() -> None:
    """Redis restarted without persistence: the dedup hashes are gone, the
    sessions' ledgers describe nothing Redis holds, so the fence refuses
    them and the records go by script (the stream lost what it held)."""
    with redis_server() as server:
        admin = aioredis.Redis.from_url(server.url)
        [store] = stores(server.url, 1, socket_timeout=2)
        device = Device.make(0, 10, sessions=1)
        try:
            assert await device.send(store, 0, 3)
            server.stop()
            server.start()
            await admin.aclose()
            admin = aioredis.Redis.from_url(server.url)
            # The store sees the old connection closed and takes a new one.
            await asyncio.sleep(0.05)
            [result] = await store.write(
                [packet_of(device.imei, device.unacked[:3], device.sessions[0])]
            )
            assert (result.stored, result.duplicates) == (3, 0)
            device.acked(device.unacked[:3], result)
            await device.drain(store)
            entries = await admin.xrange(KEYS.records_for(device.imei))
            assert [int(f[b"timestamp"]) for _, f in entries] == [
                r.timestamp for r in device.records[3:]
            ]
            assert len(await admin.keys(KEYS.fence("*"))) == 1
            dedup = await admin.hgetall(KEYS.dedup(device.imei))
            assert int(dedup[b"seq"]) == device.sessions[0].seq
        finally:
            await close([store])
            await admin.aclose()


async def test_a_batch_of_256_full_packets_and_its_resend(redis_url: str) -> None:
    """256 devices, 255 records each (the most a packet holds), in one
    batch, twice: without a script the second time, then resent whole."""
    admin = aioredis.Redis.from_url(redis_url)
    [store] = stores(redis_url, 1, socket_timeout=30)
    store.dedup_window = 512
    imeis = [f"3560000000{n:05d}" for n in range(256)]
    ledgers = [DedupLedger() for _ in imeis]
    batches = [
        [
            packet_of(
                imei,
                decoded(make_records(255, start_ms=START + r * 10**6, seed=n)),
                ledgers[n],
            )
            for n, imei in enumerate(imeis)
        ]  # fmt: skip
        for r in range(2)
    ]
    try:
        first = await store.write(batches[0])
        evals = await calls(admin, "evalsha")
        second = await store.write(batches[1])
        assert await calls(admin, "evalsha") == evals
        again = await store.write(batches[1])
        assert {(r.stored, r.duplicates) for r in first + second} == {(255, 0)}
        assert {(r.stored, r.duplicates) for r in again} == {(0, 255)}
        assert await admin.xlen(KEYS.records_for(imeis[0])) == 256 * 255 * 2
    finally:
        await close([store])
        await admin.aclose()


async def calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
