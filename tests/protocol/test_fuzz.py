"""Hostile input: whatever arrives, only ProtocolError subclasses come out.

Random bytes, mutated and truncated real packets, huge length fields, wrong
counts, bad CRCs and non-digit IMEIs go through the connection (in random
chunks) and through the stateless helpers. Besides "no other exception", the
connection must never hold more than its bound while it waits for data.
"""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol import strategies as gen
from tests.protocol import vectors as vec
from trackgate.protocol import (
    ConnectionState,
    CountMismatch,
    CrcMismatch,
    Imei,
    LocalProtocolError,
    RemoteProtocolError,
    TcpServerConnection,
    crc16_ibm,
    decode_stream,
    decode_tcp_frame,
    decode_udp_datagram,
    encode_imei,
)

REAL_FRAMES = [vec.frame_bytes(v) for v in vec.TCP_FRAMES]
REAL_DATAGRAMS = [vec.frame_bytes(v) for v in vec.UDP_AVL]
SMALL_BOUND = 256


def feed(
    chunks: list[bytes], *, expect_imei: bool, max_packet_size: int = 2048
) -> TcpServerConnection:
    """Feed ``chunks`` like the ingest loop does; stop at a fatal error."""
    conn = TcpServerConnection(max_packet_size=max_packet_size, expect_imei=expect_imei)
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                assert exc.kind != "protocol_error"
                if exc.fatal:
                    assert conn.state is ConnectionState.ERROR
                    return conn
                continue
            if event is None:
                break
            if isinstance(event, Imei):
                conn.accept_imei(True)
        assert conn.buffered <= conn.max_packet_size
    return conn


def mutate(frame: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(frame)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


@given(st.data(), st.binary(max_size=600), st.booleans())
def test_random_bytes_only_raise_protocol_errors(
    data: st.DataObject, blob: bytes, expect_imei: bool
) -> None:
    feed(data.draw(gen.splits(blob)), expect_imei=expect_imei)
    feed([blob], expect_imei=expect_imei, max_packet_size=SMALL_BOUND)


@given(st.binary(max_size=600))
def test_random_bytes_in_stateless_helpers_only_raise_protocol_errors(
    blob: bytes,
) -> None:
    for decode in (decode_tcp_frame, decode_udp_datagram, decode_stream):
        try:
            decode(blob)
        except RemoteProtocolError as exc:
            assert exc.kind != "protocol_error"


@given(
    st.data(),
    st.sampled_from(REAL_FRAMES),
    st.lists(st.tuples(st.integers(0, 10_000), gen.U8), max_size=4),
    st.one_of(st.none(), st.integers(0, 2000)),
)
def test_mutated_real_packets_only_raise_protocol_errors(
    data: st.DataObject,
    frame: bytes,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    broken = mutate(frame, edits, cut)
    with contextlib.suppress(RemoteProtocolError):
        decode_tcp_frame(broken)
    feed(data.draw(gen.splits(broken + frame)), expect_imei=False)
    feed(
        data.draw(gen.splits(encode_imei("352093081452251") + broken)),
        expect_imei=True,
    )


@given(
    st.sampled_from(REAL_FRAMES),
    st.lists(st.tuples(st.integers(0, 10_000), gen.U8), min_size=1, max_size=4),
)
def test_mutated_data_with_a_good_crc_is_refused_without_desync(
    frame: bytes, edits: list[tuple[int, int]]
) -> None:
    # Past the CRC check, the record and message parsers see the garbage.
    data_field = mutate(frame[8:-4], edits, None)
    bad = struct.pack(">II", 0, len(data_field)) + data_field
    bad += struct.pack(">I", crc16_ibm(data_field))
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    conn.receive_data(bad + frame)

    try:
        conn.next_event()
    except RemoteProtocolError as exc:
        assert exc.fatal is False
    assert conn.next_event() == decode_tcp_frame(frame)


@given(
    st.sampled_from(REAL_DATAGRAMS),
    st.lists(st.tuples(st.integers(0, 10_000), gen.U8), max_size=4),
    st.one_of(st.none(), st.integers(0, 600)),
)
def test_mutated_datagrams_only_raise_non_fatal_protocol_errors(
    datagram: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    try:
        decode_udp_datagram(mutate(datagram, edits, cut))
    except RemoteProtocolError as exc:
        assert exc.fatal is False


@given(st.sampled_from(REAL_FRAMES), st.data())
def test_truncated_frame_waits_for_more_data(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    conn.receive_data(frame[:cut])

    assert conn.next_event() is None
    assert conn.buffered == cut


@given(st.integers(2049 - 12, 2**32 - 1), st.binary(max_size=64))
def test_huge_length_field_is_fatal_before_any_buffering(
    length: int, tail: bytes
) -> None:
    conn = TcpServerConnection(expect_imei=False)
    conn.receive_data(struct.pack(">II", 0, length) + tail)

    try:
        conn.next_event()
    except RemoteProtocolError as exc:
        assert exc.kind == "frame_too_large"
        assert exc.fatal is True
    else:
        raise AssertionError("a length beyond the bound must be refused")


@given(st.sampled_from(REAL_FRAMES), gen.U8)
def test_wrong_count_with_good_crc_is_skipped(frame: bytes, count2: int) -> None:
    data_field = bytearray(frame[8:-4])
    if data_field[-1] == count2 or data_field[0] not in (8, 0x8E, 16, 12, 13, 14, 15):
        return
    data_field[-1] = count2
    bad = struct.pack(">II", 0, len(data_field)) + data_field
    bad += struct.pack(">I", crc16_ibm(data_field))
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    conn.receive_data(bad + frame)

    try:
        conn.next_event()
    except CountMismatch as exc:
        assert exc.fatal is False
    else:
        raise AssertionError("Number of Data 2 was changed")
    assert conn.next_event() == decode_tcp_frame(frame)


@given(st.sampled_from(REAL_FRAMES), st.integers(1, 0xFFFF))
def test_bad_crc_is_skipped(frame: bytes, flip: int) -> None:
    crc = struct.unpack(">I", frame[-4:])[0] ^ flip
    bad = frame[:-4] + struct.pack(">I", crc)
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    conn.receive_data(bad + frame)

    try:
        conn.next_event()
    except CrcMismatch as exc:
        assert exc.fatal is False
    else:
        raise AssertionError("the CRC was changed")
    assert conn.next_event() == decode_tcp_frame(frame)


@given(st.binary(min_size=15, max_size=15).filter(lambda b: not b.isdigit()))
def test_non_digit_imei_is_fatal(raw: bytes) -> None:
    conn = TcpServerConnection()
    conn.receive_data(b"\x00\x0f" + raw)

    try:
        conn.next_event()
    except RemoteProtocolError as exc:
        assert exc.kind == "bad_imei"
        assert exc.fatal is True
    else:
        raise AssertionError(f"{raw!r} was accepted as an IMEI")
    try:
        conn.next_event()
    except LocalProtocolError:
        pass
    else:
        raise AssertionError("a failed connection must refuse further use")


@settings(max_examples=50)
@given(st.data())
def test_bound_holds_for_a_session_fed_in_random_chunks(data: st.DataObject) -> None:
    stream = data.draw(gen.sessions())
    conn = feed(data.draw(gen.splits(stream)), expect_imei=True)
    assert conn.state is ConnectionState.STREAMING
    assert conn.buffered == 0
