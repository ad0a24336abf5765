"""Readers: complete frames and datagrams in, events out.

``TcpServerConnection`` cuts the byte stream into frames and hands each one to
``read_tcp_frame``; the public stateless helpers ``decode_tcp_frame`` and
``decode_udp_datagram`` wrap the same code. Everything here works on bytes
already in memory: waiting for more data is the connection's job.

The record path runs for every record the gateway stores, on one core, so it
is written for speed: one precompiled ``struct.Struct`` per record header, one
per IO group size (cached), ``unpack_from`` on a memoryview, IO keys from a
precomputed table, and no Python loop per byte: the only loops run per record
and per IO element.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from trackgate.protocol._crc import crc16_ibm
from trackgate.protocol._errors import (
    BadImei,
    BadPreamble,
    BadUdpDatagram,
    CountMismatch,
    CrcMismatch,
    MalformedFrame,
    TruncatedFrame,
    UnknownCodec,
)
from trackgate.protocol._events import (
    AvlPacket,
    AvlRecord,
    GprsMessage,
    UdpDatagram,
    new_record,
)
from trackgate.protocol._imei import PACKED_IMEI_SIZE, is_valid_imei, unpack_imei

__all__ = [
    "AVL_CODECS",
    "CODEC_8",
    "CODEC_8E",
    "CODEC_12",
    "CODEC_13",
    "CODEC_14",
    "CODEC_15",
    "CODEC_16",
    "GPRS_CODECS",
    "MIN_DATA_LENGTH",
    "RECORD_DECODER",
    "TCP_ENVELOPE_SIZE",
    "decode_tcp_frame",
    "decode_udp_datagram",
    "read_tcp_frame",
]

CODEC_8 = 0x08
CODEC_8E = 0x8E
CODEC_16 = 0x10
CODEC_12 = 0x0C
CODEC_13 = 0x0D
CODEC_14 = 0x0E
CODEC_15 = 0x0F
AVL_CODECS = frozenset({CODEC_8, CODEC_8E, CODEC_16})
GPRS_CODECS = frozenset({CODEC_12, CODEC_13, CODEC_14, CODEC_15})

# Preamble (4) + data length (4) before the data field, CRC field (4) after it.
TCP_ENVELOPE_SIZE = 12
DATA_OFFSET = 8
# Codec id, Number of Data 1 and Number of Data 2: a packet with no records.
MIN_DATA_LENGTH = 3

FRAME_HEAD = struct.Struct(">II")  # preamble, data field length
_U32 = struct.Struct(">I")
# Codec, quantity 1, type, size: the head of every GPRS message.
_GPRS_HEAD = struct.Struct(">BBBI")
_GPRS_HEAD_SIZE = _GPRS_HEAD.size
# Packet length, packet id, not-usable byte, AVL packet id, IMEI length.
_UDP_HEAD = struct.Struct(">HHBBH")
_U16_PAIR = struct.Struct(">HH")

# Record header: timestamp, priority, longitude, latitude, altitude, angle,
# satellites, speed; then each codec's event id (and counts) in the same unpack.
_REC_8 = struct.Struct(">QBiihHBHBB")  # + event id u8, total IO u8
_REC_8E = struct.Struct(">QBiihHBHHH")  # + event id u16, total IO u16
_REC_16 = struct.Struct(">QBiihHBHHBB")  # + event id u16, generation type, total

_COORD_SCALE = 1e7
_VALUE_CODES = ("B", "H", "I", "Q")  # IO groups of 1, 2, 4 and 8-byte values

# Decimal keys of every possible IO id, so the record path never calls str().
_IO_KEYS: tuple[str, ...] = tuple(str(i) for i in range(0x10000))

# IO-group structs are cached for counts up to this size: a record holds a few
# dozen IOs, and a Codec 8/16 count byte cannot exceed it. Larger Codec 8E
# counts are built per use, after checking they fit the data, so that corrupt
# input can neither grow the cache nor compile a huge struct.
_GROUP_CACHE_MAX_COUNT = 255


class _GroupLayouts:
    """Structs for ``n`` (id, value) pairs of one id width and one value width."""

    __slots__ = ("_pair", "cache", "pair_size")

    def __init__(self, id_code: str, value_code: str) -> None:
        self._pair = id_code + value_code
        self.pair_size = struct.calcsize(">" + self._pair)
        self.cache: dict[int, struct.Struct] = {}

    def build(self, count: int, room: int) -> struct.Struct:
        """The struct for ``count`` pairs, which must fit in ``room`` bytes."""
        if count * self.pair_size > room:
            raise IndexError(f"{count} IO pairs do not fit in {room} bytes")
        made = struct.Struct(">" + self._pair * count)
        if count <= _GROUP_CACHE_MAX_COUNT:
            self.cache[count] = made
        return made


class _Codec:
    """How one AVL codec lays out a record after the common GPS header."""

    __slots__ = ("groups", "has_generation", "head", "variable_group", "wide_counts")

    def __init__(
        self,
        head: str,
        id_code: str,
        *,
        wide_counts: bool,
        has_generation: bool,
        variable_group: bool,
    ) -> None:
        # Timestamp, priority, longitude, latitude, altitude, angle,
        # satellites, speed, then the codec's event id, generation and total.
        self.head = struct.Struct(">QBiihHBH" + head)
        self.groups = tuple(_GroupLayouts(id_code, code) for code in _VALUE_CODES)
        self.wide_counts = wide_counts
        self.has_generation = has_generation
        self.variable_group = variable_group


_CODECS = {
    CODEC_8: _Codec(
        "BB", "B", wide_counts=False, has_generation=False, variable_group=False
    ),
    CODEC_8E: _Codec(
        "HH", "H", wide_counts=True, has_generation=False, variable_group=True
    ),
    CODEC_16: _Codec(
        "HBB", "H", wide_counts=False, has_generation=True, variable_group=False
    ),
}


def _read_records(
    view: memoryview, count: int, codec: _Codec
) -> tuple[list[AvlRecord], int]:
    """Read ``count`` records from the start of ``view``; returns them and the end.

    Running out of data surfaces as ``struct.error`` or ``IndexError``, which
    the caller turns into ``MalformedFrame``.
    """
    records: list[AvlRecord] = []
    unpack_head = codec.head.unpack_from
    head_size = codec.head.size
    has_generation = codec.has_generation
    pos = 0
    for _ in range(count):
        start = pos
        head = unpack_head(view, pos)
        pos += head_size
        io: dict[str, int | str] = {}
        pos = _read_io_groups(view, pos, codec, io)
        records.append(
            new_record(
                head[0],
                head[1],
                head[2] / _COORD_SCALE,
                head[3] / _COORD_SCALE,
                head[4],
                head[5],
                head[6],
                head[7],
                head[8],
                io,
                head[9] if has_generation else None,
                view[start:pos].tobytes(),
            )
        )
    return records, pos


def _compiled_reader() -> (
    Callable[[memoryview, int, int], tuple[list[AvlRecord], int]] | None
):
    """The compiled record loop, when it was built.

    ``_read_records`` stays the reference: the compiled loop is tested
    against it, and it runs where no C compiler built the extension.
    """
    try:
        from trackgate.protocol import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    _speedups.setup(AvlRecord, _IO_KEYS)
    reader: Callable[[memoryview, int, int], tuple[list[AvlRecord], int]]
    reader = _speedups.read_records
    return reader


_fast_read_records = _compiled_reader()
#: Which record loop decodes: "compiled" or "python".
RECORD_DECODER = "python" if _fast_read_records is None else "compiled"


def _read_io_groups(
    view: memoryview, pos: int, codec: _Codec, io: dict[str, int | str]
) -> int:
    """Read the 1/2/4/8-byte IO groups (and 8E's variable group) into ``io``."""
    io_keys = _IO_KEYS
    wide_counts = codec.wide_counts
    for group in codec.groups:
        if wide_counts:
            n = (view[pos] << 8) | view[pos + 1]
            pos += 2
        else:
            n = view[pos]
            pos += 1
        if n:
            layout = group.cache.get(n) or group.build(n, len(view) - pos)
            values = layout.unpack_from(view, pos)
            pos += layout.size
            pairs = iter(values)
            for io_id, value in zip(pairs, pairs, strict=False):
                io[io_keys[io_id]] = value

    if codec.variable_group:
        # Codec 8 Extended's NX group: (id u16, length u16, value) each.
        n = (view[pos] << 8) | view[pos + 1]
        pos += 2
        for _ in range(n):
            io_id, length = _U16_PAIR.unpack_from(view, pos)
            pos += 4
            value = view[pos : pos + length]
            if len(value) != length:
                raise IndexError("variable-length IO runs past the end of the data")
            io[io_keys[io_id]] = value.hex()
            pos += length
    return pos


def read_avl_data(data: memoryview, base: int, frame_size: int) -> AvlPacket:
    """Decode an AVL data field: codec id, Number of Data 1, records, Number of Data 2.

    ``base`` is the offset of ``data`` in the caller's frame, used in errors.
    """
    codec = data[0]
    layout = _CODECS.get(codec)
    if layout is None:
        raise UnknownCodec(f"codec 0x{codec:02x} is not an AVL codec", offset=base)
    count = data[1]
    count2 = data[-1]
    if count != count2:
        raise CountMismatch(
            f"Number of Data 1 is {count}, Number of Data 2 is {count2}",
            offset=base + len(data) - 1,
        )

    body = data[2:-1]
    try:
        if _fast_read_records is not None:
            records, end = _fast_read_records(body, count, codec)
        else:
            records, end = _read_records(body, count, layout)
    except (struct.error, IndexError):
        raise MalformedFrame(
            f"codec 0x{codec:02x}: {count} records do not fit in {len(body)} bytes",
            offset=base + 2,
            fatal=False,
        ) from None
    if end != len(body):
        raise MalformedFrame(
            f"codec 0x{codec:02x}: {count} records end {len(body) - end} bytes "
            "before Number of Data 2",
            offset=base + 2 + end,
            fatal=False,
        )
    return AvlPacket(codec=codec, records=tuple(records), frame_size=frame_size)


def _read_gprs_message(data: memoryview, base: int) -> GprsMessage:
    """Decode a Codec 12/13/14/15 data field, parsed by its Size field."""
    if len(data) < _GPRS_HEAD_SIZE + 1:
        raise MalformedFrame(
            f"a GPRS message needs {_GPRS_HEAD_SIZE + 1} bytes, the frame has "
            f"{len(data)}",
            offset=base,
            fatal=False,
        )
    codec, quantity, msg_type, size = _GPRS_HEAD.unpack_from(data)
    quantity2 = data[-1]
    if quantity != quantity2:
        raise CountMismatch(
            f"Quantity 1 is {quantity}, Quantity 2 is {quantity2}",
            offset=base + len(data) - 1,
        )
    body = data[_GPRS_HEAD_SIZE:-1]
    if size != len(body):
        raise MalformedFrame(
            f"codec {codec}: Size says {size} bytes, the frame holds {len(body)}",
            offset=base + 3,
            fatal=False,
        )

    timestamp: int | None = None
    imei: str | None = None
    pos = 0
    if codec in (CODEC_13, CODEC_15):
        if len(body) < pos + _U32.size:
            raise MalformedFrame(
                f"codec {codec}: no room for the timestamp",
                offset=base + _GPRS_HEAD_SIZE,
                fatal=False,
            )
        (timestamp,) = _U32.unpack_from(body, pos)
        pos += _U32.size
    if codec in (CODEC_14, CODEC_15):
        packed = body[pos : pos + PACKED_IMEI_SIZE].tobytes()
        imei = unpack_imei(packed) if len(packed) == PACKED_IMEI_SIZE else None
        if imei is None:
            raise MalformedFrame(
                f"codec {codec}: the IMEI field {packed.hex()!r} is not 8 BCD bytes",
                offset=base + _GPRS_HEAD_SIZE + pos,
                fatal=False,
            )
        pos += PACKED_IMEI_SIZE

    return GprsMessage(
        codec=codec,
        type=msg_type,
        payload=body[pos:].tobytes(),
        timestamp=timestamp,
        imei=imei,
        quantity=quantity,
    )


def read_tcp_frame(frame: bytes, length: int) -> AvlPacket | GprsMessage:
    """Decode one complete TCP frame whose header was already checked.

    ``frame`` is exactly ``length + 12`` bytes: zero preamble, data length,
    data field, CRC field. Errors raised here are never fatal: the frame's
    bytes are accounted for, whatever they hold.
    """
    view = memoryview(frame)
    data = view[DATA_OFFSET : DATA_OFFSET + length]
    (crc_field,) = _U32.unpack_from(view, DATA_OFFSET + length)
    crc = crc16_ibm(data)
    if crc != crc_field:
        raise CrcMismatch(
            f"CRC field is 0x{crc_field:08x}, data gives 0x{crc:04x}",
            offset=DATA_OFFSET + length,
        )

    codec = data[0]
    if codec in AVL_CODECS:
        return read_avl_data(data, DATA_OFFSET, len(frame))
    if codec in GPRS_CODECS:
        return _read_gprs_message(data, DATA_OFFSET)
    raise UnknownCodec(f"codec 0x{codec:02x} is not supported", offset=DATA_OFFSET)


def check_frame_head(preamble: int, length: int) -> None:
    """Raise the fatal error a bad TCP frame header deserves, if any."""
    if preamble != 0:
        raise BadPreamble(
            f"frame starts with 0x{preamble:08x}, not the zero preamble", offset=0
        )
    if length < MIN_DATA_LENGTH:
        raise MalformedFrame(
            f"data length {length} is below the minimum of {MIN_DATA_LENGTH}",
            offset=4,
        )


def decode_tcp_frame(frame: bytes) -> AvlPacket | GprsMessage:
    """Decode one complete TCP frame, preamble to CRC.

    Args:
        frame: exactly one frame; a stream with an IMEI, keep-alives or
            several frames goes through ``decode_stream`` instead.

    Returns:
        ``AvlPacket`` for codecs 8, 8E and 16, ``GprsMessage`` for 12 to 15.

    Raises:
        TruncatedFrame: fewer bytes than the header announces.
        MalformedFrame: more bytes than announced, a length below the
            minimum, or records that do not fill the data field exactly.
        BadPreamble, CrcMismatch, CountMismatch, UnknownCodec: as named.
    """
    frame = bytes(frame)
    if len(frame) < DATA_OFFSET:
        raise TruncatedFrame(
            f"{len(frame)} bytes cannot hold a frame header", offset=len(frame)
        )
    preamble, length = FRAME_HEAD.unpack_from(frame)
    check_frame_head(preamble, length)
    wanted = length + TCP_ENVELOPE_SIZE
    if len(frame) < wanted:
        raise TruncatedFrame(
            f"header announces {wanted} bytes, got {len(frame)}", offset=len(frame)
        )
    if len(frame) > wanted:
        raise MalformedFrame(
            f"header announces {wanted} bytes, got {len(frame)}", offset=wanted
        )
    return read_tcp_frame(frame, length)


class UdpHead(NamedTuple):
    """The fields of a device datagram before its AVL data."""

    length: int  # the length field: bytes after it
    packet_id: int
    avl_packet_id: int
    imei: str | None  # None unless whole, all digits, of an allowed length


def read_udp_head(data: bytes) -> UdpHead | None:
    """The head of a device datagram, the rest left unread; None when
    ``data`` is shorter than the fixed part. It names the device of a
    datagram that fails to decode, or that a capture cut short."""
    if len(data) < _UDP_HEAD.size:
        return None
    length, packet_id, _, avl_packet_id, imei_length = _UDP_HEAD.unpack_from(data)
    raw = data[_UDP_HEAD.size : _UDP_HEAD.size + imei_length]
    whole = len(raw) == imei_length and is_valid_imei(raw)
    imei = raw.decode("ascii") if whole else None
    return UdpHead(length, packet_id, avl_packet_id, imei)


def decode_udp_datagram(data: bytes) -> UdpDatagram:
    """Decode a device's UDP datagram (Codec 8, 8E or 16 payload).

    Raises:
        BadUdpDatagram: the length field does not match the datagram, or the
            IMEI length does not fit.
        BadImei: the IMEI is not 15 or 16 digits.
        UnknownCodec, CountMismatch, MalformedFrame: as for TCP frames.
        All of them are non-fatal: the next datagram is unaffected.
    """
    data = bytes(data)
    head_size = _UDP_HEAD.size
    if len(data) < head_size:
        raise BadUdpDatagram(
            f"{len(data)} bytes cannot hold a datagram header", offset=len(data)
        )
    length, packet_id, not_usable, avl_packet_id, imei_length = _UDP_HEAD.unpack_from(
        data
    )
    if length != len(data) - 2:
        raise BadUdpDatagram(
            f"length field says {length} bytes follow, {len(data) - 2} do", offset=0
        )
    avl_start = head_size + imei_length
    if avl_start + MIN_DATA_LENGTH > len(data):
        raise BadUdpDatagram(
            f"IMEI length {imei_length} leaves no room for AVL data", offset=6
        )
    raw_imei = data[head_size:avl_start]
    if not is_valid_imei(raw_imei):
        raise BadImei(
            f"{raw_imei!r} is not a 15 or 16-digit IMEI", offset=head_size, fatal=False
        )

    view = memoryview(data)
    packet = read_avl_data(view[avl_start:], avl_start, len(data) - avl_start)
    return UdpDatagram(
        packet_id=packet_id,
        not_usable=not_usable,
        avl_packet_id=avl_packet_id,
        imei=raw_imei.decode("ascii"),
        packet=packet,
    )
