"""The record store: writes decoded AVL packets to Redis, exactly once.

The ingest service calls :meth:`RecordStore.write` with a batch of packets
from many devices and ACKs each device only for the packets that come back
stored. One batch is one pipelined round trip. A packet is written one of
two ways:

- by script: one Lua script appends the records that are new to the
  device's shard stream and remembers their digests (so a resent packet adds
  nothing), and one script updates the device's status hash;
- without a script, when the caller holds a :class:`DedupLedger` that is in
  step with Redis (a TCP session after its first packet, on a single
  server): the store decides from the ledger what is new, and the batch's
  writes go in one MULTI/EXEC, fenced by WATCH so that it is refused whole
  if any of its devices was written meanwhile by someone else (another
  session of the device, another pod). A refused batch is written again by
  script. Passing records to Lua cost Redis about as much as storing them,
  so this halves Redis's work per record.

This module knows the record schema and the scripts; key names come from
:mod:`trackgate.core.keys`. It does not decide when to ACK, retry or give up:
that is the caller's policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache, partial
from importlib import resources
from itertools import islice
from math import inf
from operator import attrgetter
from typing import Any, Literal

import orjson
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError, WatchError
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

log = logging.getLogger("trackgate.store")

#: How long a batch waits for its replies when the client sets no socket
#: timeout (the gateway sets one).
DEFAULT_DEADLINE_S = 30.0

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

#: The check at the head of a script-free batch. Sent whole (EVAL, not
#: EVALSHA): were it unknown to the server, the batch would go unchecked.
FENCE_LUA = """
-- KEYS[1]: the batch's fence key, which the batch WATCHes; then per packet
-- the device's dedup hash, its status hash and its records stream.
-- ARGV: per packet the `seq`, `stored` and `duplicates` of the dedup hash
-- and the `last_timestamp` of the status hash its writer expects ("" and
-- "0" and "0" and "-1" for none).
-- A device not as expected, or a key of the wrong type (the EXEC would run
-- its other commands around the failing one), writes the fence key, and
-- the WATCH on it refuses the EXEC that follows. Returns how many.
local call = redis.pcall
local stale = 0
for p = 0, (#KEYS - 1) / 3 - 1 do
  local a = 4 * p
  local dedup = call('HMGET', KEYS[2 + 3 * p], 'seq', 'stored', 'duplicates')
  local newest = call('HGET', KEYS[3 + 3 * p], 'last_timestamp')
  local stream = call('TYPE', KEYS[4 + 3 * p])
  if dedup.err or type(newest) == 'table'
      or (stream.ok ~= 'stream' and stream.ok ~= 'none')
      or (dedup[1] or '') ~= ARGV[a + 1] or (dedup[2] or '0') ~= ARGV[a + 2]
      or (dedup[3] or '0') ~= ARGV[a + 3] or (newest or '-1') ~= ARGV[a + 4] then
    stale = stale + 1
  end
end
if stale > 0 then
  redis.call('SET', KEYS[1], '1', 'PX', '10000')
end
return stale
"""

#: Where a dedup hash's `seq` starts (random below this): a hash that was
#: lost and made again must not repeat a `seq` some ledger still holds.
SEQ_START_BOUND = 2**47


@dataclass(slots=True)
class DedupLedger:
    """A writer's copy of one device's dedup state, to write without a script.

    A TCP session keeps one for its device. A scripted write fills it in
    (the dedup hash's ``seq``, window and counters, the status hash's
    ``last_timestamp``); while Redis still holds exactly that, nobody else
    wrote the device's records, so the store can tell new records from
    resends itself and write with plain commands. A write whose outcome is
    unknown (failed, timed out, refused by the fence) empties the ledger and
    the next one goes through the script again. Costs the window's bytes:
    4 KiB per device by default.
    """

    #: the dedup hash's ``seq`` as of the window below; None: not known
    seq: int | None = None
    window: bytes = b""
    #: the dedup hash's ``stored`` and ``duplicates``: a writer that does not
    #: move ``seq`` (an older release) still moves one of them
    stored: int = 0
    duplicates: int = 0
    #: the status hash's ``last_timestamp`` (ms); -1 when it has none
    newest: int = -1

    @property
    def known(self) -> bool:
        return self.seq is not None

    def forget(self) -> None:
        self.seq = None
        self.window = b""

    def load(
        self, seq: int, window: bytes, newest: int, stored: int, duplicates: int
    ) -> None:
        """Take the state a scripted write returned (an empty seq is unknown)."""
        if seq <= 0 or len(window) % DIGEST_SIZE:
            self.forget()
            return
        self.seq, self.window, self.newest = seq, window, newest
        self.stored, self.duplicates = stored, duplicates

    def expected(self) -> tuple[str, str, str, str]:
        """What the fence compares with Redis (see ``FENCE_LUA``)."""
        return str(self.seq), str(self.stored), str(self.duplicates), str(self.newest)

    def grown(self, digests: bytes, window_bytes: int) -> bytes:
        """The window with ``digests`` added, the oldest cut past ``window_bytes``
        (as the store script cuts it)."""
        window = self.window + digests
        return window[-window_bytes:] if len(window) > window_bytes else window

    def advance(self, window: bytes, newest: int, stored: int, duplicates: int) -> None:
        """After a script-free write that left ``window`` was applied."""
        assert self.seq is not None
        self.seq += 1
        self.window = window
        self.newest = max(self.newest, newest)
        self.stored += stored
        self.duplicates += duplicates


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
    #: the writer's dedup state, when it keeps one (see :class:`DedupLedger`)
    ledger: DedupLedger | None = None


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


def in_window(window: bytes, digest: bytes) -> bool:
    """Whether ``digest`` is one of the window's 8-byte slots."""
    start = window.find(digest)
    while start >= 0:
        if start % DIGEST_SIZE == 0:
            return True
        start = window.find(digest, start + 1)
    return False


def xadd_commands(
    stream: str, packet: PacketWrite, window: bytes
) -> tuple[list[tuple[Any, ...]], bytes, int]:
    """The XADDs of ``packet``'s records that are not in ``window``.

    Returns the commands, the new records' digests (concatenated, in order)
    and how many records were resends (in the window, or repeated within the
    packet). The reference of :func:`pack_xadds`.
    """
    imei, codec, transport = packet.imei, packet.codec, packet.transport
    commands: list[tuple[Any, ...]] = []
    fresh: list[bytes] = []
    duplicates = 0
    for record in packet.records:
        digest = record_digest(codec, record)
        if digest in fresh or in_window(window, digest):
            duplicates += 1
            continue
        fresh.append(digest)
        entry = entry_fields(imei, codec, record, packet.received_at, transport)
        commands.append(("XADD", stream, "*", *entry))
    return commands, b"".join(fresh), duplicates


def pack_xadds(
    stream: str, packet: PacketWrite, window: bytes
) -> tuple[bytes, bytes, int]:
    """:func:`xadd_commands` in the wire format, compiled when it was built.

    Exactly the bytes hiredis packs for those commands (a test holds them
    equal).
    """
    if _compiled_pack_xadds is not None:
        key, head, tail = _packed_fragments(
            stream, packet.imei, packet.codec, packet.transport
        )
        received = b"$11\r\nreceived_at\r\n" + _bulk(str(packet.received_at)).encode()
        packed = _compiled_pack_xadds(
            packet.records, packet.codec, key, head, received, tail, window
        )
        if packed is not None:
            data, digests, duplicates = packed
            return data, digests, int(duplicates)
    commands, digests, duplicates = xadd_commands(stream, packet, window)
    return b"".join(pack_command(c) for c in commands), digests, duplicates


def _shared_fields(packet: PacketWrite) -> tuple[str, str, str]:
    """The packed fields every entry of ``packet`` shares: imei, received_at,
    and codec with transport."""
    head, tail = _device_fields(packet.imei, packet.codec, packet.transport)
    received = _bulk("received_at") + _bulk(str(packet.received_at))
    return head, received, tail


@lru_cache(maxsize=16384)
def _device_fields(imei: str, codec: int, transport: str) -> tuple[str, str]:
    """The imei field, and the codec and transport fields, packed: the same
    for all of a session's packets."""
    head = _bulk("imei") + _bulk(_text(imei))
    codec_field = _bulk("codec") + _bulk(str(codec))
    return head, codec_field + _bulk("transport") + _bulk(_text(transport))


@lru_cache(maxsize=16384)
def _packed_fragments(
    stream: str, imei: str, codec: int, transport: str
) -> tuple[bytes, bytes, bytes]:
    """What :func:`pack_xadds` hands the compiled packer besides the records
    and their received_at: the stream key, the head and the tail fields."""
    head, tail = _device_fields(imei, codec, transport)
    return (
        _bulk(_text(stream)).encode("latin-1"),
        head.encode("latin-1"),
        tail.encode("latin-1"),
    )


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
    head, received, tail = _shared_fields(packet)
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


def _compiled_packer(name: str) -> Callable[..., Any] | None:
    try:
        from trackgate.core import _resp  # type: ignore[attr-defined]
    except ImportError:
        return None
    packer: Callable[..., Any] = getattr(_resp, name)
    return packer


_compiled_pack_entries = _compiled_packer("pack_entries")
_compiled_pack_xadds = _compiled_packer("pack_xadds")
#: Which packer writes stream entries: "compiled" or "python".
ENTRY_PACKER = "python" if _compiled_pack_entries is None else "compiled"


_timestamp = attrgetter("timestamp")


def newest(records: Sequence[AvlRecord]) -> AvlRecord | None:
    """The record with the greatest device time (packets may be newest-first)."""
    return max(records, key=_timestamp, default=None)


class _Pipe:
    """Commands for one round trip to one server, packed as they are added."""

    __slots__ = ("parts", "count")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0

    def add(self, *args: Any) -> int:
        """Append one command; returns the index of its reply."""
        return self.add_packed(pack_command(args), 1)

    def add_packed(self, data: bytes, commands: int) -> int:
        """Append ``commands`` commands in the wire format; the index of the
        first one's reply."""
        self.parts.append(data)
        first = self.count
        self.count += commands
        return first


@dataclass(slots=True)
class _Fenced:
    """One packet of a script-free batch: what it will have done if applied."""

    packet: PacketWrite
    digests: bytes
    duplicates: int
    #: the dedup window once applied
    window: bytes
    #: the newest record's timestamp (ms)
    newest: int
    #: its replies inside the EXEC array: [start, end)
    start: int
    end: int
    #: the ledger's ``seq`` it was planned from
    seq: int

    @property
    def stored(self) -> int:
        return len(self.digests) // DIGEST_SIZE


class _Line:
    """One connection whose round trips follow each other without waiting.

    A batch is written as soon as it is ready, while earlier ones still wait
    for their replies: Redis answers a connection's commands in order, so
    each round trip reads its replies once the one before it has read its
    own. A packet never waits for a free connection, and Redis takes this
    worker's batches one after the other instead of a slice of each in
    turn.

    A failure breaks the line: every round trip on it fails (their outcome
    is unknown), the connection is closed at once so that none waits for
    replies that will not come, and the next round trip opens a new line.
    The connection goes back to its pool only when no round trip on the
    line is left: until then one may still be reading from it, and a
    connection handed to another user must not be closed or read under it.
    A caller that stops waiting (its task cancelled) does not break the
    line: its replies are read and dropped in the background, so the round
    trips around it are not disturbed.
    """

    def __init__(self, connection: Any, pool: Any) -> None:
        self.connection = connection
        self.pool = pool
        self.broken = False
        self.deadline = connection.socket_timeout or DEFAULT_DEADLINE_S
        #: resolved when the last round trip written has read its replies
        self._last: asyncio.Future[None] | None = None
        #: round trips written whose replies are not read yet
        self._open = 0
        self._released = False
        #: set once the connection is back in its pool
        self._idle = asyncio.Event()
        #: round trips finishing for a caller that stopped waiting
        self._orphans: set[asyncio.Task[None]] = set()

    async def roundtrip(self, data: bytes, count: int) -> list[Any]:
        if self.broken:
            raise RedisConnectionError("the connection failed with an earlier batch")
        writer = self.connection._writer
        if writer is None:
            # Closed under the line (the client was closed): a new one opens.
            await self.retire()
            raise RedisConnectionError("the store's connection was closed")
        previous = self._last
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)
        self._last = done
        self._open += 1
        replies: list[Any] = []
        until = asyncio.get_running_loop().time() + self.deadline
        try:
            # Written at once, before any await: batches keep the order in
            # which their replies are read.
            try:
                writer.write(data)
            except BaseException as exc:
                await self._fail(done, exc)
                raise RedisConnectionError(_describe(exc)) from exc
            await self._finish(writer, previous, count, replies, done, until)
        except asyncio.CancelledError:
            if not done.done():
                orphan = asyncio.ensure_future(
                    self._finish(writer, previous, count, replies, done, until)
                )
                self._orphans.add(orphan)
                orphan.add_done_callback(self._orphan_done)
            raise
        return replies

    async def _finish(
        self,
        writer: Any,
        previous: asyncio.Future[None] | None,
        count: int,
        replies: list[Any],
        done: asyncio.Future[None],
        until: float,
    ) -> None:
        """Waits for the round trip before this one, then reads this one's
        replies into ``replies`` (again, after a cancellation, from where it
        stopped)."""
        try:
            async with asyncio.timeout_at(until):
                await writer.drain()
                if previous is not None:
                    if not previous.done():
                        # asyncio.wait: a cancelled wait must not cancel the
                        # round trip before this one.
                        await asyncio.wait((previous,))
                    if previous.cancelled() or previous.exception() is not None:
                        raise RedisConnectionError(
                            "the connection failed with an earlier batch"
                        )
                await _read_replies(self.connection, count, replies)
        except asyncio.CancelledError:
            if asyncio.current_task() in self._orphans:
                # The loop or close() stops the line: the replies are lost.
                await self._fail(done, RedisConnectionError("the line was closed"))
            raise
        except BaseException as exc:
            # Another round trip broke the line first: the cause is its own.
            collateral = self.broken
            await self._fail(done, exc)
            if collateral:
                raise RedisConnectionError(
                    "the connection failed with an earlier batch"
                ) from exc
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"no reply from Redis within {self.deadline} s"
                ) from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc
            raise
        done.set_result(None)
        self._open -= 1
        if self.broken and not self._open:
            await asyncio.shield(self._leave())

    async def _fail(self, done: asyncio.Future[None], exc: BaseException) -> None:
        self._break()
        if not done.done():
            done.set_exception(RedisConnectionError(_describe(exc)))
        self._open -= 1
        if not self._open:
            # Shielded: the connection goes back to its pool even when the
            # task that fails it is being cancelled.
            await asyncio.shield(self._leave())

    @property
    def usable(self) -> bool:
        """Not broken, and the server has not closed the connection (a
        restart, a timeout of idle clients): a batch written now would fail."""
        if self.broken:
            return False
        reader = self.connection._reader
        return reader is not None and not reader.at_eof()

    async def retire(self) -> None:
        """Breaks the line; its connection goes back once no round trip is
        left on it."""
        self._break()
        if not self._open:
            await self._leave()

    def _break(self) -> None:
        """Marks the line broken and closes its socket at once: round trips
        still reading from it fail now instead of at their deadline."""
        if self.broken:
            return
        self.broken = True
        writer = self.connection._writer
        if writer is not None:
            writer.transport.abort()

    async def _leave(self) -> None:
        """Gives the connection back to its pool, once."""
        if self._released:
            return
        self._released = True
        try:
            # Replies may be left unread: the connection is not reused as is.
            await self.connection.disconnect(nowait=True)
        finally:
            await self.pool.release(self.connection)
            self._idle.set()

    def _orphan_done(self, task: asyncio.Task[None]) -> None:
        self._orphans.discard(task)
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """Breaks the line and waits until its connection is back in the pool."""
        self._break()
        if self._open:
            # The round trips still open fail at once on the closed socket.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.deadline)
        else:
            await self._leave()


