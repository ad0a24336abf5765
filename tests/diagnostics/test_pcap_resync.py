"""``trackgate pcap`` after capture gaps: decoding resumes at the next frame.

The captures here are pcap files written with dpkt: one TCP connection of a
device sending real frames from the public vectors, the server answering
each with TCP ACKs and 4-byte record counts, and chosen segments left out of
the file the way a dropping tcpdump leaves them out (the sequence numbers
still count them). Every expected number follows from what was sent and what
was left out.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.diagnostics.traffic import vectors
from trackgate.diagnostics.pcap import (
    MAX_FRAME_SIZE,
    MAX_OUT_OF_ORDER_BYTES,
    _FrameScanner,
    _Reassembler,
    analyse_capture,
)
from trackgate.protocol import (
    AVL_CODECS,
    GPRS_CODECS,
    RESPONSE_TYPE,
    encode_command,
    encode_gprs_message,
    tcp_ack,
)

PORT = 5027
CLIENT = "127.0.0.9"
SERVER = "127.0.0.1"
_PSH_ACK = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
_MSS = 500


def _corpus() -> dict[str, dict[str, Any]]:
    return vectors()


def _device_frames() -> list[bytes]:
    """Every valid device-to-server TCP frame of a supported codec (not the
    ones that need a non-standard decoder option, nor a login and a frame in
    one buffer)."""
    return [
        bytes.fromhex(entry["hex"])
        for entry in _corpus().values()
        if entry["transport"] == "tcp"
        and entry["direction"] == "device_to_server"
        and entry["valid"]
        and entry["codec"] in AVL_CODECS | GPRS_CODECS
        and entry["kind"] != "imei+avl"
        and "decoder_option" not in entry["expected"]
    ]


def _avl(vector_id: str) -> tuple[bytes, int]:
    entry = _corpus()[vector_id]
    return bytes.fromhex(entry["hex"]), int(entry["expected"]["record_count"])


@dataclass
class Conversation:
    """One TCP connection, written frame by frame; some frames not captured."""

    client_port: int = 40001
    client_seq: int = 2**32 - 3000  # wraps past 2**32 mid-session
    server_seq: int = 1_000
    now: float = 1_700_000_000.0
    frames: list[tuple[float, bytes]] = field(default_factory=list)

    def _emit(
        self, from_client: bool, flags: int, data: bytes = b"", captured: bool = True
    ) -> None:
        self.now += 0.01
        if from_client:
            src, dst, sport, dport = CLIENT, SERVER, self.client_port, PORT
            seq, ack = self.client_seq, self.server_seq
        else:
            src, dst, sport, dport = SERVER, CLIENT, PORT, self.client_port
            seq, ack = self.server_seq, self.client_seq
        segment = dpkt.tcp.TCP(
            sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=data
        )
        packet = dpkt.ip.IP(
            src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=segment
        )
        frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=packet)
        if captured:
            self.frames.append((self.now, bytes(frame)))

    def handshake(self, captured: bool = True) -> None:
        self.client_seq = (self.client_seq - 1) % 2**32  # the SYN's number
        self._emit(True, dpkt.tcp.TH_SYN, captured=captured)
        self.client_seq = (self.client_seq + 1) % 2**32
        self.server_seq -= 1
        self._emit(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, captured=captured)
        self.server_seq += 1
        self._emit(True, dpkt.tcp.TH_ACK, captured=captured)

    def send(
        self,
        data: bytes,
        *,
        lost: set[int] | frozenset[int] = frozenset(),
        acks_lost: set[int] | frozenset[int] = frozenset(),
        mss: int = _MSS,
    ) -> list[bytes]:
        """The device sends ``data`` in segments of ``mss``; the server ACKs
        each. Segments (and server ACKs) whose index is in ``lost`` (in
        ``acks_lost``) are not captured. Returns the segments."""
        segments = [data[i : i + mss] for i in range(0, len(data), mss)]
        for index, segment in enumerate(segments):
            self._emit(True, _PSH_ACK, segment, captured=index not in lost)
            self.client_seq = (self.client_seq + len(segment)) % 2**32
            self._emit(False, dpkt.tcp.TH_ACK, captured=index not in acks_lost)
        return segments

    def send_lost_on_the_way(self, data: bytes, mss: int = _MSS) -> None:
        """The first segment of ``data`` is lost before the capture point:
        the server answers the later ones with duplicate ACKs, the device
        sends the first one again, and the server then ACKs everything."""
        segments = [data[i : i + mss] for i in range(0, len(data), mss)]
        start = self.client_seq
        self.client_seq = (start + len(segments[0])) % 2**32
        for segment in segments[1:]:
            self._emit(True, _PSH_ACK, segment)
            self.client_seq = (self.client_seq + len(segment)) % 2**32
            end, self.client_seq = self.client_seq, start
            self._emit(False, dpkt.tcp.TH_ACK)  # duplicate ACK: still wants `start`
            self.client_seq = end
        end, self.client_seq = self.client_seq, start
        self._emit(True, _PSH_ACK, segments[0])
        self.client_seq = end
        self._emit(False, dpkt.tcp.TH_ACK)

    def reply(self, data: bytes, captured: bool = True) -> None:
        self._emit(False, _PSH_ACK, data, captured=captured)
        self.server_seq += len(data)
        self._emit(True, dpkt.tcp.TH_ACK)

    def close(self) -> None:
        self._emit(True, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        self.client_seq = (self.client_seq + 1) % 2**32
        self._emit(False, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
        self.server_seq += 1
        self._emit(True, dpkt.tcp.TH_ACK)

    def write(self, path: Path) -> Path:
        with path.open("wb") as handle:
            writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, frame in self.frames:
                writer.writepkt(frame, ts)
        return path


def _only_connection(result: dict[str, Any]) -> dict[str, Any]:
    (conn,) = result["connections"]
    return dict(conn)


IMEI_FRAME = bytes.fromhex(_corpus()["doc-imei-tcp-1"]["hex"])
IMEI = _corpus()["doc-imei-tcp-1"]["expected"]["imei"]


def _session_with_gaps() -> tuple[Conversation, dict[str, int]]:
    """Eight real packets; the capture loses segments of three of them, all
    of a fourth, and one server ACK. Returns what the analysis must find."""
    packets = [
        _avl("wiki-codec8-tcp-ex1"),  # 66 bytes, 1 segment
        _avl("traccar-c8e-07"),  # 1073 bytes, 3 segments: the middle one lost
        _avl("wiki-codec16-tcp-ex1"),  # 107 bytes
        _avl("traccar-c16-08"),  # 911 bytes, 2 segments: the first one lost
        _avl("karticr-codec8-tcp-split-1024"),  # 1261 bytes: all 3 segments lost
        _avl("traccar-c8-26"),  # 1037 bytes, 3 segments: the last one lost
        _avl("maprox-codec8-tcp-25rec"),  # 765 bytes, its ACK not captured
        _avl("pdf-fm64-codec8e-tcp"),  # 107 bytes
    ]
    lost = {1: {1}, 3: {0}, 4: {0, 1, 2}, 5: {2}}
    conv = Conversation()
    conv.handshake()
    conv.send(IMEI_FRAME)
    conv.reply(b"\x01")
    expect = {
        "packets": 0,
        "records": 0,
        "gap_bytes": 0,
        "skipped_bytes": 0,
        "records_after_resync": 0,
    }
    for index, (frame, records) in enumerate(packets):
        dropped = lost.get(index, set())
        segments = conv.send(frame, lost=dropped)
        conv.reply(tcp_ack(records), captured=index != 6)
        missing = sum(len(segments[i]) for i in dropped)
        expect["gap_bytes"] += missing
        if dropped:
            expect["skipped_bytes"] += len(frame) - missing
        else:
            expect["packets"] += 1
            expect["records"] += records
            if index > 1:
                expect["records_after_resync"] += records
    conv.close()
    return conv, expect


def test_decoding_resumes_after_each_capture_gap(tmp_path: Path) -> None:
    conv, expect = _session_with_gaps()

    result = analyse_capture(conv.write(tmp_path / "gaps.pcap"), PORT)

    conn = _only_connection(result)
    assert conn["imei"] == IMEI
    assert conn["imei_reply"] == 1
    assert (conn["packets"], conn["records"]) == (4, expect["records"])
    assert expect["packets"] == 4
    # Four holes: three partial packets and one whole one (its three
    # segments are one hole).
    assert conn["capture_gaps"] == 4
    # The last three holes follow each other with no whole frame between
    # them: the scanner found a frame twice, at packets 3 and 7.
    assert conn["resyncs"] == 2
    assert conn["gap_bytes"] == expect["gap_bytes"]
    assert conn["skipped_bytes"] == expect["skipped_bytes"]
    assert conn["records_after_resync"] == expect["records_after_resync"]
    assert conn["undecoded_bytes"] == 0
    assert conn["protocol_errors"] == {}


def test_acks_are_matched_to_the_packets_decoded_around_gaps(tmp_path: Path) -> None:
    conv, _ = _session_with_gaps()

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "g.pcap"), PORT))

    # Eight ACKs were sent, one not captured: seven arrive. The four packets
    # lost in gaps are answered too; their ACKs match nothing, so every
    # decoded packet keeps its own ACK (the fourth packet's is the lost one,
    # a server-stream gap of 4 bytes: one ACK not captured).
    assert conn["server_acks"] == 7
    assert conn["server_capture_gaps"] == 1
    assert conn["server_gap_bytes"] == 4
    assert (conn["acks_missing"], conn["acks_not_captured"]) == (0, 1)
    # Each packet's last segment, the server's TCP ACK 10 ms later, its
    # record count 10 ms after that: matched ACKs come 20 ms after packets.
    delay = conn["ack_delay_ms"]
    assert delay["count"] == 3
    assert delay["min"] == pytest.approx(20.0, abs=0.01)
    assert delay["max"] == pytest.approx(20.0, abs=0.01)


def test_totals_and_addresses_count_the_gaps(tmp_path: Path) -> None:
    conv, expect = _session_with_gaps()

    result = analyse_capture(conv.write(tmp_path / "g.pcap"), PORT)

    totals = result["totals"]
    assert totals["capture_gaps"] == 4
    assert totals["skipped_bytes"] == expect["skipped_bytes"]
    assert totals["records_after_resync"] == expect["records_after_resync"]
    assert totals["acks_not_captured"] == 1
    (row,) = result["addresses"]
    assert row["imeis"] == [IMEI]
    assert row["connections_without_imei"] == 0
    (device,) = result["devices"]
    assert (device["packets"], device["records"]) == (4, expect["records"])
    assert device["acks_missing"] == 0


# The scanner on its own ----------------------------------------------------------


def _scan(scanner: _FrameScanner, data: bytes, chunk: int) -> tuple[bool, bytes]:
    for start in range(0, len(data), chunk):
        found = scanner.push(data[start : start + chunk])
        if found is not None:
            return found
    raise AssertionError("no frame found")


@pytest.mark.parametrize("chunk", [1, 13, 1448])
def test_scanner_finds_the_next_real_frame_from_any_cut(chunk: int) -> None:
    frames = _device_frames()
    assert len(frames) >= 50
    stream = b"".join(frames)
    starts = []
    position = 0
    for frame in frames:
        starts.append(position)
        position += len(frame)

    step = 1 if chunk == 1448 else 17
    for cut in range(0, starts[-1] + 1, step):
        expected = next(start for start in starts if start >= cut)
        scanner = _FrameScanner(login=False)

        login, rest = _scan(scanner, stream[cut:], chunk)

        assert login is False
        assert scanner.skipped == expected - cut, cut
        assert stream[expected:].startswith(rest), cut


def test_scanner_finds_a_login_where_one_may_come() -> None:
    keepalive_then_login = bytes.fromhex(_corpus()["traccar-frame-ff-then-imei"]["hex"])
    frame, _ = _avl("wiki-codec8-tcp-ex1")
    with_login, without = _FrameScanner(login=True), _FrameScanner(login=False)

    assert with_login.push(keepalive_then_login + frame) == (
        True,
        keepalive_then_login[1:] + frame,
    )
    assert without.push(keepalive_then_login + frame) == (False, frame)
    assert (with_login.skipped, without.skipped) == (1, len(keepalive_then_login))


def _fake_heads(size: int, seed: int) -> bytes:
    """Garbage full of frame heads that pass every cheap check but one.

    Each 24-byte block is a zero preamble, a length of 40,000 to 65,524, a
    Codec 8 id and a record count, then random bytes: a candidate that waits
    for its whole frame and is then refused (its count or CRC field does not
    fit). Zero runs and digit runs (login look-alikes) are mixed in.
    """
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        if kind < 0.8:
            length = rng.randrange(40_000, MAX_FRAME_SIZE - 12)
            out += b"\x00" * 4 + length.to_bytes(4, "big") + b"\x08\x01"
            out += rng.randbytes(14)
        elif kind < 0.9:
            out += b"\x00" * rng.randrange(1, 300)
        else:
            out += b"\x00\x0f" + b"1234567890" + rng.randbytes(5)
    return bytes(out[:size])


def test_scanner_cost_is_linear_and_its_memory_bounded() -> None:
    frame, _ = _avl("traccar-c8e-07")
    chunk = 1448

    def run(size: int) -> tuple[_FrameScanner, int, float]:
        garbage = _fake_heads(size, seed=size)
        scanner = _FrameScanner(login=False)
        peak = 0
        started = time.perf_counter()
        data = garbage + frame
        found = None
        for start in range(0, len(data), chunk):
            found = scanner.push(data[start : start + chunk])
            if found is not None:
                break
            peak = max(peak, scanner.buffered)
        elapsed = time.perf_counter() - started
        assert found == (False, frame)
        assert scanner.skipped == len(garbage)
        return scanner, peak, elapsed

    small, small_peak, small_time = run(512 << 10)
    large, large_peak, large_time = run(2 << 20)

    # Memory: one largest frame plus one chunk, whatever the garbage size.
    assert small_peak <= MAX_FRAME_SIZE + chunk
    assert large_peak <= MAX_FRAME_SIZE + chunk
    # Work: every candidate position is looked at once; about one in 24
    # bytes is a frame head here.
    assert large.examined <= (2 << 20) // 20
    assert large.examined / small.examined == pytest.approx(4, rel=0.1)
    # A fake head ending in a zero run with the right count byte passes the
    # O(1) checks and is checksummed once: less than the garbage's size, and
    # proportional to it.
    assert len(frame) < large.checked_bytes < 2 << 20
    assert large.checked_bytes < 8 * small.checked_bytes + 2 * MAX_FRAME_SIZE
    # Four times the garbage takes about four times as long, not sixteen.
    assert large_time < 8 * small_time + 0.5


# More captures -------------------------------------------------------------------


def _logged_in() -> Conversation:
    conv = Conversation()
    conv.handshake()
    conv.send(IMEI_FRAME)
    conv.reply(b"\x01")
    return conv


def _send_acked(conv: Conversation, vector_id: str, **lost: Any) -> tuple[int, int]:
    frame, records = _avl(vector_id)
    conv.send(frame, **lost)
    conv.reply(tcp_ack(records))
    return len(frame), records


def test_a_waiting_look_alike_does_not_hold_back_the_frames_behind_it(
    tmp_path: Path,
) -> None:
    conv = _logged_in()
    _send_acked(conv, "wiki-codec8-tcp-ex1")
    size, _ = _send_acked(conv, "traccar-c8e-07", lost={0})
    # The device's stream goes on with a frame head announcing 61,440 bytes
    # (as the tail of a lost frame could), then real packets.
    look_alike = b"\x00" * 4 + (61_440).to_bytes(4, "big") + b"\x08\x02" + b"\x11" * 20
    conv.send(look_alike)
    after = [_send_acked(conv, v) for v in ("traccar-c8-10", "wiki-codec16-tcp-ex1")]
    conv.close()

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "w.pcap"), PORT))

    assert conn["packets"] == 3
    assert conn["records_after_resync"] == sum(records for _, records in after)
    assert conn["skipped_bytes"] == size - _MSS + len(look_alike)
    # Decoded as their last segment arrived, so each met its own ACK 20 ms on.
    assert conn["acks_missing"] == 0
    assert conn["ack_delay_ms"]["max"] == pytest.approx(20.0, abs=0.01)


def test_a_fatal_protocol_error_resynchronises_too(tmp_path: Path) -> None:
    conv = _logged_in()
    _, first = _send_acked(conv, "wiki-codec8-tcp-ex1")
    conv.send(b"\x01" * 20)  # not a frame: the decoder fails on its preamble
    later = [_send_acked(conv, v) for v in ("traccar-c8e-13", "traccar-c8-34")]
    conv.close()

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "e.pcap"), PORT))

    assert conn["protocol_errors"] == {"bad_preamble": 1}
    assert (conn["capture_gaps"], conn["resyncs"]) == (0, 1)
    assert conn["skipped_bytes"] == 20
    assert conn["packets"] == 3
    assert conn["records"] == first + sum(records for _, records in later)
    assert conn["records_after_resync"] == sum(records for _, records in later)


def test_a_segment_lost_before_the_capture_point_is_waited_for(
    tmp_path: Path,
) -> None:
    conv = _logged_in()
    frame, records = _avl("karticr-codec8-tcp-split-1024")
    conv.send_lost_on_the_way(frame)
    conv.reply(tcp_ack(records))
    conv.close()

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "r.pcap"), PORT))

    # The server never acknowledged past the hole: its retransmission fills it.
    assert (conn["packets"], conn["records"]) == (1, records)
    assert (conn["capture_gaps"], conn["skipped_bytes"]) == (0, 0)
    assert conn["retransmitted_segments"] == 0
    assert conn["acks_missing"] == 0


def test_what_waits_behind_a_hole_is_decoded_when_the_capture_ends(
    tmp_path: Path,
) -> None:
    conv = _logged_in()
    _send_acked(conv, "wiki-codec8-tcp-ex1")
    # The capture loses a segment and every server ACK from then on, then stops.
    cut, _ = _avl("traccar-c8-26")
    conv.send(cut, lost={0}, acks_lost={0, 1, 2})
    last, records = _avl("traccar-c8-29")
    conv.send(last, acks_lost={0})

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "t.pcap"), PORT))

    assert (conn["capture_gaps"], conn["gap_bytes"]) == (1, _MSS)
    assert conn["skipped_bytes"] == len(cut) - _MSS
    assert conn["packets"] == 2
    assert conn["records_after_resync"] == records
    assert (conn["acks_missing"], conn["undecoded_bytes"]) == (1, 0)


def test_a_capture_that_starts_inside_a_frame_decodes_from_the_next_one(
    tmp_path: Path,
) -> None:
    conv = _logged_in()
    _send_acked(conv, "wiki-codec8-tcp-ex1")
    frame, _ = _avl("traccar-c8e-07")
    start = len(conv.frames)
    conv.send(frame)
    conv.reply(tcp_ack(4))
    # The capture starts with the second segment of that packet.
    del conv.frames[: start + 2]
    later = [_send_acked(conv, v) for v in ("traccar-c8-27", "traccar-c16-21")]
    conv.close()

    result = analyse_capture(conv.write(tmp_path / "m.pcap"), PORT)

    conn = _only_connection(result)
    assert (conn["handshake_captured"], conn["imei"], conn["imei_reply"]) == (
        False,
        None,
        None,
    )
    assert conn["packets"] == 2
    assert conn["records"] == sum(records for _, records in later)
    assert conn["skipped_bytes"] == len(frame) - _MSS
    # Starting out of phase is not a gap: nothing is missing in between.
    assert (conn["capture_gaps"], conn["resyncs"]) == (0, 0)
    assert conn["records_after_resync"] == 0
    # The ACK of the cut packet is read and matches nothing.
    assert (conn["server_acks"], conn["acks_missing"]) == (3, 0)
    (row,) = result["addresses"]
    assert (row["imeis"], row["connections_without_imei"]) == ([], 1)
    assert result["devices"] == []


def test_a_capture_that_starts_with_the_login_learns_the_imei(
    tmp_path: Path,
) -> None:
    conv = Conversation()
    conv.handshake(captured=False)
    conv.send(IMEI_FRAME)
    conv.reply(b"\x01")
    _, records = _send_acked(conv, "traccar-c8-34")
    conv.close()

    result = analyse_capture(conv.write(tmp_path / "l.pcap"), PORT)

    conn = _only_connection(result)
    assert (conn["handshake_captured"], conn["imei"], conn["imei_reply"]) == (
        False,
        IMEI,
        1,
    )
    assert (conn["packets"], conn["records"], conn["skipped_bytes"]) == (1, records, 0)
    assert conn["acks_missing"] == 0
    (device,) = result["devices"]
    assert (device["imei"], device["connections"], device["records"]) == (
        IMEI,
        1,
        records,
    )


def test_a_login_the_capture_lost_still_has_its_reply_read(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake()
    conv.send(IMEI_FRAME, lost={0})
    # The server answers the login and sends a queued command at once.
    conv.reply(b"\x01" + encode_command("getinfo"))
    sent = [_send_acked(conv, v) for v in ("traccar-c8-23", "traccar-c8e-11")]
    conv.close()

    result = analyse_capture(conv.write(tmp_path / "nologin.pcap"), PORT)

    conn = _only_connection(result)
    assert (conn["imei"], conn["imei_reply"]) == (None, 1)
    assert (conn["capture_gaps"], conn["gap_bytes"]) == (1, len(IMEI_FRAME))
    assert conn["packets"] == 2
    assert conn["records_after_resync"] == sum(records for _, records in sent)
    # The reply byte is not taken for the start of an ACK or a command.
    assert (conn["server_commands"], conn["server_acks"]) == (1, 2)
    assert conn["acks_missing"] == 0
    assert conn["server_skipped_bytes"] == 0
    assert result["addresses"][0]["acks_short"] == 0
    assert result["addresses"][0]["connections_without_imei"] == 1


def test_no_login_is_taken_from_a_connection_past_its_login(tmp_path: Path) -> None:
    conv = _logged_in()
    _, first = _send_acked(conv, "wiki-codec8-tcp-ex1")
    # A command response whose text holds what looks like a login frame;
    # the capture loses its head, so the scanner sees the look-alike first.
    fake = b"\x00\x0f" + b"123456789012345"
    response = encode_gprs_message(12, RESPONSE_TYPE, b"x" * 600 + fake + b" ok")
    conv.send(response, lost={0})
    _, last = _send_acked(conv, "traccar-c8-27")
    conv.close()

    result = analyse_capture(conv.write(tmp_path / "fake.pcap"), PORT)

    conn = _only_connection(result)
    assert conn["imei"] == IMEI
    assert (conn["packets"], conn["records"]) == (2, first + last)
    assert conn["skipped_bytes"] == len(response) - _MSS
    (device,) = result["devices"]
    assert (device["imei"], device["connections"]) == (IMEI, 1)


def test_a_frame_cut_by_the_end_of_the_capture_is_left_undecoded(
    tmp_path: Path,
) -> None:
    conv = _logged_in()
    _send_acked(conv, "wiki-codec8-tcp-ex1")
    frame, _ = _avl("traccar-c8-26")
    conv.send(frame[:_MSS])  # the capture stops before the rest is sent

    conn = _only_connection(analyse_capture(conv.write(tmp_path / "c.pcap"), PORT))

    assert (conn["packets"], conn["undecoded_bytes"]) == (1, _MSS)
    assert (conn["capture_gaps"], conn["skipped_bytes"]) == (0, 0)


def test_acks_are_only_counted_on_connections_that_spoke_teltonika(
    tmp_path: Path,
) -> None:
    device = _logged_in()
    sent = [_send_acked(device, v) for v in ("traccar-c8-23", "traccar-c8e-11")]
    device.close()
    # An HTTP health check on the same port: its answer is 4-byte chunks too.
    probe = Conversation(client_port=40002)
    probe.handshake()
    probe.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    probe.reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    probe.close()
    both = Conversation(frames=sorted(device.frames + probe.frames))

    result = analyse_capture(both.write(tmp_path / "mixed.pcap"), PORT)

    teltonika, other = result["connections"]
    assert (teltonika["server_acks"], teltonika["not_teltonika"]) == (len(sent), False)
    assert (other["server_acks"], other["not_teltonika"]) == (0, True)
    assert other["imei_reply"] is None
    assert result["totals"]["server_acks"] == len(sent)
    assert result["totals"]["connections_not_teltonika"] == 1
    assert result["warnings"] == [
        f"1 of 2 connections on port {PORT} carried no Teltonika traffic: another "
        "kind of client, or too little of them was captured"
    ]


def _trackgate(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("trackgate")
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_cli_reports_gaps_per_connection(tmp_path: Path) -> None:
    conv, expect = _session_with_gaps()
    path = str(conv.write(tmp_path / "g.pcap"))

    as_json = _trackgate("pcap", path, "--port", str(PORT), "--json")
    as_table = _trackgate("pcap", path, "--port", str(PORT))

    assert as_json.returncode == 0, as_json.stderr
    (conn,) = json.loads(as_json.stdout)["connections"]
    assert (conn["capture_gaps"], conn["skipped_bytes"]) == (
        4,
        expect["skipped_bytes"],
    )
    assert as_table.returncode == 0, as_table.stderr
    out = as_table.stdout
    assert (
        f"4 capture gaps ({expect['gap_bytes']} bytes missing), decoding resumed "
        f"2 times, {expect['records_after_resync']} records decoded after resuming, "
        f"{expect['skipped_bytes']} bytes skipped" in out
    )
    assert "Connections with capture gaps" in out
    (line,) = [row for row in out.splitlines() if f"{CLIENT}:40001" in row]
    cells = [cell.strip() for cell in line.strip("│ ").split("│")]
    assert cells == [
        f"{CLIENT}:40001",
        IMEI,
        "4",
        str(expect["gap_bytes"]),
        str(expect["skipped_bytes"]),
        "2",
        str(expect["records_after_resync"]),
        "0",
        "1",
    ]


def test_cli_shows_no_gap_lines_for_a_whole_capture(tmp_path: Path) -> None:
    conv = _logged_in()
    _send_acked(conv, "wiki-codec8-tcp-ex1")
    conv.close()

    out = _trackgate("pcap", str(conv.write(tmp_path / "ok.pcap"))).stdout

    assert "capture gaps" not in out
    assert "1 AVL packets with 1 records" in out


# Reassembly rules ----------------------------------------------------------------


def test_a_hole_is_skipped_once_the_peer_acknowledged_past_it() -> None:
    stream = _Reassembler(first_seq=2**32 - 10)
    assert stream.add(1.0, 2**32 - 10, b"a" * 10) == [(1.0, b"a" * 10, 0)]

    # 20 bytes (sequence 0..19) are missing; the segment after them waits.
    assert stream.add(2.0, 20, b"b" * 5) == []
    # An ACK up to the held segment's start proves nothing yet...
    assert stream.acknowledged(20) == []
    # ...one past it does: the peer had the hole.
    assert stream.acknowledged(21) == [(2.0, b"b" * 5, 20)]
    assert (stream.gaps, stream.gap_bytes, stream.delivered) == (1, 20, 35)


def test_a_hole_nobody_acknowledged_waits_for_its_retransmission() -> None:
    stream = _Reassembler(first_seq=100)
    assert stream.add(1.0, 110, b"late") == []
    assert stream.acknowledged(100) == []  # a duplicate ACK

    assert stream.add(2.0, 100, b"0123456789") == [
        (2.0, b"0123456789", 0),
        (1.0, b"late", 0),
    ]
    assert stream.gaps == 0


def test_too_much_held_behind_a_hole_skips_it() -> None:
    stream = _Reassembler(first_seq=0)
    segment = b"x" * 65536
    held = MAX_OUT_OF_ORDER_BYTES // len(segment)
    for index in range(held):
        assert stream.add(1.0, 100 + index * len(segment), segment) == []

    chunks = stream.add(2.0, 100 + held * len(segment), segment)

    assert [chunk.gap for chunk in chunks] == [100] + [0] * held
    assert sum(len(chunk.data) for chunk in chunks) == (held + 1) * len(segment)
    assert stream.flush() == []


def test_a_link_seen_only_from_the_server_side_counts_no_acks(tmp_path: Path) -> None:
    # Begun before the capture, the client silent during it: a subscriber's
    # link to a service on the port, say. Its server bytes answer nothing seen.
    conv = Conversation()
    conv.handshake(captured=False)
    for _ in range(5):
        conv.reply(tcp_ack(1) * 3)

    result = analyse_capture(conv.write(tmp_path / "server-only.pcap"), PORT)

    assert _only_connection(result)["server_acks"] == 0
    assert result["totals"]["server_acks"] == 0
    assert [row["server_acks"] for row in result["addresses"]] in ([], [0])
