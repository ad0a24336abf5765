"""What the decoder produces: immutable values, one class per kind of frame.

The field names are those of the trackgate data contract (docs/redis-contract.md),
so that the ingest service can write them to Redis without renaming. Readers
build these objects; writers accept ``AvlRecord`` values built by hand (with
``raw=b""``). Nothing here parses or validates bytes.
"""

from __future__ import annotations

import dataclasses
from typing import TypeAlias

__all__ = [
    "AvlPacket",
    "AvlRecord",
    "Event",
    "GprsMessage",
    "Imei",
    "KeepAlive",
    "UdpDatagram",
]


@dataclasses.dataclass(frozen=True, slots=True)
class AvlRecord:
    """One AVL record of a Codec 8, 8 Extended or 16 packet, as the device sent it.

    Values are not corrected: a 1970 timestamp, a position without fix or a
    record older than the previous one stay as they are.

    Attributes:
        timestamp: device time, milliseconds since the UNIX epoch (u64).
        priority: 0 low, 1 high, 2 panic.
        longitude, latitude: degrees; the wire's signed int32 divided by 1e7.
        altitude: metres, signed.
        angle: heading in degrees.
        satellites: satellites in use; 0 means the position is not a fix.
        speed: km/h.
        event_id: IO id that caused the record, 0 for a periodic one.
        io: decimal IO id -> raw unsigned big-endian value; values of the
            Codec 8 Extended variable-length group are lower-case hex strings.
        generation_type: Codec 16 only, None for other codecs.
        raw: this record's bytes on the wire (empty for hand-built records);
            not part of equality.
    """

    timestamp: int
    priority: int
    longitude: float
    latitude: float
    altitude: int
    angle: int
    satellites: int
    speed: int
    event_id: int
    io: dict[str, int | str]
    generation_type: int | None = None
    raw: bytes = dataclasses.field(default=b"", compare=False, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Imei:
    """The login frame: the device identified itself."""

    imei: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAlive:
    """The single 0xFF byte a device sends on an idle link; never answered."""


@dataclasses.dataclass(frozen=True, slots=True)
class AvlPacket:
    """A decoded AVL data packet (Codec 8, 8 Extended or 16).

    Attributes:
        codec: 8, 142 (0x8E) or 16.
        records: in the order the device sent them.
        frame_size: bytes the packet took on the wire: the whole frame over
            TCP (preamble to CRC), codec id to Number of Data 2 over UDP.
    """

    codec: int
    records: tuple[AvlRecord, ...]
    frame_size: int


_TEXT_CONTROLS = frozenset("\r\n\t")


@dataclasses.dataclass(frozen=True, slots=True)
class GprsMessage:
    """A Codec 12, 13, 14 or 15 message (commands, responses, serial data).

    Attributes:
        codec: 12, 13, 14 or 15.
        type: message type (0x05 command, 0x06 response, 0x11 Codec 14 nACK,
            0x0D camera, 0x0B Codec 15, ...).
        payload: the message bytes after any timestamp and IMEI.
        timestamp: Codec 13 and 15 only: the 4-byte value, seconds as sent.
        imei: Codec 14 and 15 only: the IMEI carried in the message.
        quantity: Quantity 1 as sent (the wiki says parsers ignore it).
    """

    codec: int
    type: int
    payload: bytes
    timestamp: int | None = None
    imei: str | None = None
    quantity: int = 1

    @property
    def text(self) -> str | None:
        """The payload as text when it is printable UTF-8, else None."""
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if all(ch.isprintable() or ch in _TEXT_CONTROLS for ch in text):
            return text
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A device's UDP datagram: channel header, IMEI and one AVL packet.

    Attributes:
        packet_id: channel packet id, echoed in the reply.
        not_usable: the byte after the packet id, kept as sent.
        avl_packet_id: AVL packet id, echoed in the reply.
        imei: the device.
        packet: the AVL packet the datagram carries.
    """

    packet_id: int
    not_usable: int
    avl_packet_id: int
    imei: str
    packet: AvlPacket


Event: TypeAlias = Imei | KeepAlive | AvlPacket | GprsMessage


# The frozen dataclass __init__ sets each field through object.__setattr__,
# which makes building a record cost about three times what setting the slots
# directly does. The readers build one object per record on the hot path and
# pass values that are already typed, so they use this constructor.
_new_object = object.__new__
_slot = vars(AvlRecord)
_set_timestamp = _slot["timestamp"].__set__
_set_priority = _slot["priority"].__set__
_set_longitude = _slot["longitude"].__set__
_set_latitude = _slot["latitude"].__set__
_set_altitude = _slot["altitude"].__set__
_set_angle = _slot["angle"].__set__
_set_satellites = _slot["satellites"].__set__
_set_speed = _slot["speed"].__set__
_set_event_id = _slot["event_id"].__set__
_set_io = _slot["io"].__set__
_set_generation_type = _slot["generation_type"].__set__
_set_raw = _slot["raw"].__set__


def new_record(
    timestamp: int,
    priority: int,
    longitude: float,
    latitude: float,
    altitude: int,
    angle: int,
    satellites: int,
    speed: int,
    event_id: int,
    io: dict[str, int | str],
    generation_type: int | None,
    raw: bytes,
) -> AvlRecord:
    """``AvlRecord(...)`` for the readers: same result, a third of the cost."""
    record: AvlRecord = _new_object(AvlRecord)
    _set_timestamp(record, timestamp)
    _set_priority(record, priority)
    _set_longitude(record, longitude)
    _set_latitude(record, latitude)
    _set_altitude(record, altitude)
    _set_angle(record, angle)
    _set_satellites(record, satellites)
    _set_speed(record, speed)
    _set_event_id(record, event_id)
    _set_io(record, io)
    _set_generation_type(record, generation_type)
    _set_raw(record, raw)
    return record