def _retrieved(future: asyncio.Future[None]) -> None:
    """Marks a line's failure as seen when no later round trip waited on it."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _Batch:
    """The script-free part of a round trip: its plans and reply indices."""

    plans: list[_Fenced]
    watch_at: int
    fence_at: int
    multi_at: int
    exec_at: int


#: Round trips for a packet's scripts when Redis keeps losing them (each
#: round loads them again first).
SCRIPT_ROUNDS = 3


@dataclass(slots=True)
class _Scripted:
    """A packet written by script: the replies of its two scripts so far
    (None: not run yet)."""

    index: int
    store: Any = None
    device: Any = None
    #: set when the write is given up (WAITAOF not reached)
    error: str | None = None

    @property
    def needs_store(self) -> bool:
        return self.store is None or isinstance(self.store, NoScriptError)

    @property
    def needs_device(self) -> bool:
        return self.device is None or isinstance(self.device, NoScriptError)

    @property
    def pending(self) -> bool:
        return self.error is None and (self.needs_store or self.needs_device)

    @property
    def missing(self) -> bool:
        """Redis did not know one of its scripts."""
        return isinstance(self.store, NoScriptError) or isinstance(
            self.device, NoScriptError
        )


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
    #: script-free writes for packets with a ledger (single server only)
    fenced_writes: bool = True
    _shas: tuple[str, str] | None = None
    _cluster_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CLUSTER_CONCURRENCY), repr=False
    )
    _line: _Line | None = field(default=None, repr=False)
    _line_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

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
        """Load the Lua scripts (again after a Redis restart or failover);
        the first time, check that WATCH guards a transaction here."""
        records = await self.client.script_load(STORE_RECORDS_LUA)
        device = await self.client.script_load(UPDATE_DEVICE_LUA)
        if self._shas is None and self.fenced_writes:
            await self._probe_watch()
        self._shas = (str(records), str(device))

    async def _probe_watch(self) -> None:
        """Script-free writes rely on WATCH refusing an EXEC after the
        watched key changed; behind an ACL or a proxy it may not."""
        if isinstance(self.client, AsyncRedisCluster):
            self.fenced_writes = False
            return
        key = self.keys.fence(f"probe-{secrets.token_hex(8)}")
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                await pipe.set(key, "1", px=10_000)
                pipe.multi()  # type: ignore[no-untyped-call, unused-ignore]
                pipe.get(key)
                await pipe.execute()
        except WatchError:
            await self.client.delete(key)
            return  # refused, as it must be
        except ResponseError as exc:
            self._disable_fenced_writes(f"WATCH, MULTI or EXEC refused ({exc})")
            return
        self._disable_fenced_writes("WATCH does not refuse a changed transaction")

    async def write(self, packets: Sequence[PacketWrite]) -> list[WriteResult]:
        """Store ``packets``; one result per packet, in order.

        Raises :class:`StoreError` when Redis could not be reached at all; a
        packet that Redis refused on its own gets a result with ``error``.
        After a :class:`StoreError` the packets' ledgers are empty: whether
        Redis applied the batch is unknown.
        """
        if not packets:
            return []
        try:
            return await self._write_once(packets)
        except BaseException as exc:
            for packet in packets:
                if packet.ledger is not None:
                    packet.ledger.forget()
            if isinstance(exc, RedisError | OSError):
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def _write_once(self, packets: Sequence[PacketWrite]) -> list[WriteResult]:
        if self._shas is None:
            await self.load_scripts()
        if isinstance(self.client, AsyncRedisCluster):
            return await self._write_on_cluster(packets)

        pipe = _Pipe()
        fenced, scripted = self._split(packets)
        batch = self._add_fenced(pipe, [packets[i] for i in fenced])
        scripted_at = [self._add_scripted(pipe, packets[i]) for i in scripted]
        pipe.add("ZADD", self.keys.devices(), *_seen_at(packets))
        if self.wait_aof is not None:
            pipe.add("WAITAOF", *self.wait_aof)
        replies = await self._roundtrip(b"".join(pipe.parts), pipe.count)

        if self.wait_aof is not None:
            durable = _check_waitaof(replies[-1], self.wait_aof)
            if durable is not None:
                for packet in packets:
                    if packet.ledger is not None:
                        packet.ledger.forget()
                return [WriteResult(error=durable) for _ in packets]

        results: list[WriteResult | None] = [None] * len(packets)
        calls: list[_Scripted] = []
        if batch is not None:
            outcome = self._fenced_results(replies, batch)
            for index, result in zip(fenced, outcome, strict=True):
                if result is None:
                    # Refused by the fence: by script now.
                    calls.append(_Scripted(index))
                results[index] = result
        for index, (store_at, device_at) in zip(scripted, scripted_at, strict=True):
            store, device = replies[store_at], replies[device_at]
            if isinstance(store, NoScriptError) or isinstance(device, NoScriptError):
                calls.append(_Scripted(index, store, device))
            else:
                results[index] = _scripted_result(packets[index], store, device)
        if calls:
            await self._run_scripts(packets, calls)
        for call in calls:
            packet = packets[call.index]
            if call.error is not None:
                if packet.ledger is not None:
                    packet.ledger.forget()
                results[call.index] = WriteResult(error=call.error)
            else:
                results[call.index] = _scripted_result(packet, call.store, call.device)
        return [r if r is not None else WriteResult(error="lost") for r in results]

    async def _run_scripts(
        self, packets: Sequence[PacketWrite], calls: list[_Scripted]
    ) -> None:
        """Runs the scripts that ``calls`` still need, a round trip a round.

        A packet refused by the fence needs both of its scripts. Where the
        scripts were gone (a restart, SCRIPT FLUSH), only the script that
        was refused runs again: the two run one after the other, the cache
        may be flushed or loaded (by another worker) between them, and the
        one that ran must not run twice (it counts the records received).
        """
        for _ in range(SCRIPT_ROUNDS):
            todo = [call for call in calls if call.pending]
            if not todo:
                return
            if any(call.missing for call in todo):
                await self.load_scripts()
            pipe = _Pipe()
            at = [
                self._add_scripted(
                    pipe, packets[call.index], call.needs_store, call.needs_device
                )
                for call in todo
            ]
            if self.wait_aof is not None:
                pipe.add("WAITAOF", *self.wait_aof)
            replies = await self._roundtrip(b"".join(pipe.parts), pipe.count)
            for call, (store_at, device_at) in zip(todo, at, strict=True):
                if store_at >= 0:
                    call.store = replies[store_at]
                if device_at >= 0:
                    call.device = replies[device_at]
            if self.wait_aof is not None:
                durable = _check_waitaof(replies[-1], self.wait_aof)
                if durable is not None:
                    for call in todo:
                        call.error = durable

    def _split(self, packets: Sequence[PacketWrite]) -> tuple[list[int], list[int]]:
        """Which packets go without a script, which by script (by index)."""
        fenced: list[int] = []
        scripted: list[int] = []
        devices: set[str] = set()
        for index, packet in enumerate(packets):
            ledger = packet.ledger
            # One script-free write per device and batch: a second one would
            # be planned from the same ledger as the first.
            if (
                self.fenced_writes
                and ledger is not None
                and ledger.known
                and packet.records
                and packet.imei not in devices
            ):
                fenced.append(index)
                devices.add(packet.imei)
            else:
                scripted.append(index)
        return fenced, scripted

    def _add_scripted(
        self, pipe: _Pipe, packet: PacketWrite, store: bool = True, device: bool = True
    ) -> tuple[int, int]:
        """The scripts of one packet (both, or the one asked for); the indices
        of their replies (-1 for a script left out)."""
        assert self._shas is not None
        records_sha, device_sha = self._shas
        imei = packet.imei
        store_at = device_at = -1
        if store:
            command = (
                "EVALSHA", records_sha, 2, self.keys.records_for(imei),
                self.keys.dedup(imei), *self._script_head(packet),
            )  # fmt: skip
            store_at = pipe.add_packed(pack_store_records(command, packet), 1)
        if device:
            device_at = pipe.add(
                "EVALSHA", device_sha, 1, self.keys.device(imei), *_device_args(packet)
            )
        return store_at, device_at

    def _script_head(self, packet: PacketWrite) -> tuple[str, ...]:
        """ARGV[1..7] of the store script (see store_records.lua)."""
        trim = self.retention.trim_args(int(time.time() * 1000))
        return (
            str(self.dedup_window * DIGEST_SIZE),
            str(self.dedup_ttl_s),
            *trim,
            str(1 + secrets.randbelow(SEQ_START_BOUND)),
            "1" if packet.ledger is not None else "0",
        )

    def _add_fenced(self, pipe: _Pipe, packets: list[PacketWrite]) -> _Batch | None:
        """The script-free part of a batch: WATCH, fence, MULTI ... EXEC.

        None when there is nothing to write this way.
        """
        if not packets:
            return None
        keys = self.keys
        fence_key = keys.fence(secrets.token_hex(8))
        # Per packet: its dedup hash, status hash and stream; what it expects.
        names: list[str] = []
        expected: list[str] = []
        for packet in packets:
            ledger = packet.ledger
            assert ledger is not None and ledger.seq is not None
            imei = packet.imei
            names += (keys.dedup(imei), keys.device(imei), keys.records_for(imei))
            expected += ledger.expected()
        # The streams are not watched: other devices append to them all along.
        watched = [fence_key]
        for n in range(0, len(names), 3):
            watched += names[n : n + 2]
        watch_at = pipe.add("WATCH", *watched)
        fence_at = pipe.add(
            "EVAL", FENCE_LUA, 1 + len(names), fence_key, *names, *expected
        )
        multi_at = pipe.add("MULTI")

        plans: list[_Fenced] = []
        trimmed: set[str] = set()
        ttl = str(self.dedup_ttl_s)
        for n, packet in enumerate(packets):
            ledger = packet.ledger
            assert ledger is not None and ledger.seq is not None
            dedup, device, stream = names[3 * n : 3 * n + 3]
            start = pipe.count - multi_at - 1
            xadds, digests, duplicates = pack_xadds(stream, packet, ledger.window)
            stored = len(digests) // DIGEST_SIZE
            if stored:
                pipe.add_packed(xadds, stored)
                trimmed.add(stream)
            window = ledger.grown(digests, self.dedup_window * DIGEST_SIZE)
            if stored:
                pipe.add("HSET", dedup, "window", window, "seq", ledger.seq + 1)
                pipe.add("HINCRBY", dedup, "stored", stored)
            else:
                pipe.add("HSET", dedup, "seq", ledger.seq + 1)
            if duplicates:
                pipe.add("HINCRBY", dedup, "duplicates", duplicates)
            pipe.add("EXPIRE", dedup, ttl)
            latest = newest(packet.records)
            for command in _device_commands(device, packet, latest, ledger.newest):
                pipe.add(*command)
            end = pipe.count - multi_at - 1
            newest_ms = ledger.newest if latest is None else latest.timestamp
            plans.append(
                _Fenced(
                    packet, digests, duplicates, window, newest_ms, start, end,
                    ledger.seq,
                )
            )  # fmt: skip
        strategy, threshold, approximate = self.retention.trim_args(
            int(time.time() * 1000)
        )
        if strategy != "none":
            for stream in sorted(trimmed):
                mark = "~" if approximate == "1" else "="
                pipe.add("XTRIM", stream, strategy.upper(), mark, threshold)
        exec_at = pipe.add("EXEC")
        return _Batch(plans, watch_at, fence_at, multi_at, exec_at)

    def _fenced_results(
        self, replies: list[Any], batch: _Batch
    ) -> list[WriteResult | None]:
        """Results of the script-free part; None for a packet to write again."""
        plans = batch.plans
        watch, fence = replies[batch.watch_at], replies[batch.fence_at]
        multi, applied = replies[batch.multi_at], replies[batch.exec_at]
        checked = watch == b"OK" and fence == 0 and multi == b"OK"
        if not isinstance(applied, list) or not checked:
            for plan in plans:
                assert plan.packet.ledger is not None
                plan.packet.ledger.forget()
        if isinstance(applied, list) and not checked:
            # It ran although the check failed or found a device written
            # meanwhile: WATCH does not guard this connection (an ACL, a
            # proxy). What ran is stored; write by script from now on.
            seen = ", ".join(
                _describe(r) if isinstance(r, Exception) else repr(r)
                for r in (watch, fence, multi)
            )
            self._disable_fenced_writes(f"a batch ran unchecked ({seen})")
        elif applied is None:
            # Refused whole: a device was written by someone else since its
            # ledger was filled, or a key is of the wrong type. By script now.
            return [None] * len(plans)
        elif not isinstance(applied, list):
            # Refused before it ran (EXECABORT: out of memory, ...): nothing
            # was applied. Unless MULTI itself was refused (an ACL changed
            # under a running worker): then the commands meant for the
            # transaction ran one by one, unchecked. Not ACKed either way;
            # a resend goes by script and finds what ran.
            if multi != b"OK":
                seen = _describe(multi) if isinstance(multi, Exception) else repr(multi)
                self._disable_fenced_writes(f"MULTI refused ({seen})")
            error = _describe(applied) if isinstance(applied, Exception) else "no EXEC"
            return [WriteResult(error=error) for _ in plans]

        results: list[WriteResult | None] = []
        # Commands inside a transaction fail one by one (a wrong key type):
        # rare, so looked for per packet only when the array holds one.
        failures = not _PLAIN_REPLIES.issuperset(map(type, applied))
        for plan in plans:
            ledger = plan.packet.ledger
            assert ledger is not None
            failed = None
            if failures:
                mine = applied[plan.start : plan.end]
                failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is not None:
                ledger.forget()
                results.append(WriteResult(error=_describe(failed)))
                continue
            if ledger.seq == plan.seq:
                ledger.advance(plan.window, plan.newest, plan.stored, plan.duplicates)
            else:
                # Its ledger was written meanwhile (a caller writing one
                # ledger in two batches at once): no longer the base of this.
                ledger.forget()
            results.append(WriteResult(plan.stored, plan.duplicates))
        return results

    def _disable_fenced_writes(self, why: str) -> None:
        if self.fenced_writes:
            log.error(
                "script-free writes disabled: %s; every packet is now written by "
                "script",
                why,
            )
        self.fenced_writes = False

    async def _roundtrip(self, data: bytes, count: int) -> list[Any]:
        """Write ``data`` (``count`` commands) and read their replies in
        order, errors as values, all as bytes.

        A pipeline without redis-py's per-argument packing and per-reply
        coroutine, which were most of the cost of a batch of records. Round
        trips share one connection and follow each other without waiting
        (see :class:`_Line`). One deadline for the whole batch, the
        connection's socket timeout.
        """
        line = self._line
        if line is None or not line.usable:
            async with self._line_lock:
                line = self._line
                if line is None or not line.usable:
                    if line is not None:
                        await line.retire()
                    line = self._line = await self._open_line()
        return await line.roundtrip(data, count)

    async def _open_line(self) -> _Line:
        assert not isinstance(self.client, AsyncRedisCluster)
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
        return _Line(connection, pool)

    async def close(self) -> None:
        """Give the store's connection back to its pool."""
        if self._line is not None:
            await self._line.close()
            self._line = None

    async def _write_on_cluster(
        self, packets: Sequence[PacketWrite]
    ) -> list[WriteResult]:
        """Every packet by script, its commands sent to their nodes at once.

        redis-py refuses scripts in a cluster pipeline, and WATCH/MULTI span
        one slot, so a batch is concurrent single commands: still one round
        trip of latency.
        """
        assert self._shas is not None and isinstance(self.client, AsyncRedisCluster)
        client = self.client
        records_sha, device_sha = self._shas
        calls: list[tuple[Any, ...]] = []
        for packet in packets:
            imei = packet.imei
            # No script-free writes on a cluster: no window to hand back.
            head = (*self._script_head(packet)[:-1], "0")
            calls.append((
                "EVALSHA", records_sha, 2, self.keys.records_for(imei),
                self.keys.dedup(imei), *head, *store_records_args(packet),
            ))  # fmt: skip
            device = self.keys.device(imei)
            calls.append(("EVALSHA", device_sha, 1, device, *_device_args(packet)))
        calls.append(("ZADD", self.keys.devices(), *_seen_at(packets)))

        async def run(call: tuple[Any, ...]) -> Any:
            async with self._cluster_slots:
                return await client.execute_command(*call)

        async def run_all(indices: list[int]) -> None:
            done = await asyncio.gather(
                *(run(calls[i]) for i in indices), return_exceptions=True
            )
            for index, reply in zip(indices, done, strict=True):
                replies[index] = reply

        replies: list[Any] = [None] * len(calls)
        await run_all(list(range(len(calls))))
        # A node that lost its scripts (restarted, failed over) refused only
        # its own commands: load them and run just those again. A packet
        # still refused after that fails alone (not ACKed); the commands
        # that ran are never run twice.
        for _ in range(SCRIPT_ROUNDS - 1):
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if not missing:
                break
            await self.load_scripts()
            await run_all(missing)
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, RedisError):
                raise reply
        return [
            _scripted_result(packet, replies[2 * n], replies[2 * n + 1])
            for n, packet in enumerate(packets)
        ]


