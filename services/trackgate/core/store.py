"""The record store: writes decoded AVL packets to Redis, exactly once.

The ingest service calls :meth:`RecordStore.write` with a batch of packets
from many devices and ACKs each device only for the packets that come back
stored. One batch is one pipelined round trip: per packet, one Lua script
appends the records that are new to the device's shard stream and remembers
their digests (so a resent packet adds nothing), and one script updates the
device's status hash.

This module knows the record schema and the scripts; key names come from
:mod:`trackgate.core.keys`. It does not decide when to ACK, retry or give up:
that is the caller's policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import orjson
from redis.exceptions import NoScriptError, RedisError, ResponseError

from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient, is_cluster_client
from trackgate.protocol import AvlRecord

#: How many record digests a device's dedup window keeps. A device sends one
#: packet and waits for its ACK, so a resend repeats at most the unACKed
#: packet (at most 255 records by the wire format, about 28 in a 1280-byte
#: packet); 512 covers two full packets and costs 4 KiB per active device.
DEFAULT_DEDUP_WINDOW = 512

#: How long an idle device's dedup window lives. A device that lost an ACK
#: resends when it next connects, which can be days later after a long
#: outage; a week covers that and lets abandoned windows expire.
DEFAULT_DEDUP_TTL_S = 7 * 24 * 3600

DIGEST_SIZE = 8

#: Commands of one batch in flight at once on a Redis Cluster: below the
#: client's connections per node, so a large batch waits instead of failing.
CLUSTER_CONCURRENCY = 32

RetentionStrategy = Literal["age", "length", "none"]


class StoreError(Exception):
    """Redis did not accept a write; nothing may be ACKed for it."""


def _script(name: str) -> str:
    return resources.files("trackgate.core").joinpath("lua", name).read_text()


STORE_RECORDS_LUA = _script("store_records.lua")
UPDATE_DEVICE_LUA = _script("update_device.lua")


@dataclass(frozen=True, slots=True)
class Retention:
    """How the records streams are trimmed; trimming ignores consumer groups."""

    strategy: RetentionStrategy = "age"
    max_age_s: int = 7 * 24 * 3600
    max_length: int = 10_000_000
    approximate: bool = True

    def trim_args(self, now_ms: int) -> tuple[str, str, str]:
        approx = "1" if self.approximate else "0"
        if self.strategy == "age":
            return "minid", f"{max(now_ms - self.max_age_s * 1000, 0)}-0", approx
        if self.strategy == "length":
            return "maxlen", str(self.max_length), approx
        return "none", "", approx


@dataclass(slots=True)
class PacketWrite:
    """One decoded AVL packet of one device, waiting to be stored."""

    imei: str
    codec: int
    records: Sequence[AvlRecord]
    received_at: int
    transport: str
    peer: str
    #: the first packet after a reconnect whose records are older than the
    #: burst threshold: the device is emptying a backlog
    burst: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What Redis did with one packet."""

    stored: int = 0
    duplicates: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def accepted(self) -> int:
        """Records the device may forget: new ones plus resends already held."""
        return self.stored + self.duplicates


def record_digest(codec: int, record: AvlRecord) -> bytes:
    """The identity of a record for deduplication: its wire bytes, hashed."""
    return hashlib.blake2b(
        bytes((codec,)) + record.raw, digest_size=DIGEST_SIZE
    ).digest()


#: The stream entry's fields, in the order :func:`record_values` joins them.
FIELD_NAMES = (
    "imei",
    "timestamp",
    "received_at",
    "priority",
    "longitude",
    "latitude",
    "altitude",
    "angle",
    "satellites",
    "speed",
    "event_id",
    "io",
    "codec",
    "transport",
    "generation_type",
)
#: Joins the values of one record for the script; JSON escapes control
#: characters and no other value can hold one, so it never occurs inside.
SEP = "\x1f"
_NAMES_ARG = SEP.join(FIELD_NAMES)


