"""Every public test vector, decoded and compared field by field."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.protocol import vectors as vec
from trackgate.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    AvlPacket,
    AvlRecord,
    ConnectionState,
    Event,
    GprsMessage,
    Imei,
    KeepAlive,
    RemoteProtocolError,
    TcpServerConnection,
    UdpHead,
    decode_tcp_frame,
    decode_udp_datagram,
    encode_avl_packet,
    encode_command,
    encode_gprs_message,
    encode_imei,
    encode_udp_datagram,
    imei_reply,
    read_udp_head,
    tcp_ack,
    udp_ack,
)

LOGIN_IMEI = "356307042441013"


def assert_record_matches(record: AvlRecord, expected: dict[str, Any]) -> None:
    assert record.timestamp == expected["timestamp_ms"]
    assert record.priority == expected["priority"]
    assert round(record.longitude * 1e7) == expected["longitude_raw"]
    assert round(record.latitude * 1e7) == expected["latitude_raw"]
    assert record.longitude == pytest.approx(expected["longitude"], abs=1e-9)
    assert record.latitude == pytest.approx(expected["latitude"], abs=1e-9)
    assert record.altitude == expected["altitude_m"]
    assert record.angle == expected["angle_deg"]
    assert record.satellites == expected["satellites"]
    assert record.speed == expected["speed_kmh"]
    assert record.event_id == expected["event_io_id"]
    assert record.generation_type == expected.get("generation_type")
    assert record.io == vec.flat_io(expected["io"])


def assert_packet_matches(packet: AvlPacket, expected: dict[str, Any]) -> None:
    assert packet.codec == expected["codec_id"]
    assert len(packet.records) == expected["record_count"] == expected["count1"]
    for record, expected_record in zip(
        packet.records, expected.get("records", []), strict=True
    ):
        assert_record_matches(record, expected_record)


def test_every_vector_is_covered_by_a_test() -> None:
    covered = set(
        vec.ids(
            vec.TCP_AVL
            + vec.UDP_AVL
            + vec.GPRS
            + vec.IMEI_FRAMES
            + vec.IMEI_REPLIES
            + vec.STREAMS
        )
    )
    covered |= set(vec.INVALID_OUTCOMES) | set(vec.UNSUPPORTED_OUTCOMES)
    covered |= vec.SERVER_ACKS | vec.INVALID_BUT_DECODABLE
    assert covered == set(vec.BY_ID)
    assert len(vec.ALL) == 93


@pytest.mark.parametrize("vector", vec.TCP_AVL, ids=vec.ids(vec.TCP_AVL))
def test_tcp_avl_vector_decodes_to_its_expected_records(vector: vec.Vector) -> None:
    frame = vec.frame_bytes(vector)
    expected = vector["expected"]

    packet = decode_tcp_frame(frame)

    assert isinstance(packet, AvlPacket)
    assert_packet_matches(packet, expected)
    assert packet.frame_size == expected["frame_bytes"] == len(frame)
    assert tcp_ack(len(packet.records)).hex() == expected["server_ack_hex"]
    # Each record's raw bytes are its slice of the data field, in order.
    assert b"".join(r.raw for r in packet.records) == frame[10:-5]


@pytest.mark.parametrize("vector", vec.TCP_AVL, ids=vec.ids(vec.TCP_AVL))
def test_tcp_avl_vector_is_reproduced_by_the_encoder(vector: vec.Vector) -> None:
    frame = vec.frame_bytes(vector)
    packet = decode_tcp_frame(frame)
    assert isinstance(packet, AvlPacket)

    widths = vec.io_widths(vector["id"])
    assert encode_avl_packet(packet.codec, packet.records, io_widths=widths) == frame


@pytest.mark.parametrize("vector", vec.UDP_AVL, ids=vec.ids(vec.UDP_AVL))
def test_udp_vector_decodes_and_is_acked_by_packet_ids(vector: vec.Vector) -> None:
    data = vec.frame_bytes(vector)
    expected = vector["expected"]

    datagram = decode_udp_datagram(data)

    assert datagram.packet_id == expected["packet_id"]
    assert datagram.not_usable == expected["not_usable_byte"]
    assert datagram.avl_packet_id == expected["avl_packet_id"]
    assert datagram.imei == expected["imei"]
    assert_packet_matches(datagram.packet, expected)
    ack = udp_ack(datagram.packet_id, datagram.avl_packet_id, expected["record_count"])
    assert ack.hex() == expected["server_ack_hex"]
    rebuilt = encode_udp_datagram(
        packet_id=datagram.packet_id,
        avl_packet_id=datagram.avl_packet_id,
        imei=datagram.imei,
        codec=datagram.packet.codec,
        records=datagram.packet.records,
        not_usable=datagram.not_usable,
        io_widths=vec.io_widths(vector["id"]),
    )
    assert rebuilt == data


@pytest.mark.parametrize("vector", vec.UDP_AVL, ids=vec.ids(vec.UDP_AVL))
def test_udp_vector_head_reads_alone_and_cut(vector: vec.Vector) -> None:
    data = vec.frame_bytes(vector)
    expected = vector["expected"]
    imei_end = 8 + len(expected["imei"])

    whole = read_udp_head(data)
    cut = read_udp_head(data[: imei_end - 1])

    ids = (expected["packet_id"], expected["avl_packet_id"])
    assert whole == UdpHead(len(data) - 2, *ids, expected["imei"])
    assert cut == whole._replace(imei=None)
    assert read_udp_head(data[:imei_end]) == whole
    assert read_udp_head(data[:7]) is None


@pytest.mark.parametrize("vector", vec.GPRS, ids=vec.ids(vec.GPRS))
def test_gprs_vector_decodes_to_its_expected_message(vector: vec.Vector) -> None:
    frame = vec.frame_bytes(vector)
    expected = vector["expected"]
    (expected_message,) = expected["messages"]

    message = decode_tcp_frame(frame)

    assert isinstance(message, GprsMessage)
    assert message.codec == vector["codec"]
    assert message.type == expected_message["type"]
    assert message.payload.hex() == expected_message["payload_hex"]
    assert message.timestamp == expected_message.get("timestamp_s")
    assert message.imei == expected_message.get("imei")
    assert message.quantity == expected["count1"]
    assert message.text == expected_message.get("text")
    assert expected["server_ack_hex"] is None


@pytest.mark.parametrize("vector", vec.GPRS, ids=vec.ids(vec.GPRS))
def test_gprs_vector_is_reproduced_by_the_encoder(vector: vec.Vector) -> None:
    frame = vec.frame_bytes(vector)
    message = decode_tcp_frame(frame)
    assert isinstance(message, GprsMessage)

    rebuilt = encode_gprs_message(
        message.codec,
        message.type,
        message.payload,
        timestamp=message.timestamp,
        imei=message.imei,
        quantity=message.quantity,
    )
    assert rebuilt == frame
    if vector["kind"] == "command":
        assert encode_command(
            message.payload, codec=message.codec, imei=message.imei
        ) == (frame)


def test_text_commands_encode_to_the_published_frames() -> None:
    assert encode_command("getinfo").hex() == (
        "000000000000000f0c010500000007676574696e666f0100004312"
    )
    assert encode_command("setdigout 11") == vec.frame_bytes(
        vec.BY_ID["traccar-encoder-text"]
    )
    assert encode_command("getver", codec=14, imei="352093081452251") == (
        vec.frame_bytes(vec.BY_ID["wiki-codec14-cmd-getver"])
    )


@pytest.mark.parametrize("vector", vec.IMEI_FRAMES, ids=vec.ids(vec.IMEI_FRAMES))
def test_imei_vector_logs_in_and_gets_the_one_byte_replies(vector: vec.Vector) -> None:
    expected = vector["expected"]
    for accepted, reply_key in (
        (True, "server_reply_if_accepted_hex"),
        (False, "server_reply_if_rejected_hex"),
    ):
        conn = TcpServerConnection()
        conn.receive_data(vec.frame_bytes(vector))

        assert conn.next_event() == Imei(expected["imei"])
        assert conn.imei == expected["imei"]
        assert conn.accept_imei(accepted).hex() == expected[reply_key]
    assert encode_imei(expected["imei"]) == vec.frame_bytes(vector)


@pytest.mark.parametrize("vector", vec.IMEI_REPLIES, ids=vec.ids(vec.IMEI_REPLIES))
def test_imei_reply_vector_is_what_imei_reply_writes(vector: vec.Vector) -> None:
    accepted = vector["id"].endswith("accept")
    assert imei_reply(accepted) == vec.frame_bytes(vector)


def test_ack_vectors_are_what_the_ack_writers_produce() -> None:
    assert tcp_ack(2) == vec.frame_bytes(vec.BY_ID["doc-tcp-ack-2"])
    udp = vec.BY_ID["doc-udp-ack-abcd-inconsistent"]["expected"]
    assert udp_ack(
        int(udp["packet_id_hex"], 16), udp["avl_packet_id"], udp["accepted_records"]
    ) == vec.frame_bytes(vec.BY_ID["doc-udp-ack-abcd-inconsistent"])


def test_lone_keepalive_is_an_event_that_needs_no_answer() -> None:
    conn = TcpServerConnection()
    conn.receive_data(vec.frame_bytes(vec.BY_ID["traccar-43"]))

    assert conn.next_event() == KeepAlive()
    assert conn.next_event() is None
    assert conn.state is ConnectionState.AWAIT_IMEI
    assert conn.buffered == 0


def _events_from_chunks(chunks: list[bytes], *, expect_imei: bool) -> list[Event]:
    conn = TcpServerConnection(expect_imei=expect_imei)
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            events.append(event)
            if isinstance(event, Imei):
                conn.accept_imei(True)
        assert conn.buffered <= conn.max_packet_size
    assert conn.buffered == 0
    return events


def _random_split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(
        rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 9)))
    )
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize("vector", vec.TCP_FRAMES, ids=vec.ids(vec.TCP_FRAMES))
def test_tcp_vector_gives_identical_events_however_the_bytes_arrive(
    vector: vec.Vector,
) -> None:
    frame = vec.frame_bytes(vector)
    event = decode_tcp_frame(frame)
    stream = b"\xff" + encode_imei(LOGIN_IMEI) + frame + b"\xff" + frame
    expected = [KeepAlive(), Imei(LOGIN_IMEI), event, KeepAlive(), event]

    whole = _events_from_chunks([stream], expect_imei=True)
    byte_by_byte = _events_from_chunks(
        [stream[i : i + 1] for i in range(len(stream))], expect_imei=True
    )
    rng = random.Random(vector["id"])
    splits = [_events_from_chunks(_random_split(stream, rng), expect_imei=True)]
    splits += [_events_from_chunks(_random_split(stream, rng), expect_imei=True)]

    for events in (whole, byte_by_byte, *splits):
        assert events == expected
        if isinstance(event, AvlPacket):
            assert isinstance(events[2], AvlPacket)
            assert [r.raw for r in events[2].records] == [r.raw for r in event.records]


def test_split_1024_capture_is_reassembled_and_acked() -> None:
    vector = vec.BY_ID["karticr-codec8-tcp-split-1024"]
    segments = [bytes.fromhex(s) for s in vector["segments"]]
    conn = TcpServerConnection(expect_imei=False)

    conn.receive_data(segments[0])
    assert conn.next_event() is None
    assert conn.buffered == 1024
    conn.receive_data(segments[1])
    packet = conn.next_event()

    assert isinstance(packet, AvlPacket)
    assert_packet_matches(packet, vector["expected"])
    assert tcp_ack(len(packet.records)).hex() == "0000000e"
    assert conn.buffered == 0


@pytest.mark.parametrize(
    "vector_id", ["traccar-frame-ff-then-imei", "maprox-imei-and-avl-in-one-buffer"]
)
def test_stream_vector_is_cut_into_its_expected_frames(vector_id: str) -> None:
    vector = vec.BY_ID[vector_id]
    conn = TcpServerConnection()
    conn.receive_data(vec.frame_bytes(vector))
    replies: list[bytes] = []
    events: list[Event] = []
    while (event := conn.next_event()) is not None:
        events.append(event)
        if isinstance(event, Imei):
            replies.append(conn.accept_imei(True))
        elif isinstance(event, AvlPacket):
            replies.append(tcp_ack(len(event.records)))

    for event, segment_hex, frame in zip(
        events,
        vector["segments_expected"],
        vector["expected"]["frames"],
        strict=True,
    ):
        segment = bytes.fromhex(segment_hex)
        if frame["kind"] == "keepalive":
            assert event == KeepAlive()
            assert segment == b"\xff"
        elif frame["kind"] == "imei":
            assert event == Imei(frame["imei"])
            assert encode_imei(frame["imei"]) == segment
        else:
            assert event == decode_tcp_frame(segment)
            assert isinstance(event, AvlPacket)
            assert len(event.records) == frame["record_count"]
    # A keep-alive gets no answer; the login gets 01, an AVL packet its count.
    expected_replies = [
        f.get("server_reply_hex", "01") if f["kind"] == "imei" else f["server_ack_hex"]
        for f in vector["expected"]["frames"]
        if f["kind"] != "keepalive"
    ]
    assert [r.hex() for r in replies] == expected_replies


INVALID = [vec.BY_ID[i] for i in vec.INVALID_OUTCOMES]


@pytest.mark.parametrize("vector", INVALID, ids=vec.ids(INVALID))
def test_invalid_vector_is_refused_as_its_server_action_says(
    vector: vec.Vector,
) -> None:
    data = vec.frame_bytes(vector)
    kind = vec.INVALID_OUTCOMES[vector["id"]]
    assert vector["valid"] is False

    if vector["transport"] == "udp":
        with pytest.raises(RemoteProtocolError) as caught:
            decode_udp_datagram(data)
        assert caught.value.kind == kind
        assert caught.value.fatal is False
        return

    conn = TcpServerConnection(expect_imei=False)
    conn.receive_data(data)
    if kind is None:
        # Truncated: the server waits for the rest and sends nothing.
        assert conn.next_event() is None
        assert conn.state is ConnectionState.STREAMING
        assert conn.buffered == len(data)
        return
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.kind == kind
    assert caught.value.offset is not None
    if caught.value.fatal:
        assert conn.state is ConnectionState.ERROR
    else:
        # The bad frame was dropped whole; no ACK, and the link goes on.
        assert conn.buffered == 0
        assert conn.state is ConnectionState.STREAMING


@pytest.mark.parametrize("vector_id", sorted(vec.OVERSIZED_OUTCOMES_WITH_ROOM))
def test_oversized_frame_is_read_when_the_bound_is_raised(vector_id: str) -> None:
    data = vec.frame_bytes(vec.BY_ID[vector_id])
    assert len(data) > DEFAULT_MAX_PACKET_SIZE
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    conn.receive_data(data)

    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()

    assert caught.value.kind == vec.OVERSIZED_OUTCOMES_WITH_ROOM[vector_id]
    assert caught.value.fatal is False


def test_quantity_two_response_is_parsed_by_its_size_field() -> None:
    message = decode_tcp_frame(vec.frame_bytes(vec.BY_ID["traccar-hist-75aa9f8b"]))

    assert message == GprsMessage(codec=12, type=6, payload=b"\r\n", quantity=2)


UNSUPPORTED = [vec.BY_ID[i] for i in vec.UNSUPPORTED_OUTCOMES]


@pytest.mark.parametrize("vector", UNSUPPORTED, ids=vec.ids(UNSUPPORTED))
def test_unsupported_frame_is_dropped_without_closing_the_link(
    vector: vec.Vector,
) -> None:
    # Codec 7 (GH3000) and Traccar's 'extended' Codec 8 variant are not decoded:
    # the frame is refused (never ACKed) and the next frame is read normally.
    frame = vec.frame_bytes(vector)
    good = vec.frame_bytes(vec.BY_ID["wiki-codec8-tcp-ex1"])
    conn = TcpServerConnection(expect_imei=False)
    conn.receive_data(frame + good)

    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()

    assert caught.value.kind == vec.UNSUPPORTED_OUTCOMES[vector["id"]]
    assert caught.value.fatal is False
    assert conn.next_event() == decode_tcp_frame(good)