#: Types of the replies of the commands of a script-free batch, errors aside.
_PLAIN_REPLIES = frozenset((bytes, int, list, type(None)))


def _seen_at(packets: Sequence[PacketWrite]) -> list[Any]:
    """ZADD arguments: each device's last received_at."""
    out: list[Any] = []
    for packet in packets:
        out += (packet.received_at, packet.imei)
    return out


def _scripted_result(packet: PacketWrite, stored: Any, device: Any) -> WriteResult:
    """The result of a packet written by script; fills its ledger in."""
    ledger = packet.ledger
    if isinstance(stored, BaseException) or not isinstance(stored, list):
        if ledger is not None:
            ledger.forget()
        if isinstance(stored, BaseException):
            return WriteResult(error=_describe(stored))
        return WriteResult(error=f"unexpected reply to the store script: {stored!r}")
    # The records are in; a failed status update does not lose data, but it
    # leaves the ledger without the device's last_timestamp.
    if ledger is not None:
        if isinstance(device, BaseException) or len(stored) < 8:
            ledger.forget()
        else:
            ledger.load(
                int(stored[4]), bytes(stored[5]), int(device),
                int(stored[6]), int(stored[7]),
            )  # fmt: skip
    return WriteResult(int(stored[0]), int(stored[1]))


