"""The read side of devices: status hashes, the device index, record streams.

The API calls these to answer "which devices are there", "how is this one
doing" and "what did it send lately". Everything is read as the ingest
service writes it (docs/redis-contract.md); nothing here writes.

A device's records share a stream with every other device of its shard, so
reading one device's history means scanning the shard and keeping its
entries. :func:`device_records` bounds that scan (``scan_budget`` entries
per call) and returns a cursor to continue, so one request costs at most
that many entries of Redis work whatever the fleet size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from trackgate.core.keys import Keys
from trackgate.core.paging import ScoreCursor, as_text, newest_first
from trackgate.core.redisconn import AsyncClient
from trackgate.protocol import IMEI_MAX_DIGITS, IMEI_MIN_DIGITS

#: A device id as the gateway accepts it at login (the protocol package's
#: policy: 15 digits, or 16 for the IMEISV form).
IMEI_PATTERN = f"^[0-9]{{{IMEI_MIN_DIGITS},{IMEI_MAX_DIGITS}}}$"
IMEI_RE = re.compile(IMEI_PATTERN)

#: Stream entries fetched per XREVRANGE round trip while scanning a shard.
STREAM_BATCH = 500

#: Default of how many entries of a shared stream one records request may
#: read; with a few thousand devices per shard, 5000 entries cover a few
#: minutes of traffic and take Redis about a millisecond.
DEFAULT_SCAN_BUDGET = 5000


@dataclass(frozen=True, slots=True)
class Position:
    timestamp: int
    latitude: float
    longitude: float
    altitude: int
    angle: int
    speed: int
    satellites: int


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One device as its status hash (and dedup counters) describe it."""

    imei: str
    connected: bool
    seen_at: int | None
    session_id: str | None
    session_start: int | None
    pod: str | None
    worker: str | None
    peer: str | None
    transport: str | None
    last_lag_ms: int | None
    records_received: int
    records_stored: int | None
    duplicates: int | None
    bursts_total: int
    position: Position | None

    @classmethod
    def from_hash(
        cls, imei: str, raw: Mapping[Any, Any], dedup: Mapping[str, Any] | None = None
    ) -> DeviceStatus:
        """The status of ``raw`` (the device hash) and ``dedup``, the dedup
        hash's ``stored`` and ``duplicates``, or None when that hash does not
        exist.

        The dedup hash exists from the device's first stored record until a
        week after its last packet. Without it, the counters are 0 if the
        device never sent a record (``records_received`` is 0) and unknown
        (None) if it did: they expired with the hash.
        """
        values = {as_text(k) or "": as_text(v) for k, v in raw.items()}
        received = _int(values.get("records_received")) or 0
        stored, duplicates = _counters(dedup, received)
        return cls(
            imei=imei,
            connected=values.get("connected") == "1",
            seen_at=_int(values.get("seen_at")),
            session_id=values.get("session_id") or None,
            session_start=_int(values.get("session_start")),
            pod=values.get("pod") or None,
            worker=values.get("worker") or None,
            peer=values.get("peer") or None,
            transport=values.get("transport") or None,
            last_lag_ms=_int(values.get("last_lag_ms")),
            records_received=received,
            records_stored=stored,
            duplicates=duplicates,
            bursts_total=_int(values.get("bursts_total")) or 0,
            position=_position(values),
        )


def _counters(
    dedup: Mapping[str, Any] | None, received: int
) -> tuple[int | None, int | None]:
    """``stored`` and ``duplicates`` (see :meth:`DeviceStatus.from_hash`)."""
    if dedup is None:
        return (0, 0) if received == 0 else (None, None)
    # The store script writes each counter the first time it moves, so a
    # hash without one has counted none of that kind.
    return (
        _int(as_text(dedup.get("stored"))) or 0,
        _int(as_text(dedup.get("duplicates"))) or 0,
    )


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _position(values: Mapping[str, str | None]) -> Position | None:
    timestamp = _int(values.get("last_timestamp"))
    latitude = _float(values.get("last_latitude"))
    longitude = _float(values.get("last_longitude"))
    if timestamp is None or latitude is None or longitude is None:
        return None
    return Position(
        timestamp=timestamp,
        latitude=latitude,
        longitude=longitude,
        altitude=_int(values.get("last_altitude")) or 0,
        angle=_int(values.get("last_angle")) or 0,
        speed=_int(values.get("last_speed")) or 0,
        satellites=_int(values.get("last_satellites")) or 0,
    )


async def device_status(
    client: AsyncClient, keys: Keys, imei: str
) -> DeviceStatus | None:
    """The device's status, or None if the gateway never heard of it."""
    # One round trip; the two keys may live in different cluster slots.
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.device(imei))
    _read_counters(pipe, keys, imei)
    raw, exists, counts = await pipe.execute()
    if not raw:
        return None
    return DeviceStatus.from_hash(imei, raw, _dedup_of(exists, counts))


