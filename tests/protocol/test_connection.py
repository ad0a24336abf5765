"""TcpServerConnection: login, keep-alives, bounds, and what happens after errors."""

from __future__ import annotations

import struct

import pytest

from tests.protocol import vectors as vec
from trackgate.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    AvlPacket,
    AvlRecord,
    BadImei,
    BadPreamble,
    ConnectionState,
    CountMismatch,
    CrcMismatch,
    FrameTooLarge,
    GprsMessage,
    Imei,
    KeepAlive,
    LocalProtocolError,
    MalformedFrame,
    TcpServerConnection,
    TruncatedFrame,
    UnknownCodec,
    crc16_ibm,
    decode_stream,
    decode_tcp_frame,
    encode_avl_packet,
    encode_command,
    encode_imei,
    iter_stream,
)

IMEI = "352093081452251"
FRAME = vec.frame_bytes(vec.BY_ID["wiki-codec8-tcp-ex1"])
PACKET = decode_tcp_frame(FRAME)


def streaming() -> TcpServerConnection:
    conn = TcpServerConnection()
    conn.receive_data(encode_imei(IMEI))
    assert conn.next_event() == Imei(IMEI)
    assert conn.accept_imei(True) == b"\x01"
    assert conn.state is ConnectionState.STREAMING
    return conn


def with_crc(data_field: bytes) -> bytes:
    """A frame around ``data_field`` with a correct CRC."""
    head = struct.pack(">II", 0, len(data_field))
    return head + data_field + struct.pack(">I", crc16_ibm(data_field))


def test_accepted_login_moves_to_streaming_and_reads_packets() -> None:
    conn = streaming()
    conn.receive_data(FRAME)

    assert conn.next_event() == PACKET
    assert conn.next_event() is None
    assert conn.imei == IMEI


def test_refused_login_closes_the_connection_for_reading() -> None:
    conn = TcpServerConnection()
    conn.receive_data(encode_imei(IMEI))
    conn.next_event()

    assert conn.accept_imei(False) == b"\x00"
    assert conn.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(FRAME)


def test_accept_imei_before_the_login_arrived_is_a_local_error() -> None:
    conn = TcpServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.accept_imei(True)
    streaming_conn = streaming()
    with pytest.raises(LocalProtocolError):
        streaming_conn.accept_imei(True)


def test_packets_wait_until_the_login_is_answered() -> None:
    conn = TcpServerConnection()
    conn.receive_data(encode_imei(IMEI) + FRAME)

    assert conn.next_event() == Imei(IMEI)
    assert conn.next_event() is None
    assert conn.buffered == len(FRAME)
    conn.accept_imei(True)
    assert conn.next_event() == PACKET


def test_flood_before_the_login_is_answered_is_fatal() -> None:
    conn = TcpServerConnection()
    conn.receive_data(encode_imei(IMEI))
    conn.next_event()
    conn.receive_data(bytes(DEFAULT_MAX_PACKET_SIZE + 1))

    with pytest.raises(FrameTooLarge) as caught:
        conn.next_event()
    assert caught.value.fatal is True
    assert conn.state is ConnectionState.ERROR


@pytest.mark.parametrize(
    "login",
    [
        b"\x00\x0f" + b"35209308145225X",  # a letter
        b"\x00\x0e" + b"35209308145225",  # 14 digits
        b"\x00\x11" + b"35209308145225123",  # 17 digits
        b"\x00\x00",  # an AVL preamble where the login belongs
        b"\x01\x00",  # 256 bytes announced
    ],
)
def test_login_that_is_not_an_imei_is_fatal(login: bytes) -> None:
    conn = TcpServerConnection()
    conn.receive_data(login)

    with pytest.raises(BadImei) as caught:
        conn.next_event()

    assert caught.value.kind == "bad_imei"
    assert caught.value.fatal is True
    assert caught.value.offset == 0
    assert conn.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_non_digit_login_is_refused_before_it_is_complete() -> None:
    conn = TcpServerConnection()
    conn.receive_data(b"\x00\x0f35A")

    with pytest.raises(BadImei):
        conn.next_event()


def test_sixteen_digit_imeisv_is_accepted() -> None:
    conn = TcpServerConnection()
    conn.receive_data(encode_imei("3520930814522510"))

    assert conn.next_event() == Imei("3520930814522510")


def test_keepalives_before_login_and_between_frames_are_events() -> None:
    conn = TcpServerConnection()
    conn.receive_data(b"\xff\xff" + encode_imei(IMEI))
    assert conn.next_event() == KeepAlive()
    assert conn.next_event() == KeepAlive()
    assert conn.next_event() == Imei(IMEI)
    conn.accept_imei(True)
    conn.receive_data(b"\xff" + FRAME + b"\xff")

    assert conn.next_event() == KeepAlive()
    assert conn.next_event() == PACKET
    assert conn.next_event() == KeepAlive()
    assert conn.next_event() is None


def test_several_packets_in_one_chunk_come_out_one_by_one() -> None:
    conn = streaming()
    command = encode_command("getinfo")
    conn.receive_data(FRAME + command + FRAME)

    assert conn.next_event() == PACKET
    assert conn.next_event() == GprsMessage(codec=12, type=5, payload=b"getinfo")
    assert conn.next_event() == PACKET
    assert conn.buffered == 0


def test_huge_length_field_is_refused_before_buffering_it() -> None:
    conn = streaming()
    conn.receive_data(struct.pack(">II", 0, 0x7FFFFFF0))

    with pytest.raises(FrameTooLarge) as caught:
        conn.next_event()

    assert caught.value.fatal is True
    assert caught.value.offset == 17 + 4  # after the login, at the length field
    assert conn.buffered == 8
    assert conn.state is ConnectionState.ERROR