async def _read_replies(connection: Any, count: int, replies: list[Any]) -> None:
    """Reads replies from ``connection`` into ``replies`` until it holds
    ``count``: errors as values, undecoded.

    Straight from the connection's hiredis reader when redis-py parses with
    hiredis (one C call per reply; a test holds that this path is taken), or
    through ``read_response`` otherwise. Cancelled, it keeps what it read:
    called again, it goes on from there.
    """
    parser = connection._parser
    if _HiredisParser is not None and type(parser) is _HiredisParser:
        await _read_with_hiredis(parser, count, replies)
        return
    while len(replies) < count:
        try:
            replies.append(
                await connection.read_response(disable_decoding=True, timeout=inf)
            )
        except ResponseError as exc:
            replies.append(exc)


async def _read_with_hiredis(parser: Any, count: int, replies: list[Any]) -> None:
    gets = partial(parser._reader.gets, False)
    while True:
        start = len(replies)
        # The whole replies buffered, up to ``count`` (what follows belongs to
        # the next batch on the connection), without a Python step per reply:
        # a batch has dozens a packet, one per queued command and the EXEC
        # array. The iterator ends for good at the first "not enough data".
        replies.extend(islice(iter(gets, _NOT_ENOUGH_DATA), count - start))
        if not _PLAIN_REPLIES.issuperset(map(type, replies[start:])):
            for reply in replies[start:]:
                if isinstance(reply, RedisConnectionError):
                    raise reply
        if len(replies) == count:
            return
        await parser.read_from_socket()


