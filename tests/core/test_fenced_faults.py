"""Script-free writes when Redis misbehaves: WATCH refused, a command
failing inside EXEC, a writer of the previous release, a passing OOM or
BUSY, a node of a cluster that lost its scripts.

In each, no record may be lost or stored twice, counts and the device's
position stay right, and a passing fault does not switch script-free
writes off. All run against the real redis-server of the fixtures.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from tests.support.cluster import RedisClusterProcs
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.core.store import (
    CLUSTER_CONCURRENCY,
    DedupLedger,
    PacketWrite,
    RecordStore,
    record_digest,
    store_records_args,
)
from trackgate.protocol import AvlRecord, decode_tcp_frame, encode_avl_packet
from trackgate.sim import make_records

IMEI = "352093081452251"
KEYS = Keys()
START = 1_700_000_000_000


def decoded(records: list[AvlRecord], codec: int = 0x8E) -> list[AvlRecord]:
    packet = decode_tcp_frame(encode_avl_packet(codec, records))
    return list(packet.records)  # type: ignore[union-attr]


def write(
    records: list[AvlRecord],
    ledger: DedupLedger | None = None,
    imei: str = IMEI,
    received_at: int = 1_700_000_100_000,
) -> PacketWrite:
    return PacketWrite(imei, 0x8E, records, received_at, "tcp", "127.0.0.1:1",
                       ledger=ledger)  # fmt: skip


async def stream_timestamps(client: aioredis.Redis) -> list[int]:
    entries = await client.xrange(KEYS.records_for(IMEI))
    return sorted(int(fields[b"timestamp"]) for _, fields in entries)


async def test_a_stale_ledger_is_not_trusted_when_redis_refuses_watch(
    redis_url: str,
) -> None:
    """The fence only writes a watched key; it is WATCH that refuses the
    EXEC. Where WATCH itself is refused (an ACL without it), the store finds
    out at start and writes every packet by script."""
    admin = aioredis.Redis.from_url(redis_url)
    await admin.acl_setuser(
        "nowatch", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-watch"],
    )  # fmt: skip
    client = aioredis.Redis.from_url(redis_url.replace("//", "//nowatch:pw@"))
    try:
        store = RecordStore(client, KEYS)
        other_pod = RecordStore(admin, KEYS)
        records = decoded(make_records(6, start_ms=START))
        mine = DedupLedger()
        await store.write([write(records[:2], mine)])
        # Another session of the device (another pod) stores 2, 3 and the
        # newest record 5: this session's ledger is stale.
        await other_pod.write([write([records[2], records[3], records[5]])])

        [result] = await store.write([write(records[3:5], mine)])

        # As the script would have it: 3 is a resend, 4 is new.
        assert (result.stored, result.duplicates) == (1, 1)
        assert await stream_timestamps(client) == [r.timestamp for r in records]
        device = await admin.hgetall(KEYS.device(IMEI))
        assert device[b"last_timestamp"] == str(records[5].timestamp).encode()
        window = await admin.hget(KEYS.dedup(IMEI), "window")
        assert record_digest(0x8E, records[2]) in window
    finally:
        await client.aclose()
        await admin.acl_deluser("nowatch")
        await admin.aclose()


async def test_a_record_whose_xadd_failed_inside_exec_is_not_acked_as_a_resend(
    redis_url: str,
) -> None:
    """MULTI/EXEC runs every queued command even when one fails, so a
    packet whose XADDs would fail (a stream key of the wrong type) must not
    get its window written: the fence refuses the batch, the script fails
    before the window, the packet is not ACKed and its resend is stored."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RecordStore(client, KEYS)
        records = decoded(make_records(4, start_ms=START))
        ledger = DedupLedger()
        await store.write([write(records[:2], ledger)])
        assert ledger.known
        stream = KEYS.records_for(IMEI)
        await client.rename(stream, "parked")
        await client.set(stream, "not a stream")

        [failed] = await store.write([write(records[2:], ledger)])
        assert not failed.ok  # refused, not ACKed: so far right

        # The key is put right; the device resends the unACKed packet.
        await client.delete(stream)
        await client.rename("parked", stream)
        [again] = await store.write([write(records[2:], ledger)])
        assert again.accepted == 2
        assert (again.stored, again.duplicates) == (2, 0)
        assert await stream_timestamps(client) == [r.timestamp for r in records]
    finally:
        await client.aclose()


async def test_a_passing_fence_error_does_not_turn_script_free_writes_off_for_good(
    redis_url: str,
) -> None:
    """Redis at maxmemory (noeviction) refuses the batch; once memory is
    back, packets go without a script again."""
    client = aioredis.Redis.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        store = RecordStore(client, KEYS)
        records = decoded(make_records(6, start_ms=START))
        mine = DedupLedger()
        await store.write([write(records[:2], mine)])
        await RecordStore(admin, KEYS).write([write(records[2:3])])  # mine stale
        await admin.config_set("maxmemory", "1")
        try:
            [refused] = await store.write([write(records[3:4], mine)])
        finally:
            await admin.config_set("maxmemory", "0")
        assert not refused.ok  # OOM: not stored, not ACKed: right

        # Memory is back. The resend goes by script, the next packet could
        # go without one again.
        await store.write([write(records[3:4], mine)])
        [later] = await store.write([write(records[4:5], mine)])
        assert later.stored == 1
        assert store.fenced_writes
    finally:
        await client.aclose()
        await admin.aclose()


