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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from math import inf
from typing import Any, Literal

import orjson
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

#: Store commands in flight at once on a Redis Cluster, over all batches:
#: redis-py's cluster client fails a command past its connections per node
#: instead of waiting, so the store's client needs at least this many.
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


def entry_fields(
    imei: str, codec: int, record: AvlRecord, received_at: int, transport: str
) -> list[Any]:
    """The stream entry of one record: field names and values, alternating.

    Values keep their Python types (the client writes ints and floats as
    their decimal text, ``repr`` for floats); ``generation_type`` is left
    out when the record has none.
    """
    r = record
    fields = [
        "imei", imei,
        "timestamp", r.timestamp,
        "received_at", received_at,
        "priority", r.priority,
        "longitude", r.longitude,
        "latitude", r.latitude,
        "altitude", r.altitude,
        "angle", r.angle,
        "satellites", r.satellites,
        "speed", r.speed,
        "event_id", r.event_id,
        "io", orjson.dumps(r.io),
        "codec", codec,
        "transport", transport,
    ]  # fmt: skip
    if r.generation_type is not None:
        fields += ("generation_type", r.generation_type)
    return fields


def record_fields(
    imei: str, codec: int, record: AvlRecord, received_at: str, transport: str
) -> list[str]:
    """The stream entry of one record as Redis stores it: all text."""
    out: list[str] = []
    for value in entry_fields(imei, codec, record, int(received_at), transport):
        if isinstance(value, bytes):
            out.append(value.decode())
        elif isinstance(value, float):
            out.append(repr(value))
        else:
            out.append(str(value))
    return out


def store_records_args(packet: PacketWrite) -> list[Any]:
    """The per-record arguments of the store script: digest, count, entry."""
    imei, codec, transport = packet.imei, packet.codec, packet.transport
    args: list[Any] = []
    for record in packet.records:
        entry = entry_fields(imei, codec, record, packet.received_at, transport)
        args += (record_digest(codec, record), len(entry), *entry)
    return args


def _bulk(value: str) -> str:
    """One RESP bulk string, for text whose characters are its bytes."""
    return f"${len(value)}\r\n{value}\r\n"


def _text(value: str) -> str:
    """``value``'s UTF-8 bytes as characters, so that encoding the command
    as Latin-1 writes them unchanged and ``len`` counts bytes."""
    return value.encode().decode("latin-1")


def pack_store_records(command: tuple[Any, ...], packet: PacketWrite) -> bytes:
    """The store script call with ``packet``'s records, in the wire format.

    Exactly the bytes hiredis packs for ``(*command, *store_records_args(packet))``
    (a test holds them equal), at a fraction of the cost: the field names
    and the values shared by the packet are rendered once, and the records
    by the compiled packer when it was built (in Python otherwise, or when
    an IO map holds a value it leaves to orjson).
    """
    codec, records = packet.codec, packet.records
    head = _bulk("imei") + _bulk(_text(packet.imei))
    received = _bulk("received_at") + _bulk(str(packet.received_at))
    tail = (
        _bulk("codec") + _bulk(str(codec))
        + _bulk("transport") + _bulk(_text(packet.transport))
    )  # fmt: skip
    packed = None
    if _compiled_pack_entries is not None:
        packed = _compiled_pack_entries(
            records,
            codec,
            head.encode("latin-1"),
            received.encode("latin-1"),
            tail.encode("latin-1"),
        )
    if packed is None:
        packed = _pack_entries_python(records, codec, head, received, tail)
    entries, arguments = packed
    arguments += len(command)
    start = f"*{arguments}\r\n" + "".join(_bulk(_text(str(a))) for a in command)
    return start.encode("latin-1") + entries