try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser as _HiredisParser
except ImportError:  # another redis-py layout: read_response does the work
    _HiredisParser = None  # type: ignore[assignment, misc]
    _NOT_ENOUGH_DATA = None


def _device_commands(
    key: str, packet: PacketWrite, latest: AvlRecord | None, last_timestamp: int
) -> list[tuple[Any, ...]]:
    """The status update of update_device.lua as plain commands: ``latest``
    is the packet's newest record, ``last_timestamp`` the hash's (-1: none)."""
    fields: list[Any] = [
        "imei", packet.imei, "seen_at", packet.received_at,
        "peer", packet.peer, "transport", packet.transport,
    ]  # fmt: skip
    if latest is not None:
        fields += ("last_lag_ms", packet.received_at - latest.timestamp)
        if latest.timestamp > last_timestamp:
            fields += (
                "last_timestamp", latest.timestamp,
                "last_latitude", repr(latest.latitude),
                "last_longitude", repr(latest.longitude),
                "last_altitude", latest.altitude,
                "last_angle", latest.angle,
                "last_speed", latest.speed,
                "last_satellites", latest.satellites,
            )  # fmt: skip
    commands: list[tuple[Any, ...]] = [("HSET", key, *fields)]
    if packet.records:
        commands.append(("HINCRBY", key, "records_received", len(packet.records)))
    if packet.burst:
        commands.append(("HINCRBY", key, "bursts_total", 1))
    return commands


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