def record_values(
    imei: str, codec: int, record: AvlRecord, received_at: str, transport: str
) -> str:
    """The stream entry of one record: its values joined in FIELD_NAMES order."""
    r = record
    generation = "" if r.generation_type is None else str(r.generation_type)
    io = orjson.dumps(r.io).decode()
    return (
        f"{imei}\x1f{r.timestamp}\x1f{received_at}\x1f{r.priority}\x1f"
        f"{r.longitude!r}\x1f{r.latitude!r}\x1f{r.altitude}\x1f{r.angle}\x1f"
        f"{r.satellites}\x1f{r.speed}\x1f{r.event_id}\x1f{io}\x1f{codec}\x1f"
        f"{transport}\x1f{generation}"
    )


def record_fields(
    imei: str, codec: int, record: AvlRecord, received_at: str, transport: str
) -> list[str]:
    """The stream entry of one record as a flat field/value list."""
    values = record_values(imei, codec, record, received_at, transport).split(SEP)
    fields: list[str] = []
    for name, value in zip(FIELD_NAMES, values, strict=True):
        if value:
            fields += (name, value)
    return fields


def newest(records: Sequence[AvlRecord]) -> AvlRecord | None:
    """The record with the greatest device time (packets may be newest-first)."""
    return max(records, key=lambda r: r.timestamp, default=None)


