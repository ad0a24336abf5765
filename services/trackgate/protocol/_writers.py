"""Writers: the bytes a server sends, and the frames a device would send.

The server needs ``imei_reply``, ``tcp_ack``, ``udp_ack`` and
``encode_command``; the device simulator and the tests need the rest to
produce frames the readers accept. Every writer validates its input and
raises ``LocalProtocolError`` for values the wire format cannot carry; none
of them does IO.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from trackgate.protocol._crc import crc16_ibm
from trackgate.protocol._errors import LocalProtocolError
from trackgate.protocol._events import AvlRecord
from trackgate.protocol._imei import is_valid_imei, pack_imei
from trackgate.protocol._readers import (
    CODEC_8,
    CODEC_8E,
    CODEC_12,
    CODEC_13,
    CODEC_14,
    CODEC_15,
    CODEC_16,
    GPRS_CODECS,
)

__all__ = [
    "COMMAND_TYPE",
    "NACK_TYPE",
    "RESPONSE_TYPE",
    "encode_avl_packet",
    "encode_command",
    "encode_gprs_message",
    "encode_imei",
    "encode_udp_datagram",
    "imei_reply",
    "tcp_ack",
    "udp_ack",
]

COMMAND_TYPE = 0x05
RESPONSE_TYPE = 0x06
NACK_TYPE = 0x11

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">II")
_UDP_ACK = struct.Struct(">HHBBB")
_UDP_HEAD = struct.Struct(">HHBBH")
_GPRS_HEAD = struct.Struct(">BBBI")
_RECORD_HEAD = struct.Struct(">QBiihHBH")
_UDP_ACK_LENGTH = 5
_UDP_ACK_NOT_USABLE = 1

_WIDTHS = (1, 2, 4, 8)
_VALUE_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _Layout:
    """Field widths that differ between Codec 8, 8 Extended and 16."""

    def __init__(self, codec: int, id_code: str, count_code: str, head: str) -> None:
        self.codec = codec
        self.id_code = id_code
        self.count = struct.Struct(">" + count_code)
        self.head = struct.Struct(">" + head)
        self.max_id = 0xFF if id_code == "B" else 0xFFFF


_LAYOUTS = {
    CODEC_8: _Layout(CODEC_8, "B", "B", "BB"),  # event id, total
    CODEC_8E: _Layout(CODEC_8E, "H", "H", "HH"),  # event id, total
    CODEC_16: _Layout(CODEC_16, "H", "B", "HBB"),  # event id, generation, total
}


def encode_imei(imei: str) -> bytes:
    """The login frame a device sends: u16 length, then the IMEI digits."""
    raw = imei.encode("ascii", "replace")
    if not is_valid_imei(raw):
        raise LocalProtocolError(f"{imei!r} is not a 15 or 16-digit IMEI")
    return _U16.pack(len(raw)) + raw


def imei_reply(accepted: bool) -> bytes:
    """The one byte that answers a login frame: 0x01 accept, 0x00 refuse."""
    return b"\x01" if accepted else b"\x00"


def tcp_ack(count: int) -> bytes:
    """The TCP answer to an AVL packet: records accepted, as a u32."""
    return _pack(_U32, count)


def udp_ack(packet_id: int, avl_packet_id: int, count: int) -> bytes:
    """The UDP answer: ``0005``, packet id, ``01``, AVL packet id, records accepted."""
    return _pack(
        _UDP_ACK, _UDP_ACK_LENGTH, packet_id, _UDP_ACK_NOT_USABLE, avl_packet_id, count
    )


def encode_avl_packet(
    codec: int,
    records: Sequence[AvlRecord],
    *,
    io_widths: Mapping[str, int] | None = None,
) -> bytes:
    """A TCP frame carrying ``records`` in Codec 8, 8 Extended (0x8E) or 16.

    Args:
        codec: 8, 0x8E or 16.
        records: written in the given order; ``raw`` is ignored.
        io_widths: value width in bytes (1, 2, 4 or 8) per IO id, as a
            device's AVL ID table fixes them. IOs not listed take the
            smallest width that holds their value. String values are the
            variable-length group of Codec 8 Extended.

    Raises:
        LocalProtocolError: unknown codec, or a value out of its field's range.
    """
    data = _avl_data(codec, records, io_widths or {})
    return _FRAME_HEAD.pack(0, len(data)) + data + _U32.pack(crc16_ibm(data))


def encode_udp_datagram(
    *,
    packet_id: int,
    avl_packet_id: int,
    imei: str,
    codec: int,
    records: Sequence[AvlRecord],
    not_usable: int = 1,
    io_widths: Mapping[str, int] | None = None,
) -> bytes:
    """A device's UDP datagram carrying ``records`` (see ``encode_avl_packet``)."""
    raw_imei = encode_imei(imei)[2:]
    data = _avl_data(codec, records, io_widths or {})
    rest_size = _UDP_HEAD.size - 2 + len(raw_imei) + len(data)
    head = _pack(
        _UDP_HEAD, rest_size, packet_id, not_usable, avl_packet_id, len(raw_imei)
    )
    return head + raw_imei + data


def encode_command(
    command: str | bytes, *, codec: int = CODEC_12, imei: str | None = None
) -> bytes:
    """A command frame for a device: Codec 12, or Codec 14 addressed to ``imei``.

    Args:
        command: the command text (ASCII, no SMS login prefix) or raw bytes.
        codec: 12 or 14.
        imei: required for Codec 14; the device runs the command only if it
            matches its own IMEI.
    """
    if codec not in (CODEC_12, CODEC_14):
        raise LocalProtocolError(f"commands are Codec 12 or 14, not {codec}")
    if isinstance(command, str):
        try:
            payload = command.encode("ascii")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"command {command!r} is not ASCII") from exc
    else:
        payload = bytes(command)
    return encode_gprs_message(
        codec, COMMAND_TYPE, payload, imei=imei if codec == CODEC_14 else None
    )