# The newer of two sessions owns the device: later start, then the larger id
# (starts in one millisecond on two workers must not each yield to the other).
SESSION_OPENED_LUA = """
local held = redis.call('HMGET', KEYS[1], 'session_start', 'session_id')
local held_start = tonumber(held[1])
local start = tonumber(ARGV[2])
if held_start and (held_start > start
    or (held_start == start and (held[2] or '') > ARGV[1])) then
  return 0
end
redis.call('HSET', KEYS[1], 'imei', ARGV[3], 'connected', '1',
  'session_id', ARGV[1], 'session_start', ARGV[2], 'seen_at', ARGV[2],
  'pod', ARGV[4], 'worker', ARGV[5], 'peer', ARGV[6], 'transport', 'tcp')
return 1
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
    ) -> bool:
        """Record the new session as the device's owner and tell the others.

        False, with nothing written, when a newer session of the device owns
        it already: this one is a stale connection whose login came late.
        """
        # Held first: a worker that dies right after the hash names it is
        # still found by its successor's release (a stale entry is harmless).
        await self.client.sadd(self.keys.holder(f"{pod}/{worker}"), imei)
        owned = await self.client.eval(
            SESSION_OPENED_LUA,
            1,
            self.keys.device(imei),
            session_id,
            str(started_at),
            imei,
            pod,
            worker,
            peer,
        )
        if not owned:
            return False
        await self.client.zadd(self.keys.devices(), {imei: started_at})
        await self.publish(
            {
                "type": "session",
                "imei": imei,
                "session_id": session_id,
                "started_at": started_at,
                "origin": f"{pod}/{worker}",
            }
        )
        return True

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