def test_frame_at_the_bound_is_read_and_one_byte_more_is_refused() -> None:
    records = [
        AvlRecord(0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {"256": "00" * 200}, raw=b"")
    ] * 4
    frame = encode_avl_packet(0x8E, records)
    at_bound = TcpServerConnection(max_packet_size=len(frame), expect_imei=False)
    at_bound.receive_data(frame)
    assert isinstance(at_bound.next_event(), AvlPacket)

    below = TcpServerConnection(max_packet_size=len(frame) - 1, expect_imei=False)
    below.receive_data(frame[:8])
    with pytest.raises(FrameTooLarge):
        below.next_event()


def test_bound_below_a_minimal_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        TcpServerConnection(max_packet_size=10)


def test_non_zero_preamble_is_fatal_as_soon_as_it_arrives() -> None:
    conn = streaming()
    conn.receive_data(b"\x00\x07")

    with pytest.raises(BadPreamble) as caught:
        conn.next_event()

    assert caught.value.fatal is True
    assert caught.value.offset == 17
    with pytest.raises(LocalProtocolError):
        conn.receive_data(FRAME)


def test_crc_mismatch_drops_the_frame_and_the_next_one_is_read() -> None:
    conn = streaming()
    broken = FRAME[:-1] + bytes([FRAME[-1] ^ 1])
    conn.receive_data(broken + FRAME)

    with pytest.raises(CrcMismatch) as caught:
        conn.next_event()

    assert caught.value.fatal is False
    assert caught.value.offset == 17 + len(FRAME) - 4
    assert conn.next_event() == PACKET


def test_count_mismatch_drops_the_frame_and_the_next_one_is_read() -> None:
    data_field = bytearray(FRAME[8:-4])
    data_field[-1] = 2
    conn = streaming()
    conn.receive_data(with_crc(bytes(data_field)) + FRAME)

    with pytest.raises(CountMismatch) as caught:
        conn.next_event()

    assert caught.value.fatal is False
    assert conn.next_event() == PACKET


def test_unknown_codec_in_a_well_framed_frame_is_not_fatal() -> None:
    conn = streaming()
    conn.receive_data(with_crc(b"\x99\x00\x00") + FRAME)

    with pytest.raises(UnknownCodec):
        conn.next_event()
    assert conn.next_event() == PACKET


def test_records_that_do_not_fill_the_data_field_are_malformed() -> None:
    data_field = FRAME[8:-5] + b"\x00" + FRAME[-5:-4]  # one stray byte
    conn = streaming()
    conn.receive_data(with_crc(data_field) + FRAME)

    with pytest.raises(MalformedFrame) as caught:
        conn.next_event()

    assert caught.value.fatal is False
    assert conn.next_event() == PACKET


def test_length_below_the_minimum_is_fatal() -> None:
    conn = streaming()
    conn.receive_data(bytes(8))

    with pytest.raises(MalformedFrame) as caught:
        conn.next_event()
    assert caught.value.fatal is True


def test_zero_record_packet_is_acked_with_zero() -> None:
    packet = decode_tcp_frame(encode_avl_packet(8, []))

    assert packet == AvlPacket(codec=8, records=(), frame_size=15)


def test_quirky_records_are_kept_exactly_as_sent() -> None:
    # Newest first, 1970 and far-future times, no fix, no IO, south-west,
    # below sea level, and an 8-byte value above 2**53.
    records = [
        AvlRecord(4102444800000, 2, -70.7, -33.5, -6, 359, 0, 0, 0, {}, raw=b""),
        AvlRecord(1000, 0, 0.0, 0.0, 0, 0, 0, 0, 0, {}, raw=b""),
        AvlRecord(2**64 - 1, 1, -180.0, -90.0, -32768, 0, 3, 5, 78, {"78": 2**64 - 1}),
    ]
    packet = decode_tcp_frame(encode_avl_packet(8, records))

    assert isinstance(packet, AvlPacket)
    assert list(packet.records) == records
    assert packet.records[2].io["78"] == 18446744073709551615


def test_decode_stream_handles_login_keepalives_and_frames() -> None:
    events = decode_stream(b"\xff" + encode_imei(IMEI) + FRAME + b"\xff" + FRAME)

    assert events == [KeepAlive(), Imei(IMEI), PACKET, KeepAlive(), PACKET]
    assert decode_stream(FRAME + FRAME) == [PACKET, PACKET]


def test_decode_stream_reports_a_capture_that_ends_inside_a_frame() -> None:
    with pytest.raises(TruncatedFrame) as caught:
        decode_stream(FRAME + FRAME[:20])
    assert caught.value.offset == len(FRAME) + 20


def test_iter_stream_yields_the_frames_before_an_error() -> None:
    broken = FRAME[:-1] + b"\x00"
    seen = []
    with pytest.raises(CrcMismatch) as caught:
        for event in iter_stream(FRAME + broken + FRAME):
            seen.append(event)

    assert seen == [PACKET]
    assert caught.value.offset == 2 * len(FRAME) - 4


def test_decode_tcp_frame_refuses_extra_and_missing_bytes() -> None:
    with pytest.raises(MalformedFrame):
        decode_tcp_frame(FRAME + b"\x00")
    with pytest.raises(TruncatedFrame):
        decode_tcp_frame(FRAME[:-1])
    with pytest.raises(TruncatedFrame):
        decode_tcp_frame(FRAME[:5])