def _read_counters(pipe: Any, keys: Keys, imei: str) -> None:
    """Queue the reads of the device's dedup counters: two replies."""
    pipe.exists(keys.dedup(imei))
    pipe.hmget(keys.dedup(imei), ["stored", "duplicates"])


def _dedup_of(exists: Any, counts: Any) -> dict[str, Any] | None:
    """The counters of the two replies of :func:`_read_counters`."""
    if not exists:
        return None
    stored, duplicates = counts
    return {"stored": stored, "duplicates": duplicates}


async def device_page(
    client: AsyncClient,
    keys: Keys,
    *,
    after: ScoreCursor | None,
    limit: int,
    seen_since: int | None = None,
    connected: bool | None = None,
    scan_budget: int = DEFAULT_SCAN_BUDGET,
) -> tuple[list[DeviceStatus], ScoreCursor | None]:
    """Devices by last contact, newest first, and the cursor of the next page.

    With a ``connected`` filter the index is walked until ``limit`` devices
    match or ``scan_budget`` devices were looked at; the cursor then points
    after the last one looked at, so the next call goes on from there. The
    cursor is None only when the index has nothing further.
    """
    devices: list[DeviceStatus] = []
    batch: list[ScoreCursor] = []
    last: ScoreCursor | None = None
    scanned = 0

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for position in batch:
            pipe.hgetall(keys.device(position.member))
            _read_counters(pipe, keys, position.member)
        replies = await pipe.execute()
        for index, position in enumerate(batch):
            raw, exists, counts = replies[3 * index : 3 * index + 3]
            counters = _dedup_of(exists, counts)
            status = DeviceStatus.from_hash(position.member, raw, counters)
            if connected is None or status.connected == connected:
                devices.append(status)
        batch.clear()

    walk = newest_first(client, keys.devices(), after=after, min_score=seen_since)
    async with aclosing(walk):
        async for position in walk:
            scanned += 1
            last = position
            batch.append(position)
            # Fetch no more hashes than could still fit on the page.
            if len(batch) >= limit - len(devices):
                await flush()
            if len(devices) >= limit or scanned >= scan_budget:
                await flush()
                return devices, last
    await flush()
    return devices, None


@dataclass(frozen=True, slots=True)
class Record:
    """One stream entry, typed; ``id`` is the stream entry id."""

    id: str
    fields: dict[str, Any]


_INT_FIELDS = frozenset(
    {"timestamp", "received_at", "priority", "altitude", "angle", "satellites",
     "speed", "event_id", "codec", "generation_type"}
)  # fmt: skip
_FLOAT_FIELDS = frozenset({"longitude", "latitude"})


def record_from_entry(entry_id: str, raw: Mapping[Any, Any]) -> Record:
    """A stream entry with numbers as numbers and ``io`` as an object."""
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        name = as_text(key) or ""
        text = as_text(value) or ""
        if name in _INT_FIELDS:
            fields[name] = _int(text)
        elif name in _FLOAT_FIELDS:
            fields[name] = _float(text)
        elif name == "io":
            try:
                fields[name] = json.loads(text) if text else {}
            except ValueError:
                fields[name] = {}
        else:
            fields[name] = text
    return Record(entry_id, fields)


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[Record]
    #: stream id to pass as ``before`` for older records, None at the end
    next_before: str | None
    scanned: int


async def device_records(
    client: AsyncClient,
    keys: Keys,
    imei: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    before: str | None = None,
    limit: int = 100,
    scan_budget: int = DEFAULT_SCAN_BUDGET,
) -> RecordPage:
    """The device's records, newest first, from its shard stream.

    ``since_ms``/``until_ms`` bound the stream entry ids, which are the time
    Redis stored the record (within milliseconds of ``received_at``), not the
    device's own timestamp. ``before`` is the cursor from the previous page.
    """
    stream = keys.records_for(imei)
    top = "+" if until_ms is None else str(until_ms)
    if before is not None:
        # Normalised ("0000-0" is "0-0"), so the first id below is recognised.
        ms, _, seq = before.partition("-")
        top = f"({int(ms)}-{int(seq or 0)}"
    bottom = "-" if since_ms is None else str(since_ms)
    records: list[Record] = []
    scanned = 0
    last_id: str | None = None

    while True:
        count = min(STREAM_BATCH, scan_budget - scanned)
        if count <= 0:
            return RecordPage(records, last_id, scanned)
        if top in ("(0-0", "(0"):
            # Nothing lies below the first possible id (Redis refuses the range).
            return RecordPage(records, None, scanned)
        reply = await client.xrevrange(stream, max=top, min=bottom, count=count)
        entries: list[Any] = list(reply or [])
        for raw_id, raw in entries:
            scanned += 1
            last_id = as_text(raw_id) or ""
            if as_text(raw.get("imei", raw.get(b"imei"))) != imei:
                continue
            records.append(record_from_entry(last_id, raw))
            if len(records) >= limit:
                return RecordPage(records, last_id, scanned)
        if len(entries) < count:
            return RecordPage(records, None, scanned)
        top = "(" + (last_id or "0-0")