def _pack_entries_python(
    records: Sequence[AvlRecord], codec: int, head: str, received: str, tail: str
) -> tuple[bytes, int]:
    """The reference of the compiled packer: the same bytes and argument
    count, one f-string per record.

    Text is built as Latin-1, where a character is a byte.
    """
    parts = []
    arguments = 0
    for r in records:
        digest = record_digest(codec, r).decode("latin-1")
        ts, prio = str(r.timestamp), str(r.priority)
        lon, lat = repr(r.longitude), repr(r.latitude)
        alt, angle, sats = str(r.altitude), str(r.angle), str(r.satellites)
        speed, event = str(r.speed), str(r.event_id)
        io = orjson.dumps(r.io).decode("latin-1")
        if r.generation_type is None:
            count, generation = "$2\r\n28\r\n", ""
            arguments += 30
        else:
            gen = str(r.generation_type)
            count = "$2\r\n30\r\n"
            generation = f"$15\r\ngeneration_type\r\n${len(gen)}\r\n{gen}\r\n"
            arguments += 32
        parts.append(
            f"${len(digest)}\r\n{digest}\r\n{count}{head}"
            f"$9\r\ntimestamp\r\n${len(ts)}\r\n{ts}\r\n{received}"
            f"$8\r\npriority\r\n${len(prio)}\r\n{prio}\r\n"
            f"$9\r\nlongitude\r\n${len(lon)}\r\n{lon}\r\n"
            f"$8\r\nlatitude\r\n${len(lat)}\r\n{lat}\r\n"
            f"$8\r\naltitude\r\n${len(alt)}\r\n{alt}\r\n"
            f"$5\r\nangle\r\n${len(angle)}\r\n{angle}\r\n"
            f"$10\r\nsatellites\r\n${len(sats)}\r\n{sats}\r\n"
            f"$5\r\nspeed\r\n${len(speed)}\r\n{speed}\r\n"
            f"$8\r\nevent_id\r\n${len(event)}\r\n{event}\r\n"
            f"$2\r\nio\r\n${len(io)}\r\n{io}\r\n{tail}{generation}"
        )
    return "".join(parts).encode("latin-1"), arguments


def _compiled_packer() -> Callable[..., tuple[bytes, int] | None] | None:
    try:
        from trackgate.core import _resp  # type: ignore[attr-defined]
    except ImportError:
        return None
    packer: Callable[..., tuple[bytes, int] | None] = _resp.pack_entries
    return packer


_compiled_pack_entries = _compiled_packer()
#: Which packer writes stream entries: "compiled" or "python".
ENTRY_PACKER = "python" if _compiled_pack_entries is None else "compiled"


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
    _cluster_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CLUSTER_CONCURRENCY), repr=False
    )

    async def _execute(self, calls: Sequence[tuple[Any, ...] | bytes]) -> list[Any]:
        """Run commands in one round trip; errors come back as values.

        A command is its arguments, or bytes already in the wire format (on a
        single server only). On a single server the commands are written on
        one pooled connection and their replies read in order: a pipeline
        without redis-py's per-argument packing, which was most of the cost
        of a batch of records. redis-py refuses scripts in a cluster
        pipeline, so on a cluster the commands go out concurrently, each to
        the node that owns its slot: still one round trip of latency.
        """
        client = self.client
        if isinstance(client, AsyncRedisCluster):

            async def run(call: tuple[Any, ...] | bytes) -> Any:
                assert not isinstance(call, bytes), "packed commands need one server"
                async with self._cluster_slots:
                    return await client.execute_command(*call)

            return list(
                await asyncio.gather(*(run(c) for c in calls), return_exceptions=True)
            )
        packed = b"".join(
            [c if isinstance(c, bytes) else pack_command(c) for c in calls]
        )
        pool = client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
        # One deadline for the whole batch, the connection's socket timeout,
        # rather than a timeout context per reply.
        deadline = connection.socket_timeout
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            async with asyncio.timeout(deadline):
                for _ in calls:
                    try:
                        replies.append(await connection.read_response(timeout=inf))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except TimeoutError as exc:
            await connection.disconnect()
            raise RedisTimeoutError(f"no reply from Redis within {deadline} s") from exc
        except BaseException:
            # Replies may be left unread: the connection cannot be reused.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

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

        head = (window_bytes, ttl, *trim)
        keys = self.keys
        packed = not isinstance(self.client, AsyncRedisCluster)
        calls: list[tuple[Any, ...] | bytes] = []
        seen_at: list[Any] = ["ZADD", keys.devices()]
        for packet in packets:
            imei = packet.imei
            command = (
                "EVALSHA", records_sha, 2, keys.records_for(imei), keys.dedup(imei),
                *head,
            )  # fmt: skip
            if packed:
                calls.append(pack_store_records(command, packet))
            else:
                calls.append((*command, *store_records_args(packet)))
            calls.append(
                ("EVALSHA", device_sha, 1, keys.device(imei), *_device_args(packet))
            )
            seen_at += (packet.received_at, imei)
        calls.append(tuple(seen_at))
        if self.wait_aof is not None:
            calls.append(("WAITAOF", *self.wait_aof))
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
            stored_reply = replies[2 * index]
            if isinstance(stored_reply, Exception):
                results.append(WriteResult(error=_describe(stored_reply)))
                continue
            # The records are in; a failed status update does not lose data.
            results.append(WriteResult(int(stored_reply[0]), int(stored_reply[1])))
        return results


def _device_args(packet: PacketWrite) -> list[str]:
    latest = newest(packet.records)
    head = [str(packet.received_at), packet.peer, packet.transport]
    counts = [str(len(packet.records))]
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


def _describe(exc: BaseException) -> str:
    """An error for logs: its class, and its message when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
