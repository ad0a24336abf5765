"""The writers: exact bytes for server answers, LocalProtocolError for misuse."""

from __future__ import annotations

from typing import Any

import pytest

from trackgate.protocol import (
    AvlPacket,
    AvlRecord,
    GprsMessage,
    LocalProtocolError,
    decode_tcp_frame,
    encode_avl_packet,
    encode_command,
    encode_gprs_message,
    encode_imei,
    encode_udp_datagram,
    imei_reply,
    tcp_ack,
    udp_ack,
)


def record(**changes: Any) -> AvlRecord:
    fields: dict[str, Any] = {
        "timestamp": 1560161086000,
        "priority": 1,
        "longitude": 25.0,
        "latitude": 54.0,
        "altitude": 100,
        "angle": 90,
        "satellites": 7,
        "speed": 40,
        "event_id": 0,
        "io": {},
        "generation_type": None,
    }
    fields.update(changes)
    return AvlRecord(**fields)


def test_server_answers_have_their_fixed_layouts() -> None:
    assert imei_reply(True) == b"\x01"
    assert imei_reply(False) == b"\x00"
    assert tcp_ack(0) == bytes(4)
    assert tcp_ack(25).hex() == "00000019"
    assert udp_ack(0xCAFE, 5, 1).hex() == "0005cafe010501"


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (tcp_ack, (-1,)),
        (tcp_ack, (2**32,)),
        (udp_ack, (0x10000, 1, 1)),
        (udp_ack, (1, 256, 1)),
        (udp_ack, (1, 1, 256)),
    ],
)
def test_acks_out_of_range_are_local_errors(call: Any, args: tuple[int, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        call(*args)


@pytest.mark.parametrize(
    "imei", ["12345678901234", "1234567890123A5", "", "١٢٣٤٥٦٧٨٩٠١٢٣٤٥"]
)
def test_imei_outside_the_policy_cannot_be_encoded(imei: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_imei(imei)


def test_sixteen_digit_imei_with_leading_zero_cannot_be_packed() -> None:
    # Packed into 8 bytes it would read back as a different, 15-digit IMEI.
    with pytest.raises(LocalProtocolError):
        encode_command("getver", codec=14, imei="0352093081452251")


@pytest.mark.parametrize(
    "bad",
    [
        record(io={"256": 1}),  # id above 255 in Codec 8
        record(io={"07": 1}),  # not a canonical decimal id
        record(io={"x": 1}),
        record(io={"1": -1}),  # values are unsigned
        record(io={"1": 2**64}),
        record(io={"1": "00ff"}),  # hex values only in Codec 8E
        record(event_id=256),
        record(longitude=215.0),  # beyond int32 / 1e7
        record(latitude=float("nan")),
        record(altitude=40000),
        record(timestamp=-1),
    ],
)
def test_records_the_wire_cannot_carry_are_local_errors(bad: AvlRecord) -> None:
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(8, [bad])


def test_codec16_needs_a_generation_type_and_unknown_codecs_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(16, [record()])
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(7, [record()])
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(8, [record()] * 256)


def test_io_widths_choose_the_group_of_each_value() -> None:
    small = encode_avl_packet(8, [record(io={"16": 5})])
    wide = encode_avl_packet(8, [record(io={"16": 5})], io_widths={"16": 4})

    assert len(wide) == len(small) + 3
    wide_packet, small_packet = decode_tcp_frame(wide), decode_tcp_frame(small)
    assert isinstance(wide_packet, AvlPacket) and isinstance(small_packet, AvlPacket)
    assert wide_packet.records == small_packet.records
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(8, [record(io={"16": 5})], io_widths={"16": 3})
    with pytest.raises(LocalProtocolError):
        encode_avl_packet(8, [record(io={"16": 300})], io_widths={"16": 1})


def test_gprs_message_fields_must_match_the_codec() -> None:
    with pytest.raises(LocalProtocolError):
        encode_gprs_message(13, 6, b"x")  # no timestamp
    with pytest.raises(LocalProtocolError):
        encode_gprs_message(12, 6, b"x", imei="352093081452251")
    with pytest.raises(LocalProtocolError):
        encode_gprs_message(8, 6, b"x")
    with pytest.raises(LocalProtocolError):
        encode_gprs_message(13, 6, b"x", timestamp=2**32)


def test_commands_are_ascii_codec_12_or_14() -> None:
    with pytest.raises(LocalProtocolError):
        encode_command("vérifier")
    with pytest.raises(LocalProtocolError):
        encode_command("getver", codec=13)
    with pytest.raises(LocalProtocolError):
        encode_command("getver", codec=14)
    nack = encode_gprs_message(14, 0x11, b"", imei="352093081452251")
    assert decode_tcp_frame(nack) == GprsMessage(
        codec=14, type=0x11, payload=b"", imei="352093081452251"
    )


def test_udp_datagram_needs_a_valid_imei() -> None:
    with pytest.raises(LocalProtocolError):
        encode_udp_datagram(
            packet_id=1, avl_packet_id=1, imei="12", codec=8, records=[record()]
        )


def test_message_text_is_none_for_binary_payloads() -> None:
    assert GprsMessage(codec=12, type=6, payload=b"DI1:1\r\n").text == "DI1:1\r\n"
    assert GprsMessage(codec=12, type=6, payload=b"\x01\x03").text is None
    assert GprsMessage(codec=12, type=6, payload=b"\xff\xfe").text is None
    assert GprsMessage(codec=12, type=6, payload=b"").text == ""