def encode_gprs_message(
    codec: int,
    type: int,
    payload: bytes,
    *,
    timestamp: int | None = None,
    imei: str | None = None,
    quantity: int = 1,
) -> bytes:
    """Any Codec 12, 13, 14 or 15 frame.

    Codec 13 needs ``timestamp`` (seconds, u32), Codec 14 needs ``imei``,
    Codec 15 both; Codec 12 takes neither.
    """
    if codec not in GPRS_CODECS:
        raise LocalProtocolError(f"codec {codec} is not a GPRS message codec")
    wants_time = codec in (CODEC_13, CODEC_15)
    wants_imei = codec in (CODEC_14, CODEC_15)
    if wants_time != (timestamp is not None):
        raise LocalProtocolError(f"codec {codec} timestamp: {timestamp!r}")
    if wants_imei != (imei is not None):
        raise LocalProtocolError(f"codec {codec} IMEI: {imei!r}")

    body = bytes(payload)
    if imei is not None:
        packed = pack_imei(imei)
        if packed is None:
            raise LocalProtocolError(f"IMEI {imei!r} cannot be packed into 8 bytes")
        body = packed + body
    if timestamp is not None:
        body = _pack(_U32, timestamp) + body
    head = _pack(_GPRS_HEAD, codec, quantity, type, len(body))
    data = head + body + bytes([quantity])
    return _FRAME_HEAD.pack(0, len(data)) + data + _U32.pack(crc16_ibm(data))


def _pack(layout: struct.Struct, *values: object) -> bytes:
    """``layout.pack`` with range errors reported as our misuse."""
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(
            f"value out of range for {layout.format}: {exc}"
        ) from exc


def _avl_data(
    codec: int, records: Sequence[AvlRecord], io_widths: Mapping[str, int]
) -> bytes:
    layout = _LAYOUTS.get(codec)
    if layout is None:
        raise LocalProtocolError(f"codec {codec} is not an AVL codec (8, 0x8E, 16)")
    if len(records) > 0xFF:
        raise LocalProtocolError(f"{len(records)} records do not fit one packet")
    count = bytes([len(records)])
    parts = [bytes([codec]), count]
    parts.extend(_record(layout, record, io_widths) for record in records)
    parts.append(count)
    return b"".join(parts)


def _record(layout: _Layout, record: AvlRecord, io_widths: Mapping[str, int]) -> bytes:
    groups: dict[int, list[tuple[int, int]]] = {width: [] for width in _WIDTHS}
    variable: list[tuple[int, bytes]] = []
    for key, value in record.io.items():
        io_id = _io_id(key, layout.max_id)
        if isinstance(value, str):
            if layout.codec != CODEC_8E:
                raise LocalProtocolError(
                    f"IO {key}: hex values need Codec 8 Extended, not {layout.codec}"
                )
            variable.append((io_id, _hex_value(key, value)))
        else:
            groups[_width(key, value, io_widths)].append((io_id, value))

    try:
        longitude = round(record.longitude * 1e7)
        latitude = round(record.latitude * 1e7)
    except (ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"coordinates: {exc}") from exc
    total = sum(len(pairs) for pairs in groups.values()) + len(variable)
    event: tuple[int, ...]
    if layout.codec == CODEC_16:
        if record.generation_type is None:
            raise LocalProtocolError("Codec 16 records need a generation_type")
        event = (record.event_id, record.generation_type, total)
    else:
        event = (record.event_id, total)

    parts = [
        _pack(
            _RECORD_HEAD,
            record.timestamp,
            record.priority,
            longitude,
            latitude,
            record.altitude,
            record.angle,
            record.satellites,
            record.speed,
        ),
        _pack(layout.head, *event),
    ]
    for width in _WIDTHS:
        pairs = groups[width]
        parts.append(_pack(layout.count, len(pairs)))
        if pairs:
            pair_layout = struct.Struct(
                ">" + (layout.id_code + _VALUE_CODE[width]) * len(pairs)
            )
            parts.append(_pack(pair_layout, *(v for pair in pairs for v in pair)))
    if layout.codec == CODEC_8E:
        parts.append(_pack(layout.count, len(variable)))
        for io_id, blob in variable:
            parts.append(_pack(_U16, io_id) + _pack(_U16, len(blob)) + blob)
    return b"".join(parts)


def _io_id(key: str, max_id: int) -> int:
    if not (key.isascii() and key.isdigit()) or str(int(key)) != key:
        raise LocalProtocolError(f"IO key {key!r} is not a decimal IO id")
    io_id = int(key)
    if io_id > max_id:
        raise LocalProtocolError(f"IO id {io_id} does not fit this codec's id field")
    return io_id


def _hex_value(key: str, value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise LocalProtocolError(f"IO {key}: {value!r} is not hex") from exc


def _width(key: str, value: int, io_widths: Mapping[str, int]) -> int:
    if value < 0:
        raise LocalProtocolError(f"IO {key}: values are unsigned, got {value}")
    width = io_widths.get(key)
    if width is None:
        for width in _WIDTHS:
            if value < 1 << (8 * width):
                return width
        raise LocalProtocolError(f"IO {key}: {value} does not fit 8 bytes")
    if width not in _VALUE_CODE:
        raise LocalProtocolError(f"IO {key}: width {width} is not 1, 2, 4 or 8")
    return width