async def test_a_busy_redis_does_not_turn_script_free_writes_off_for_good(
    redis_url: str,
) -> None:
    """While another client's script runs past busy-reply-threshold the
    batch is refused (not ACKed); afterwards packets go without a script
    again."""
    client = aioredis.Redis.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    slow_script = (
        "local t = redis.call('TIME') local s = t[1] + t[2] / 1e6 "
        "while true do local u = redis.call('TIME') "
        "if u[1] + u[2] / 1e6 - s > 0.6 then break end end return 1"
    )
    try:
        store = RecordStore(client, KEYS)
        records = decoded(make_records(4, start_ms=START))
        mine = DedupLedger()
        await store.write([write(records[:2], mine)])
        await admin.config_set("busy-reply-threshold", "50")
        other = aioredis.Redis.from_url(redis_url)
        try:
            slow = asyncio.ensure_future(other.eval(slow_script, 0))
            await asyncio.sleep(0.2)
            [busy] = await store.write([write(records[2:3], mine)])
            await slow
        finally:
            await other.aclose()
            await admin.config_set("busy-reply-threshold", "5000")
        assert not busy.ok
        await store.write([write(records[2:3], mine)])  # the resend, by script
        [later] = await store.write([write(records[3:4], mine)])
        assert later.stored == 1
        assert store.fenced_writes
    finally:
        await client.aclose()
        await admin.aclose()


#: store_records.lua as released before script-free writes, comments left
#: out: it writes the window but has no `seq`.
PREVIOUS_STORE_RECORDS_LUA = """
local call = redis.call
local argv = ARGV
local window = call('HGET', KEYS[2], 'window') or ''
local function seen(digest)
  local start = 1
  while true do
    local pos = string.find(window, digest, start, true)
    if pos == nil then return false end
    if (pos - 1) % 8 == 0 then return true end
    start = pos + 1
  end
end
local stored, duplicates = 0, 0
local first_id, last_id = '', ''
local added, fresh = {}, {}
local i = 6
local last = #argv
local stream = KEYS[1]
while i <= last do
  local digest = argv[i]
  local n = tonumber(argv[i + 1])
  if fresh[digest] or seen(digest) then
    duplicates = duplicates + 1
  else
    last_id = call('XADD', stream, '*', unpack(argv, i + 2, i + 1 + n))
    if first_id == '' then first_id = last_id end
    stored = stored + 1
    added[stored] = digest
    fresh[digest] = true
  end
  i = i + 2 + n
end
if duplicates > 0 then
  redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates)
end
if stored > 0 then
  window = window .. table.concat(added)
  if #window > tonumber(ARGV[1]) then
    window = string.sub(window, #window - tonumber(ARGV[1]) + 1)
  end
  redis.call('HSET', KEYS[2], 'window', window)
  redis.call('HINCRBY', KEYS[2], 'stored', stored)
end
if stored + duplicates > 0 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
end
return {stored, duplicates, first_id, last_id}
"""


async def test_a_write_by_a_pod_of_the_previous_release_trips_the_fence(
    redis_url: str,
) -> None:
    """During a rolling upgrade (old and new pods side by side, an old pod
    finishing its writes while it drains) the previous release's script
    changes the window and the counters but not `seq`, and with records
    older than the newest position not `last_timestamp` either: the fence
    compares the counters too."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RecordStore(client, KEYS)
        records = decoded(make_records(6, start_ms=START))
        mine = DedupLedger()
        await store.write([write([records[0], records[5]], mine)])
        # The old pod stores 1 and 2 (older than 5, the newest).
        old = write(records[1:3])
        await client.eval(
            PREVIOUS_STORE_RECORDS_LUA, 2, KEYS.records_for(IMEI), KEYS.dedup(IMEI),
            str(512 * 8), "604800", "none", "", "1", *store_records_args(old),
        )  # fmt: skip

        [result] = await store.write([write(records[2:4], mine)])

        assert (result.stored, result.duplicates) == (1, 1)
        assert await stream_timestamps(client) == [
            r.timestamp for r in records[:4] + records[5:]
        ]
        window = await client.hget(KEYS.dedup(IMEI), "window")
        assert record_digest(0x8E, records[1]) in window
    finally:
        await client.aclose()


async def test_a_noscript_on_one_cluster_node_does_not_apply_the_others_twice(
    cluster_url: str, redis_cluster_procs: RedisClusterProcs
) -> None:
    """A node that lost its scripts (restarted, failed over) refuses only
    its own commands; only those run again, so no packet is counted twice."""
    client = async_client(cluster_url, max_connections=CLUSTER_CONCURRENCY)
    keys = Keys(shards=6)
    store = RecordStore(client, keys)
    imeis = [str(356_307_040_000_000 + n) for n in range(12)]
    try:
        first = [
            write(decoded(make_records(2, start_ms=START, seed=n)), imei=imei)
            for n, imei in enumerate(imeis)
        ]
        await store.write(first)
        # One node loses its script cache.
        node = redis.Redis(port=redis_cluster_procs.ports[0])
        node.script_flush()
        node.close()

        second = [
            write(decoded(make_records(2, start_ms=START + 60_000, seed=n)),
                  imei=imei)
            for n, imei in enumerate(imeis)
        ]  # fmt: skip
        results = await store.write(second)
        counts = [(r.stored, r.duplicates) for r in results]
        received = [
            int(await client.hget(keys.device(imei), "records_received"))
            for imei in imeis
        ]
        assert (counts, received) == ([(2, 0)] * 12, [4] * 12)
    finally:
        await client.aclose()