@dataclass
class RecordStore:
    """Writes packets of many devices in one round trip; see the module doc."""

    client: AsyncClient
    keys: Keys
    retention: Retention = field(default_factory=Retention)
    dedup_window: int = DEFAULT_DEDUP_WINDOW
    dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S
    #: WAITAOF before ACKing: (numlocal, numreplicas, timeout ms), or None
    wait_aof: tuple[int, int, int] | None = None
    _shas: tuple[str, str] | None = None

    async def _execute(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run commands in one round trip; errors come back as values.

        A single server gets one pipeline. redis-py refuses scripts in a
        cluster pipeline, so on a cluster the commands go out concurrently,
        each to the node that owns its slot: still one round trip of latency.
        """
        if not is_cluster_client(self.client):
            pipe = self.client.pipeline(transaction=False)
            for command, args in calls:
                pipe.execute_command(command, *args)
            return list(await pipe.execute(raise_on_error=False))
        limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

        async def run(command: str, args: tuple[Any, ...]) -> Any:
            async with limit:
                return await self.client.execute_command(command, *args)

        return list(
            await asyncio.gather(*(run(c, a) for c, a in calls), return_exceptions=True)
        )

    async def check_server(self) -> None:
        """Refuse settings the server cannot honour (WAITAOF needs Redis 7.2).

        Raises :class:`StoreError` with the reason.
        """
        if self.wait_aof is None:
            return
        if is_cluster_client(self.client):
            raise StoreError("TRACKGATE_WAIT_AOF is not supported on a Redis Cluster")
        local, replicas, _timeout = self.wait_aof
        try:
            # A 1 ms wait answers whether the server can honour the request.
            await self.client.execute_command("WAITAOF", local, replicas, 1)
        except ResponseError as exc:
            raise StoreError(
                f"TRACKGATE_WAIT_AOF is set but Redis refuses WAITAOF ({exc}); "
                "it needs Redis 7.2+ and, for a local fsync, appendonly yes"
            ) from exc

    async def load_scripts(self) -> None:
        """Load the Lua scripts (again after a Redis restart or failover)."""
        records = await self.client.script_load(STORE_RECORDS_LUA)
        device = await self.client.script_load(UPDATE_DEVICE_LUA)
        self._shas = (str(records), str(device))

    async def write(self, packets: Sequence[PacketWrite]) -> list[WriteResult]:
        """Store ``packets``; one result per packet, in order.

        Raises :class:`StoreError` when Redis could not be reached at all; a
        packet that Redis refused on its own gets a result with ``error``.
        """
        if not packets:
            return []
        try:
            try:
                return await self._write_once(packets)
            except NoScriptError:
                await self.load_scripts()
                return await self._write_once(packets)
        except RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def _write_once(self, packets: Sequence[PacketWrite]) -> list[WriteResult]:
        if self._shas is None:
            await self.load_scripts()
        assert self._shas is not None
        records_sha, device_sha = self._shas
        now_ms = int(time.time() * 1000)
        trim = self.retention.trim_args(now_ms)
        window_bytes = str(self.dedup_window * DIGEST_SIZE)
        ttl = str(self.dedup_ttl_s)

        calls: list[tuple[str, tuple[Any, ...]]] = []
        for packet in packets:
            args: list[Any] = [window_bytes, ttl, *trim, _NAMES_ARG]
            received_at = str(packet.received_at)
            imei, codec, transport = packet.imei, packet.codec, packet.transport
            for record in packet.records:
                args.append(record_digest(codec, record))
                args.append(record_values(imei, codec, record, received_at, transport))
            stream = self.keys.records_for(packet.imei)
            dedup = self.keys.dedup(packet.imei)
            device = self.keys.device(packet.imei)
            calls.append(("EVALSHA", (records_sha, 2, stream, dedup, *args)))
            calls.append(("EVALSHA", (device_sha, 1, device, *_device_args(packet))))
            calls.append(
                ("ZADD", (self.keys.devices(), packet.received_at, packet.imei))
            )
        if self.wait_aof is not None:
            calls.append(("WAITAOF", self.wait_aof))
        replies = await self._execute(calls)

        for reply in replies:
            if isinstance(reply, NoScriptError):
                raise reply
        if self.wait_aof is not None:
            durable = _check_waitaof(replies.pop(), self.wait_aof)
            if durable is not None:
                return [WriteResult(error=durable) for _ in packets]

        results = []
        for index in range(len(packets)):
            stored_reply = replies[3 * index]
            if isinstance(stored_reply, Exception):
                results.append(WriteResult(error=str(stored_reply)))
                continue
            # The records are in; a failed status update does not lose data.
            results.append(WriteResult(int(stored_reply[0]), int(stored_reply[1])))
        return results


def _device_args(packet: PacketWrite) -> list[str]:
    latest = newest(packet.records)
    head = [str(packet.received_at), packet.peer, packet.transport]
    counts = [str(len(packet.records)), "0"]
    tail = [packet.imei, "1" if packet.burst else "0"]
    if latest is None:
        return head + counts + ["", "", "", "", "", "", "", ""] + tail
    position = [
        repr(latest.latitude),
        repr(latest.longitude),
        str(latest.altitude),
        str(latest.angle),
        str(latest.speed),
        str(latest.satellites),
    ]
    lag = str(packet.received_at - latest.timestamp)
    return head + counts + [lag, str(latest.timestamp), *position] + tail


def _check_waitaof(reply: Any, wanted: tuple[int, int, int]) -> str | None:
    if isinstance(reply, ResponseError):
        return f"WAITAOF refused: {reply}"
    if isinstance(reply, Exception):
        return f"WAITAOF failed: {reply}"
    local, replicas = int(reply[0]), int(reply[1])
    if local < wanted[0] or replicas < wanted[1]:
        return f"WAITAOF reached {local} local / {replicas} replicas in {wanted[2]} ms"
    return None


SESSION_CLOSED_LUA = """
if redis.call('HGET', KEYS[1], 'session_id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'connected', '0', 'disconnected_at', ARGV[2])
  return 1
end
return 0
"""


RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'connected') == '1'
    and redis.call('HGET', KEYS[1], 'pod') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'worker') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'connected', '0', 'disconnected_at', ARGV[3])
  return 1
end
return 0
"""


@dataclass
class SessionStore:
    """Who holds a device's TCP session, in its status hash and on the bus."""

    client: AsyncClient
    keys: Keys

    async def opened(
        self,
        imei: str,
        session_id: str,
        *,
        pod: str,
        worker: str,
        peer: str,
        started_at: int,
    ) -> None:
        """Record the new session as the device's owner and tell the others."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            self.keys.device(imei),
            mapping={
                "imei": imei,
                "connected": "1",
                "session_id": session_id,
                "session_start": started_at,
                "seen_at": started_at,
                "pod": pod,
                "worker": worker,
                "peer": peer,
                "transport": "tcp",
            },
        )
        pipe.zadd(self.keys.devices(), {imei: started_at})
        pipe.sadd(self.keys.holder(f"{pod}/{worker}"), imei)
        await pipe.execute()
        await self.publish(
            {
                "type": "session",
                "imei": imei,
                "session_id": session_id,
                "started_at": started_at,
                "origin": f"{pod}/{worker}",
            }
        )

    async def closed(self, imei: str, session_id: str, at: int, owner: str) -> bool:
        """Mark the device disconnected, unless a newer session owns it now."""
        await self.client.srem(self.keys.holder(owner), imei)
        done = await self.client.eval(
            SESSION_CLOSED_LUA, 1, self.keys.device(imei), session_id, str(at)
        )
        return bool(done)

    async def release_all(self, pod: str, worker: str, at: int) -> int:
        """After a crash: devices this worker held are no longer connected.

        A worker that died (kill -9, OOM) could not mark its sessions ended;
        its successor does, for every device whose hash still names this
        worker as the holder. Returns how many were marked.
        """
        owner = f"{pod}/{worker}"
        key = self.keys.holder(owner)
        released = 0
        for imei in await self.client.smembers(key):
            name = imei.decode() if isinstance(imei, bytes) else str(imei)
            released += int(
                await self.client.eval(
                    RELEASE_LUA, 1, self.keys.device(name), pod, worker, str(at)
                )
            )
        await self.client.delete(key)
        return released

    async def publish(self, message: dict[str, Any]) -> None:
        await self.client.publish(self.keys.events(), json.dumps(message))


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """One consumer group of one records stream, seen against retention."""

    stream: str
    group: str
    lag: int | None
    pending: int
    last_delivered_ms: int
    #: how far the oldest entry the group has not read is from being trimmed:
    #: seconds with age retention, entries with length retention; negative
    #: means unread entries were already trimmed; None when it cannot tell
    headroom: float | None
    #: headroom below a tenth of the retention: warn now
    at_risk: bool


@dataclass(frozen=True, slots=True)
class StreamHealth:
    stream: str
    length: int
    oldest_ms: int | None
    groups: tuple[GroupHealth, ...]


async def stream_health(
    client: AsyncClient, keys: Keys, retention: Retention, now_ms: int | None = None
) -> list[StreamHealth]:
    """Length, consumer-group lag and trimming risk of every records stream.

    Trimming ignores consumer groups, so this is how an operator learns that
    a consumer is about to lose entries it never read. Age retention is
    exact; length retention is estimated from the group's lag.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = []
    for stream in keys.all_records():
        length = int(await client.xlen(stream))
        first = await client.xrange(stream, count=1) if length else []
        oldest = _id_ms(first[0][0]) if first and first[0][0] else None
        groups = []
        if length:
            for info in await client.xinfo_groups(stream):
                groups.append(_group_health(stream, info, length, now, retention))
        report.append(StreamHealth(stream, length, oldest, tuple(groups)))
    return report


def _id_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _group_health(
    stream: str, info: dict[Any, Any], length: int, now: int, retention: Retention
) -> GroupHealth:
    def field(name: str) -> Any:
        return info.get(name, info.get(name.encode()))

    name = field("name")
    lag = field("lag")
    delivered = _id_ms(field("last-delivered-id") or "0-0")
    headroom: float | None = None
    at_risk = False
    if retention.strategy == "age" and lag:
        # The next unread entry is newer than the last delivered one.
        headroom = (delivered + retention.max_age_s * 1000 - now) / 1000
        at_risk = headroom < retention.max_age_s / 10
    elif retention.strategy == "length" and lag is not None:
        headroom = float(retention.max_length - int(lag))
        at_risk = headroom < retention.max_length / 10
    return GroupHealth(
        stream=stream,
        group=name.decode() if isinstance(name, bytes) else str(name),
        lag=None if lag is None else int(lag),
        pending=int(field("pending") or 0),
        last_delivered_ms=delivered,
        headroom=headroom,
        at_risk=at_risk,
    )
