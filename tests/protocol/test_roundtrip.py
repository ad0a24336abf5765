"""Property tests: what the writers produce, the readers give back unchanged."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.protocol import strategies as gen
from trackgate.protocol import (
    AvlPacket,
    AvlRecord,
    Event,
    GprsMessage,
    Imei,
    TcpServerConnection,
    crc16_ibm,
    decode_stream,
    decode_tcp_frame,
    decode_udp_datagram,
    encode_avl_packet,
    encode_command,
    encode_gprs_message,
    encode_udp_datagram,
)


def reference_crc16_arc(data: bytes) -> int:
    """The per-byte CRC-16/ARC of the Teltonika documents, as an oracle."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_crc16_ibm_has_the_catalogue_check_value() -> None:
    assert crc16_ibm(b"123456789") == 0xBB3D


@given(st.binary(max_size=300))
def test_crc16_ibm_matches_the_documented_per_byte_algorithm(data: bytes) -> None:
    assert crc16_ibm(data) == reference_crc16_arc(data)
    assert crc16_ibm(memoryview(bytearray(data))) == reference_crc16_arc(data)


@given(gen.packets())
def test_avl_packet_survives_encode_and_decode(
    packet: tuple[int, list[AvlRecord], dict[str, int]],
) -> None:
    codec, records, widths = packet
    frame = encode_avl_packet(codec, records, io_widths=widths)

    decoded = decode_tcp_frame(frame)

    assert decoded == AvlPacket(
        codec=codec, records=tuple(records), frame_size=len(frame)
    )
    assert b"".join(r.raw for r in decoded.records) == frame[10:-5]
    # The raw bytes are enough to rebuild the frame exactly.
    assert encode_avl_packet(codec, decoded.records, io_widths=widths) == frame


@given(gen.packets(), gen.imeis, gen.U16, gen.U8, gen.U8)
def test_udp_datagram_survives_encode_and_decode(
    packet: tuple[int, list[AvlRecord], dict[str, int]],
    imei: str,
    packet_id: int,
    avl_packet_id: int,
    not_usable: int,
) -> None:
    codec, records, widths = packet
    data = encode_udp_datagram(
        packet_id=packet_id,
        avl_packet_id=avl_packet_id,
        imei=imei,
        codec=codec,
        records=records,
        not_usable=not_usable,
        io_widths=widths,
    )

    datagram = decode_udp_datagram(data)

    assert datagram.imei == imei
    assert (datagram.packet_id, datagram.avl_packet_id) == (packet_id, avl_packet_id)
    assert datagram.not_usable == not_usable
    assert datagram.packet.codec == codec
    assert list(datagram.packet.records) == records


@given(st.binary(max_size=200), gen.packable_imeis)
def test_commands_survive_encode_and_decode(payload: bytes, imei: str) -> None:
    assert decode_tcp_frame(encode_command(payload)) == GprsMessage(
        codec=12, type=5, payload=payload
    )
    assert decode_tcp_frame(encode_command(payload, codec=14, imei=imei)) == (
        GprsMessage(codec=14, type=5, payload=payload, imei=imei)
    )


@given(
    st.sampled_from([12, 13, 14, 15]),
    gen.U8,
    st.binary(max_size=200),
    gen.U32,
    gen.packable_imeis,
    gen.U8,
)
def test_gprs_messages_survive_encode_and_decode(
    codec: int, msg_type: int, payload: bytes, timestamp: int, imei: str, quantity: int
) -> None:
    timestamp_or_none = timestamp if codec in (13, 15) else None
    imei_or_none = imei if codec in (14, 15) else None
    frame = encode_gprs_message(
        codec,
        msg_type,
        payload,
        timestamp=timestamp_or_none,
        imei=imei_or_none,
        quantity=quantity,
    )

    assert decode_tcp_frame(frame) == GprsMessage(
        codec=codec,
        type=msg_type,
        payload=payload,
        timestamp=timestamp_or_none,
        imei=imei_or_none,
        quantity=quantity,
    )


@given(st.data())
def test_any_split_of_a_session_gives_the_same_events(data: st.DataObject) -> None:
    stream = data.draw(gen.sessions())
    expected = decode_stream(stream)
    chunks = data.draw(gen.splits(stream))
    conn = TcpServerConnection()
    events: list[Event] = []

    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            events.append(event)
            if isinstance(event, Imei):
                conn.accept_imei(True)
        assert conn.buffered <= conn.max_packet_size

    assert events == expected
    assert conn.buffered == 0
