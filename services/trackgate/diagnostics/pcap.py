"""Read a tcpdump capture of the gateway port and tell, per device, what happened.

``trackgate pcap`` calls :func:`analyse_capture`. From a pcap or pcapng file
it rebuilds every TCP connection and UDP exchange on the gateway port and
reports, per client address and per IMEI:

* handshakes: SYNs, SYN retransmissions (the same 4-tuple and ISN again),
  SYNs never answered, SYNs refused with RST, time from the first SYN to the
  SYN-ACK;
* data: the client-to-server byte stream reassembled by sequence number
  (out-of-order and retransmitted segments are put back in place) and decoded
  with :class:`trackgate.protocol.TcpServerConnection`: IMEIs, AVL packets,
  records, packets sent again, protocol errors;
* capture gaps: bytes the capture lacks (the other side acknowledged them)
  are skipped, and decoding resumes at the next plausible frame; the same
  scanner finds the first frame of a connection whose start was not
  captured, and the next frame after a fatal protocol error;
* the server's answers: the 4-byte record counts it sent back, matched to
  packets in order, so packets never acknowledged stand out;
* record lag: capture time of the packet minus the device's record time;
* UDP datagrams decoded with :func:`trackgate.protocol.decode_udp_datagram`
  and matched to the server's replies by AVL packet id;
* warnings about the capture itself: no packets, none on the port, packets
  cut short by the snap length, connections that carried no Teltonika
  traffic at all (a capture of another port's service).

It reads a file and computes; it captures nothing and prints nothing. Known
limits (IP fragments, mixed link types in one pcapng) are in
``docs/diagnostics.md``.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import re
import statistics
import struct
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import dpkt

from trackgate.diagnostics.errors import CaptureError
from trackgate.protocol import (
    AVL_CODECS,
    GPRS_CODECS,
    IMEI_MAX_DIGITS,
    AvlPacket,
    Event,
    GprsMessage,
    Imei,
    KeepAlive,
    LocalProtocolError,
    RemoteProtocolError,
    TcpServerConnection,
    decode_tcp_frame,
    decode_udp_datagram,
    read_udp_head,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 5027

# A capture is analysed offline, so frames up to 64 KiB are accepted: camera
# chunks and firmware that overshoots the 1280-byte packet size still decode,
# while a corrupt length field cannot make one flow buffer more than this.
MAX_FRAME_SIZE = 65536
# Bytes held per direction of one connection while waiting for a missing
# segment. A sender never has more than its window in flight (a few hundred
# KiB at most for a tracker); beyond 1 MiB the hole is capture loss, not
# reordering, and is skipped as a capture gap even if no acknowledgement
# showed it (a capture of one direction only has none).
MAX_OUT_OF_ORDER_BYTES = 1 << 20
# A handshake that took this long included at least one SYN retransmission
# (the first retransmission timeout is 1 s).
SLOW_HANDSHAKE_SECONDS = 0.9
# Device time before 2000-01-01 means the record was saved before the clock
# was set; such records are counted apart instead of skewing the lag figures.
UNSYNCED_BEFORE_MS = 946_684_800_000

_SEQ_MODULO = 1 << 32
_SEQ_HALF = 1 << 31
_IMEI_REPLY_SIZE = 1
_TCP_ACK = struct.Struct(">I")
_UDP_ACK = struct.Struct(">HHBBB")  # length 5, packet id, 01, AVL packet id, count
_UDP_ACK_LENGTH = 5
_IPV6_HEADER = 40  # fixed header, not counted in the IPv6 payload length
_GPRS_COMMAND_CODECS = frozenset({12, 14})
_COMMAND_HEAD = struct.Struct(">II")  # zero preamble, data length
_COMMAND_ENVELOPE = 12  # preamble + length + CRC around the data field

_LINK_ETHERNET = 1
_LINK_NULL = {0, 108}  # BSD loopback, OpenBSD loop: 4-byte family header
_LINK_RAW = {12, 14, 101}  # raw IP as written by different libpcap builds
_LINK_IPV4 = 228
_LINK_IPV6 = 229
_LINK_SLL = 113
_LINK_SLL2 = 276
#: Link types whose frames are unwrapped to IP (Ethernet, Linux cooked v1/v2,
#: BSD loopback, raw IPv4/IPv6).
SUPPORTED_LINK_TYPES = frozenset(
    {_LINK_ETHERNET, _LINK_SLL, _LINK_SLL2, _LINK_IPV4, _LINK_IPV6}
    | _LINK_NULL
    | _LINK_RAW
)

Endpoint = tuple[str, int]


def analyse_capture(path: str | Path, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """Analyse the TCP and UDP traffic on ``port`` in a pcap or pcapng file.

    Returns a JSON-ready dict (shape documented in ``docs/diagnostics.md``).

    Raises:
        CaptureError: the file cannot be opened or is not a capture, or its
            link type carries no IP.
    """
    analysis = _Analysis(port)
    try:
        with open(path, "rb") as raw:
            handle = _TearWatch(raw)
            try:
                reader = dpkt.pcap.UniversalReader(handle)
            except (ValueError, dpkt.NeedData) as exc:
                raise CaptureError(
                    f"{path}: not a pcap or pcapng file ({exc})"
                ) from exc
            analysis.file_format = type(reader).__module__.rsplit(".", 1)[-1]
            analysis.link_type = int(reader.datalink())
            if analysis.link_type not in SUPPORTED_LINK_TYPES:
                raise CaptureError(
                    f"{path}: link type {analysis.link_type} carries no IP we can read"
                )
            analysis.feed(_read_packets(reader, analysis, handle))
            analysis.finish()
            analysis.truncated = analysis.truncated or handle.torn
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror or exc}") from exc
    return analysis.report(str(path))


class _TearWatch:
    """A file wrapper that notices a read cut short by the end of the file.

    dpkt yields the torn last record of a pcap without complaint; a short
    read is the only sign that tcpdump was killed while writing it.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.name = raw.name
        self.torn = False
        self.missing = 0  # bytes the torn read lacked

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if size > 0 and 0 < len(data) < size:
            self.torn = True
            self.missing = size - len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.torn = False
        self.missing = 0
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _read_packets(
    reader: Any, analysis: _Analysis, handle: _TearWatch
) -> Iterator[tuple[float, bytes]]:
    try:
        for timestamp, buf in reader:
            if handle.torn:
                # dpkt hands over a pcap's torn last record as if whole: it
                # is neither a packet nor cut by the snap length.
                _torn(analysis, handle, None)
                return
            yield float(timestamp), bytes(buf)
    except (dpkt.NeedData, dpkt.UnpackError, struct.error, ValueError) as exc:
        # tcpdump killed mid-write leaves a torn last record: keep the rest.
        _torn(analysis, handle, exc)


def _torn(analysis: _Analysis, handle: _TearWatch, exc: Exception | None) -> None:
    log.warning(
        "capture ends with a truncated record after %d whole packets: %s",
        analysis.packets,
        _tear_reason(exc, handle),
    )
    analysis.truncated = True


def _tear_reason(exc: Exception | None, handle: _TearWatch) -> str:
    if handle.torn or exc is None:
        return (
            f"the file ends {handle.missing} bytes before the end of that record "
            "(tcpdump stopped while writing, or the file was cut)"
        )
    # dpkt raises NeedData without a message.
    return str(exc) or "the record is shorter than its header says"


# Reassembly -----------------------------------------------------------------


class _Chunk(NamedTuple):
    """Bytes that became contiguous, with the capture time of their segment."""

    ts: float
    data: bytes
    gap: int  # bytes missing from the capture just before ``data``


class _Reassembler:
    """One direction of a TCP connection, put back in sequence order.

    Out-of-order segments wait for the bytes before them. The wait ends, and
    the missing bytes are declared a capture gap, when the capture shows they
    will never come: the peer acknowledged bytes past the start of a held
    segment (so it received the hole, and a sender never repeats what was
    acknowledged), or more than ``MAX_OUT_OF_ORDER_BYTES`` are held, or the
    capture ends (``flush``). A hole the peer has not acknowledged is a loss
    on the way: its retransmission fills it. An acknowledgement that only
    reaches the start of a held segment is not enough, so a capture that
    shows a segment just after the ACK for it (packets from several CPUs)
    still reassembles.
    """

    def __init__(self, first_seq: int) -> None:
        self._next_seq = first_seq  # sequence number of the next byte wanted
        self.delivered = 0  # stream offset of that byte
        self._acked = 0  # stream offset the peer acknowledged up to
        self._pending: dict[int, tuple[float, bytes]] = {}
        self._pending_bytes = 0
        self._carry = 0  # bytes skipped, to report with the next chunk
        self.retransmitted_segments = 0
        self.gaps = 0
        self.gap_bytes = 0

    def _offset(self, seq: int) -> int:
        # Distance from the next wanted byte, in [-2**31, 2**31): sequence
        # numbers wrap at 2**32, stream offsets do not.
        distance = (seq - self._next_seq) % _SEQ_MODULO
        if distance >= _SEQ_HALF:
            distance -= _SEQ_MODULO
        return self.delivered + distance

    def add(self, ts: float, seq: int, payload: bytes) -> list[_Chunk]:
        """Take one segment; return the chunks that became contiguous."""
        offset = self._offset(seq)
        end = offset + len(payload)
        if end <= self.delivered:
            self.retransmitted_segments += 1
            return []
        if offset > self.delivered:
            self._hold(ts, offset, payload)
            return self._settle()
        chunk = self._emit(ts, payload[self.delivered - offset :])
        return [chunk, *self._drain()]

    def acknowledged(self, ack_seq: int) -> list[_Chunk]:
        """Take the peer's acknowledgement number; return chunks it unblocked."""
        offset = self._offset(ack_seq)
        if offset <= self._acked:
            return []
        self._acked = offset
        return self._settle()

    def flush(self) -> list[_Chunk]:
        """The capture ended: skip every hole and return what was held."""
        chunks: list[_Chunk] = []
        while self._pending:
            chunks += self._skip_to(min(self._pending))
        return chunks

    def _settle(self) -> list[_Chunk]:
        chunks: list[_Chunk] = []
        while self._pending:
            first = min(self._pending)
            if self._pending_bytes <= MAX_OUT_OF_ORDER_BYTES and self._acked <= first:
                break
            chunks += self._skip_to(first)
        return chunks

    def _skip_to(self, offset: int) -> list[_Chunk]:
        missing = offset - self.delivered
        self.gaps += 1
        self.gap_bytes += missing
        self._carry = missing
        self._advance(missing)
        return self._drain()

    def _advance(self, size: int) -> None:
        self.delivered += size
        self._next_seq = (self._next_seq + size) % _SEQ_MODULO

    def _emit(self, ts: float, data: bytes) -> _Chunk:
        chunk = _Chunk(ts, data, self._carry)
        self._carry = 0
        self._advance(len(data))
        return chunk

    def _drain(self) -> list[_Chunk]:
        chunks: list[_Chunk] = []
        while self._pending:
            start = min(self._pending)
            if start > self.delivered:
                break
            ts, chunk = self._pending.pop(start)
            self._pending_bytes -= len(chunk)
            if start + len(chunk) > self.delivered:
                chunks.append(self._emit(ts, chunk[self.delivered - start :]))
        return chunks

    def _hold(self, ts: float, offset: int, payload: bytes) -> None:
        known = self._pending.get(offset)
        if known is not None and len(known[1]) >= len(payload):
            self.retransmitted_segments += 1
            return
        self._pending_bytes += len(payload) - (len(known[1]) if known else 0)
        self._pending[offset] = (ts, payload)


# Resynchronisation -----------------------------------------------------------


def _sync_pattern(login: bool) -> re.Pattern[bytes]:
    """Positions where a frame head (or a login frame) could start.

    A frame head is the zero preamble, four length bytes and a codec id of
    the supported set; a login is a u16 length of 15 or 16 and as many ASCII
    digits. The lookahead finds overlapping positions in one C-level pass.
    """
    codecs = b"".join(re.escape(bytes([c])) for c in sorted(_SYNC_CODECS))
    head = rb"\x00{4}[\x00-\xff]{4}[" + codecs + rb"]"
    if login:
        head += rb"|\x00(?:\x0f[0-9]{15}|\x10[0-9]{16})"
    return re.compile(rb"(?=" + head + rb")", re.DOTALL)


_SYNC_CODECS = AVL_CODECS | GPRS_CODECS
_SYNC_FRAME = _sync_pattern(login=False)
_SYNC_FRAME_OR_LOGIN = _sync_pattern(login=True)
# Longest pattern (a 16-digit login) less one: positions this close to the end
# of the buffer are looked at again when more bytes arrive.
_SYNC_MARGIN = 2 + IMEI_MAX_DIGITS - 1
_FRAME_ENVELOPE = 12  # preamble, length and CRC fields around the data field
_MIN_FRAME_DATA = 3  # codec id and the two record counts
_MAX_FRAME_DATA = MAX_FRAME_SIZE - _FRAME_ENVELOPE


class _FrameScanner:
    """Finds the next plausible Teltonika frame in a byte stream of unknown phase.

    A candidate is accepted when it is a whole frame that the protocol package
    decodes: zero preamble, data length within ``MAX_FRAME_SIZE``, a
    supported codec, equal counts at both ends, a valid CRC-16/IBM and records
    that fill the data field exactly. With ``login`` a login frame (u16 length
    15 or 16 and as many ASCII digits) is accepted as well.

    Cost: each byte is looked at once by one regular-expression pass (a few
    positions at the end again when more bytes arrive); a candidate whose
    frame is not complete yet waits in a heap ordered by where it ends, and is
    checked once when its last byte arrives, first in O(1) (counts equal, CRC
    field's upper half zero), and only then checksummed and decoded.
    Candidates never block each other: the earliest one that checks out wins.
    Memory: bytes before the earliest waiting candidate and before the scan
    position are dropped, so at most one maximum frame (64 KiB) plus the last
    chunk are held.
    """

    def __init__(self, *, login: bool) -> None:
        self._pattern = _SYNC_FRAME_OR_LOGIN if login else _SYNC_FRAME
        self._buf = bytearray()
        self._origin = 0  # stream position of self._buf[0]
        self._next = 0  # first stream position not fully examined yet
        self._waiting: list[tuple[int, int]] = []  # heap of (end, start)
        self._starts: deque[int] = deque()  # waiting starts, in stream order
        self._resolved: set[int] = set()  # starts popped from the heap
        self.skipped = 0  # bytes dropped: no frame starts in them
        self.examined = 0  # candidate positions looked at
        self.checked_bytes = 0  # bytes of candidates handed to the decoder

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def push(self, data: bytes) -> tuple[bool, bytes] | None:
        """Add bytes; once a frame or login is found, return (is_login, bytes
        from its first byte on). Otherwise None: keep pushing."""
        buf = self._buf
        buf += data
        origin = self._origin
        best: int | None = None
        end = origin + len(buf)
        while self._waiting and self._waiting[0][0] <= end:
            _, start = heapq.heappop(self._waiting)
            self._resolved.add(start)
            if (best is None or start < best) and self._frame_checks(start - origin):
                best = start
        login = False
        stop = len(buf) if best is None else best - origin
        pos = self._next - origin
        last = -1
        for match in self._pattern.finditer(buf, pos):
            i = match.start()
            if i >= stop:
                break
            last = i
            self.examined += 1
            if buf[i + 1]:
                best, login = origin + i, True
                break
            length = int.from_bytes(buf[i + 4 : i + 8], "big")
            if not _MIN_FRAME_DATA <= length <= _MAX_FRAME_DATA:
                continue
            frame_end = i + _FRAME_ENVELOPE + length
            if frame_end > len(buf):
                heapq.heappush(self._waiting, (origin + frame_end, origin + i))
                self._starts.append(origin + i)
            elif self._frame_checks(i):
                best = origin + i
                break
        if best is not None:
            self.skipped += best - origin
            rest = bytes(buf[best - origin :])
            self._reset(end)
            return login, rest
        self._next = origin + max(pos, len(buf) - _SYNC_MARGIN, last + 1)
        self._trim()
        return None

    def drop(self) -> int:
        """Forget everything held (a gap follows); returns how many bytes."""
        held = len(self._buf)
        self.skipped += held
        self._reset(self._origin + held)
        return held

    def _reset(self, position: int) -> None:
        self._buf.clear()
        self._origin = self._next = position
        self._waiting.clear()
        self._starts.clear()
        self._resolved.clear()

    def _trim(self) -> None:
        starts, resolved = self._starts, self._resolved
        while starts and starts[0] in resolved:
            resolved.discard(starts.popleft())
        keep = min(self._next, starts[0]) if starts else self._next
        drop = keep - self._origin
        if drop > 0:
            del self._buf[:drop]
            self._origin = keep
            self.skipped += drop

    def _frame_checks(self, i: int) -> bool:
        """True if the whole frame at buffer index ``i`` decodes."""
        buf = self._buf
        length = int.from_bytes(buf[i + 4 : i + 8], "big")
        end = i + _FRAME_ENVELOPE + length
        # Number of Data 2 (or Quantity 2) repeats byte 9; the CRC is a u16
        # sent as a u32, so its upper half is zero.
        if buf[i + 9] != buf[end - 5] or buf[end - 4] or buf[end - 3]:
            return False
        self.checked_bytes += end - i
        try:
            decode_tcp_frame(bytes(buf[i:end]))
        except RemoteProtocolError:
            return False
        return True


class _ClientStream:
    """Decodes one connection's client-to-server bytes; resumes after gaps.

    The bytes go to :class:`TcpServerConnection` while the stream is in phase.
    After a capture gap (told by ``gap``), after a fatal protocol error, or
    from the start when the capture began inside the connection, a
    :class:`_FrameScanner` looks for the next plausible frame and a new
    decoder takes over from there. A login frame is looked for too while the
    connection has not shown its IMEI or any frame yet.
    """

    def __init__(self, *, from_start: bool) -> None:
        self._decoder: TcpServerConnection | None = None
        self._unconsumed = bytearray()  # what the decoder holds, byte for byte
        self._scanner: _FrameScanner | None = (
            None if from_start else _FrameScanner(login=True)
        )
        self._after_gap = False  # the scanner runs because of a gap or error
        self._login_passed = False  # an IMEI or a frame was decoded
        self.resynced = False  # a decoder was restarted after a gap or error
        self.errors: Counter[str] = Counter()
        self.gaps = 0
        self.gap_bytes = 0
        self.resyncs = 0
        self._skipped = 0
        self._scanned_skips = 0  # skipped by scanners no longer running

    @property
    def skipped_bytes(self) -> int:
        """Captured bytes dropped to find the next frame."""
        scanning = self._scanner.skipped if self._scanner else 0
        return self._skipped + self._scanned_skips + scanning

    @property
    def undecoded_bytes(self) -> int:
        """Bytes held at the end of the capture: an unfinished frame."""
        if self._scanner is not None:
            return self._scanner.buffered
        return len(self._unconsumed)

    def gap(self, missing: int) -> None:
        """``missing`` bytes the capture lacks come before the next data."""
        self.gaps += 1
        self.gap_bytes += missing
        self._skipped += len(self._unconsumed)
        self._unconsumed.clear()
        self._decoder = None
        if self._scanner is not None:
            self._scanner.drop()
        self._scan(after_gap=True)

    def feed(self, data: bytes) -> list[Event]:
        """Decode ``data``; returns the events, counts protocol errors."""
        events: list[Event] = []
        while data:
            if self._decoder is None and self._scanner is None:
                self._start(expect_imei=_starts_with_login(data))
            elif self._decoder is None:
                assert self._scanner is not None
                found = self._scanner.push(data)
                if found is None:
                    return events
                login, data = found
                self._retire_scanner()
                self._start(expect_imei=login)
            data = self._decode(data, events)
        return events

    def _scan(self, *, after_gap: bool) -> None:
        if self._scanner is not None:
            self._retire_scanner()
        self._scanner = _FrameScanner(login=not self._login_passed)
        self._after_gap = after_gap

    def _retire_scanner(self) -> None:
        assert self._scanner is not None
        self._scanned_skips += self._scanner.skipped
        self._scanner = None

    def _start(self, *, expect_imei: bool) -> None:
        if self._after_gap:
            self.resyncs += 1
            self.resynced = True
            self._after_gap = False
        self._decoder = TcpServerConnection(
            max_packet_size=MAX_FRAME_SIZE, expect_imei=expect_imei
        )

    def _decode(self, data: bytes, events: list[Event]) -> bytes:
        """Feed the decoder; returns bytes to scan again after a fatal error."""
        decoder = self._decoder
        assert decoder is not None
        unconsumed = self._unconsumed
        unconsumed += data
        try:
            decoder.receive_data(data)
            while True:
                try:
                    event = decoder.next_event()
                except RemoteProtocolError as exc:
                    self.errors[exc.kind] += 1
                    if not exc.fatal:
                        continue
                    # The stream is out of phase: look again from the next byte.
                    del unconsumed[: len(unconsumed) - decoder.buffered]
                    rest = bytes(unconsumed[1:])
                    self._skipped += 1
                    unconsumed.clear()
                    self._decoder = None
                    self._scan(after_gap=True)
                    return rest
                del unconsumed[: len(unconsumed) - decoder.buffered]
                if event is None:
                    return b""
                if isinstance(event, Imei):
                    decoder.accept_imei(True)
                if not isinstance(event, KeepAlive):
                    self._login_passed = True
                events.append(event)
        except LocalProtocolError:  # not reached: every login is accepted
            self._decoder = None
            unconsumed.clear()
            return b""


# State per connection ---------------------------------------------------------


@dataclass
class _PacketSeen:
    completed_at: float
    records: int
    acked_at: float | None = None
    ack_value: int | None = None
    ack_not_captured: bool = False  # its ACK fell into a server-stream gap


@dataclass
class _Flow:
    client: Endpoint
    server: Endpoint
    isn: int | None
    syn_times: list[float] = field(default_factory=list)
    syn_ack_at: float | None = None
    syn_ack_retransmits: int = 0
    server_isn: int | None = None
    refused: bool = False
    ended: str | None = None
    client_stream: _Reassembler | None = None
    server_stream: _Reassembler | None = None
    parser: _ClientStream | None = None
    # True when the server's first byte is the IMEI reply: the client's
    # stream begins with a login and the server's was seen from its start.
    logged_in: bool | None = None
    imei: str | None = None
    imei_reply: int | None = None
    server_buffer: bytearray = field(default_factory=bytearray)
    server_read: int = 0  # server stream bytes taken from server_buffer
    server_aligning: bool = False  # after a server gap: wait for an ACK's head
    server_skipped: int = 0
    packets: list[_PacketSeen] = field(default_factory=list)
    unacked: deque[_PacketSeen] = field(default_factory=deque)
    records_after_resync: int = 0
    acks: int = 0
    nacks: int = 0
    commands: int = 0
    messages: int = 0
    keepalives: int = 0
    client_bytes: int = 0  # client payload bytes in the capture
    cut_segments: int = 0  # segments the snap length cut short

    @property
    def teltonika(self) -> bool:
        """The client sent something that decoded as Teltonika."""
        return bool(
            self.imei is not None or self.packets or self.messages or self.keepalives
        )

    @property
    def other_traffic(self) -> bool:
        """Client bytes were captured whole, and none decoded as Teltonika."""
        return bool(self.client_bytes and not self.cut_segments and not self.teltonika)

    @property
    def server_acks(self) -> int:
        # Every 4 server bytes read as an ACK; they answer packets only on a
        # connection whose client was seen speaking Teltonika (a capture that
        # saw only the server side of another service's link counts none).
        return self.acks if self.teltonika else 0

    @property
    def handshake_seconds(self) -> float | None:
        if not self.syn_times or self.syn_ack_at is None:
            return None
        return self.syn_ack_at - self.syn_times[0]

    @property
    def answered(self) -> bool:
        return self.syn_ack_at is not None or self.client_stream is not None

    @property
    def acks_missing(self) -> int:
        return sum(
            1
            for packet in self.packets
            if packet.acked_at is None and not packet.ack_not_captured
        )


@dataclass
class _Datagram:
    client: Endpoint
    imei: str | None
    avl_packet_id: int | None
    records: int
    seen_at: float
    replied_at: float | None = None
    cut_short: bool = False  # the snap length left part of it out

    @property
    def decoded(self) -> bool:
        return self.imei is not None and not self.cut_short


@dataclass
class _Device:
    imei: str
    addresses: set[str] = field(default_factory=set)
    connections: int = 0
    packets: int = 0
    records: int = 0
    resent_packets: int = 0
    acks_missing: int = 0
    udp_datagrams: int = 0
    lags: list[float] = field(default_factory=list)
    unsynced_records: int = 0
    seen_packets: set[tuple[bytes, ...]] = field(default_factory=set)


class _Analysis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.file_format = "pcap"
        self.link_type = _LINK_ETHERNET
        self.truncated = False
        self.packets = 0
        self.packets_on_port = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.flows: dict[tuple[Endpoint, Endpoint], _Flow] = {}
        self.finished: list[_Flow] = []
        self.datagrams: list[_Datagram] = []
        self.udp_errors: Counter[str] = Counter()
        self.udp_errors_by_address: Counter[str] = Counter()
        self.devices: dict[str, _Device] = {}
        self.undecodable_link = 0
        self.cut_by_snaplen = 0  # packets on the port the snap length cut short

    # Packet dispatch ----------------------------------------------------------

    def feed(self, packets: Iterable[tuple[float, bytes]]) -> None:
        for timestamp, buf in packets:
            self.packets += 1
            if self.first_ts is None:
                self.first_ts = timestamp
            self.last_ts = timestamp
            ip = self._ip_layer(buf)
            if ip is None:
                continue
            transport, cut = ip.data, _snaplen_cut(ip)
            if isinstance(transport, dpkt.tcp.TCP):
                self._tcp(timestamp, ip, transport, cut)
            elif isinstance(transport, dpkt.udp.UDP):
                self._udp(timestamp, ip, transport, cut)

    def _ip_layer(self, buf: bytes) -> Any:
        link = self.link_type
        try:
            if link == _LINK_ETHERNET:
                frame: Any = dpkt.ethernet.Ethernet(buf).data
            elif link == _LINK_SLL:
                frame = dpkt.sll.SLL(buf).data
            elif link == _LINK_SLL2:
                frame = dpkt.sll2.SLL2(buf).data
            elif link in _LINK_NULL:
                frame = _ip_from_raw(buf[4:])
            else:
                frame = _ip_from_raw(buf)
        except (dpkt.UnpackError, dpkt.NeedData, struct.error):
            self.undecodable_link += 1
            return None
        if isinstance(frame, dpkt.ip.IP | dpkt.ip6.IP6):
            return frame
        return None

    # TCP ----------------------------------------------------------------------

    def _tcp(self, ts: float, ip: Any, tcp: Any, cut: int) -> None:
        src: Endpoint = (_address(ip.src), int(tcp.sport))
        dst: Endpoint = (_address(ip.dst), int(tcp.dport))
        if dst[1] == self.port:
            client, server, from_client = src, dst, True
        elif src[1] == self.port:
            client, server, from_client = dst, src, False
        else:
            return
        self.packets_on_port += 1
        if cut:
            self.cut_by_snaplen += 1
        key = (client, server)
        flags = int(tcp.flags)
        syn = bool(flags & dpkt.tcp.TH_SYN)
        ack = bool(flags & dpkt.tcp.TH_ACK)
        rst = bool(flags & dpkt.tcp.TH_RST)
        fin = bool(flags & dpkt.tcp.TH_FIN)
        flow = self.flows.get(key)

        if from_client and syn and not ack:
            self._client_syn(ts, key, flow, int(tcp.seq))
            return
        if flow is None:
            if rst or not tcp.data:
                return
            # The capture began after this connection's handshake.
            flow = self.flows[key] = _Flow(client, server, isn=None)
        if cut:
            flow.cut_segments += 1
        if not from_client and syn and ack:
            self._syn_ack(ts, flow, int(tcp.seq))
            return
        if rst:
            who = "client" if from_client else "server"
            flow.ended = flow.ended or f"reset by {who}"
            if not from_client and not flow.answered:
                flow.refused = True
        elif fin:
            flow.ended = flow.ended or "closed"
        # An acknowledgement can show that bytes missing from the capture
        # reached the other side: read it before the segment's own data.
        if from_client:
            if ack and not rst:
                self._server_acked(flow, int(tcp.ack))
            if tcp.data:
                flow.client_bytes += len(tcp.data)
                self._client_data(ts, flow, int(tcp.seq), bytes(tcp.data))
        else:
            if ack and not rst:
                self._client_acked(flow, int(tcp.ack))
            if tcp.data:
                self._server_data(ts, flow, int(tcp.seq), bytes(tcp.data))

    def _client_syn(
        self, ts: float, key: tuple[Endpoint, Endpoint], flow: _Flow | None, seq: int
    ) -> None:
        if flow is not None and flow.isn == seq:
            flow.syn_times.append(ts)
            return
        if flow is not None:
            self._retire(flow)
        flow = self.flows[key] = _Flow(key[0], key[1], isn=seq)
        flow.syn_times.append(ts)

    def _retire(self, flow: _Flow) -> None:
        """Nothing more comes for ``flow``: decode what its holes held back."""
        self._flush(flow)
        self.finished.append(flow)

    def finish(self) -> None:
        """The capture ended: what waits behind a hole will not be filled."""
        for flow in self.flows.values():
            self._flush(flow)

    def _flush(self, flow: _Flow) -> None:
        if flow.client_stream is not None:
            self._client_chunks(flow, flow.client_stream.flush())
        if flow.server_stream is not None:
            self._server_chunks(flow, flow.server_stream.flush())

    def _syn_ack(self, ts: float, flow: _Flow, seq: int) -> None:
        if flow.syn_ack_at is None:
            flow.syn_ack_at = ts
            flow.server_isn = seq
        else:
            flow.syn_ack_retransmits += 1

    def _client_reassembler(self, flow: _Flow, seq: int | None) -> _Reassembler | None:
        if flow.client_stream is None:
            if flow.isn is not None:
                flow.client_stream = _Reassembler((flow.isn + 1) % _SEQ_MODULO)
            elif seq is not None:
                flow.client_stream = _Reassembler(seq)
        return flow.client_stream

    def _server_reassembler(self, flow: _Flow, seq: int | None) -> _Reassembler | None:
        if flow.server_stream is None:
            if flow.server_isn is not None:
                flow.server_stream = _Reassembler((flow.server_isn + 1) % _SEQ_MODULO)
            elif seq is not None:
                flow.server_stream = _Reassembler(seq)
        return flow.server_stream

    def _client_acked(self, flow: _Flow, ack: int) -> None:
        stream = self._client_reassembler(flow, None)
        if stream is not None:
            self._client_chunks(flow, stream.acknowledged(ack))

    def _server_acked(self, flow: _Flow, ack: int) -> None:
        stream = self._server_reassembler(flow, None)
        if stream is not None:
            self._server_chunks(flow, stream.acknowledged(ack))

    def _client_data(self, ts: float, flow: _Flow, seq: int, payload: bytes) -> None:
        stream = self._client_reassembler(flow, seq)
        assert stream is not None
        self._client_chunks(flow, stream.add(ts, seq, payload))

    def _server_data(self, ts: float, flow: _Flow, seq: int, payload: bytes) -> None:
        stream = self._server_reassembler(flow, seq)
        assert stream is not None
        self._server_chunks(flow, stream.add(ts, seq, payload))

    def _client_chunks(self, flow: _Flow, chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            parser = flow.parser
            if parser is None:
                from_start = flow.isn is not None
                parser = flow.parser = _ClientStream(from_start=from_start)
                if flow.logged_in is None:
                    # A device logs in first: when the capture lost the
                    # login, the server's first byte is still the reply.
                    flow.logged_in = from_start and (
                        chunk.gap > 0 or _starts_with_login(chunk.data)
                    )
            if chunk.gap:
                parser.gap(chunk.gap)
            for event in parser.feed(chunk.data):
                self._client_event(chunk.ts, flow, event)

    def _client_event(self, ts: float, flow: _Flow, event: Event) -> None:
        if isinstance(event, Imei):
            flow.imei = event.imei
            device = self._device(event.imei)
            device.connections += 1
            device.addresses.add(flow.client[0])
            if flow.logged_in is False and flow.server_read == 0:
                # A capture that began between the handshake and the login.
                flow.logged_in = not flow.server_buffer
        elif isinstance(event, AvlPacket):
            seen = _PacketSeen(ts, len(event.records))
            flow.packets.append(seen)
            flow.unacked.append(seen)
            assert flow.parser is not None
            if flow.parser.resynced:
                flow.records_after_resync += len(event.records)
            if flow.imei is not None:
                self._count_packet(self._device(flow.imei), ts, event)
        elif isinstance(event, GprsMessage):
            flow.messages += 1
        elif isinstance(event, KeepAlive):
            flow.keepalives += 1

    def _server_chunks(self, flow: _Flow, chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            if chunk.gap:
                self._server_gap(flow, chunk.gap)
            data = chunk.data
            if flow.server_aligning:
                # After a gap the next segment starts a message, unless the
                # gap cut one: an ACK starts with three zero bytes (a count
                # fits in a byte), a command with four. Anything else is the
                # tail of something lost.
                if len(data) >= 3 and data[:3] != b"\x00\x00\x00":
                    flow.server_skipped += len(data)
                    flow.server_read += len(data)
                    continue
                flow.server_aligning = False
            flow.server_buffer += data
            self._read_server_answers(chunk.ts, flow)

    def _server_gap(self, flow: _Flow, missing: int) -> None:
        """The capture lacks ``missing`` server bytes: their ACKs are unknown."""
        held = len(flow.server_buffer)
        answers = held + missing
        if flow.logged_in and flow.imei_reply is None and flow.server_read == 0:
            answers -= _IMEI_REPLY_SIZE  # the reply byte was among them
        flow.server_skipped += held
        flow.server_read += held + missing
        flow.server_buffer.clear()
        flow.server_aligning = True
        # Each 4-byte ACK the gap held answered the oldest unanswered packet.
        for _ in range(min(answers // _TCP_ACK.size, len(flow.unacked))):
            flow.unacked.popleft().ack_not_captured = True

    def _read_server_answers(self, ts: float, flow: _Flow) -> None:
        buffer = flow.server_buffer
        if flow.logged_in is None:
            # The server spoke before any client byte was captured: on a
            # connection seen from its SYN, it answers a login the capture
            # lost. Seen from later, a first byte of 1 is that answer too:
            # an ACK or a command starts with a zero byte.
            flow.logged_in = flow.isn is not None or buffer[:1] == b"\x01"
        if flow.logged_in and flow.imei_reply is None and flow.server_read == 0:
            flow.imei_reply = buffer[0]
            del buffer[:_IMEI_REPLY_SIZE]
            flow.server_read += _IMEI_REPLY_SIZE
        while len(buffer) >= _TCP_ACK.size:
            size = _command_size(buffer)
            if size is not None:
                if len(buffer) < size:
                    return
                flow.commands += 1
                del buffer[:size]
                flow.server_read += size
                continue
            (value,) = _TCP_ACK.unpack_from(buffer)
            del buffer[: _TCP_ACK.size]
            flow.server_read += _TCP_ACK.size
            flow.acks += 1
            if flow.unacked:
                packet = flow.unacked.popleft()
                packet.acked_at, packet.ack_value = ts, value
                if value != packet.records:
                    flow.nacks += 1

    def _count_packet(self, device: _Device, ts: float, packet: AvlPacket) -> None:
        device.packets += 1
        device.records += len(packet.records)
        key = tuple(record.raw for record in packet.records)
        if key and key in device.seen_packets:
            device.resent_packets += 1
        elif key:
            device.seen_packets.add(key)
        for record in packet.records:
            if record.timestamp < UNSYNCED_BEFORE_MS:
                device.unsynced_records += 1
            else:
                device.lags.append(ts - record.timestamp / 1000)

    def _device(self, imei: str) -> _Device:
        device = self.devices.get(imei)
        if device is None:
            device = self.devices[imei] = _Device(imei)
        return device

    # UDP ----------------------------------------------------------------------

    def _udp(self, ts: float, ip: Any, udp: Any, cut: int) -> None:
        src: Endpoint = (_address(ip.src), int(udp.sport))
        dst: Endpoint = (_address(ip.dst), int(udp.dport))
        payload = bytes(udp.data)
        if dst[1] != self.port and src[1] != self.port:
            return
        self.packets_on_port += 1
        if cut:
            self.cut_by_snaplen += 1
        if dst[1] == self.port and cut:
            self._udp_cut_datagram(ts, src, payload, len(payload) + cut)
        elif dst[1] == self.port:
            self._udp_datagram(ts, src, payload)
        else:
            self._udp_reply(ts, dst, payload)

    def _udp_cut_datagram(
        self, ts: float, client: Endpoint, payload: bytes, size: int
    ) -> None:
        """A datagram the snap length cut: not decodable, but not broken
        either; its head still pairs it with the server's reply."""
        imei, avl_packet_id = _udp_head(payload, size)
        self.datagrams.append(
            _Datagram(client, imei, avl_packet_id, 0, ts, cut_short=True)
        )
        if imei is not None:
            device = self._device(imei)
            device.addresses.add(client[0])
            device.udp_datagrams += 1

    def _udp_datagram(self, ts: float, client: Endpoint, payload: bytes) -> None:
        try:
            datagram = decode_udp_datagram(payload)
        except RemoteProtocolError as exc:
            self.udp_errors[exc.kind] += 1
            self.udp_errors_by_address[client[0]] += 1
            self.datagrams.append(_Datagram(client, None, None, 0, ts))
            return
        packet = datagram.packet
        records = len(packet.records)
        self.datagrams.append(
            _Datagram(client, datagram.imei, datagram.avl_packet_id, records, ts)
        )
        device = self._device(datagram.imei)
        device.addresses.add(client[0])
        device.udp_datagrams += 1
        self._count_packet(device, ts, packet)

    def _udp_reply(self, ts: float, client: Endpoint, payload: bytes) -> None:
        if len(payload) != _UDP_ACK.size:
            return
        length, _packet_id, _fixed, avl_packet_id, _count = _UDP_ACK.unpack(payload)
        if length != _UDP_ACK_LENGTH:
            return
        for datagram in reversed(self.datagrams):
            waiting = datagram.client == client and datagram.replied_at is None
            if waiting and datagram.avl_packet_id == avl_packet_id:
                datagram.replied_at = ts
                return

    # Report -------------------------------------------------------------------

    def report(self, path: str) -> dict[str, Any]:
        flows = self.finished + list(self.flows.values())
        for flow in flows:
            if flow.imei is not None:
                self._device(flow.imei).acks_missing += flow.acks_missing
        duration = None
        if self.first_ts is not None and self.last_ts is not None:
            duration = round(self.last_ts - self.first_ts, 6)
        return {
            "capture": {
                "file": path,
                "format": self.file_format,
                "link_type": self.link_type,
                "packets": self.packets,
                "packets_on_port": self.packets_on_port,
                "undecodable_frames": self.undecodable_link,
                "cut_by_snaplen": self.cut_by_snaplen,
                "truncated": self.truncated,
                "first_timestamp": self.first_ts,
                "duration_seconds": duration,
            },
            "port": self.port,
            "warnings": self._warnings(flows),
            "totals": _totals(flows, self.datagrams, self.devices.values()),
            "addresses": [
                _address_row(address, rows, self.datagrams, self.udp_errors_by_address)
                for address, rows in sorted(_by_address(flows, self.datagrams).items())
            ],
            "devices": [_device_row(d) for _, d in sorted(self.devices.items())],
            "connections": [_flow_row(flow) for flow in flows],
            "udp_errors": dict(self.udp_errors),
        }

    def _warnings(self, flows: list[_Flow]) -> list[str]:
        """What makes the figures unreliable, or the capture the wrong one."""
        port, found = self.port, []
        if not self.packets:
            found.append("the capture holds no packets")
        elif not self.packets_on_port:
            found.append(
                f"none of the {self.packets} packets is on port {port}: "
                "is this the gateway port (--port)?"
            )
        if self.cut_by_snaplen:
            found.append(
                f"{self.cut_by_snaplen} packets cut short by the capture's snap "
                "length: capture with -s 0"
            )
        talking = [flow for flow in flows if flow.client_bytes]
        other = [flow for flow in talking if flow.other_traffic]
        undecoded = [d for d in self.datagrams if d.imei is None and not d.cut_short]
        some_teltonika = any(flow.teltonika for flow in flows) or any(
            d.imei is not None for d in self.datagrams
        )
        if other and some_teltonika:
            found.append(
                f"{len(other)} of {len(talking)} connections on port {port} "
                "carried no Teltonika traffic: another kind of client, or too "
                "little of them was captured"
            )
        elif (other or undecoded) and not some_teltonika:
            what = [f"{len(other)} connections"] if other else []
            what += [f"{len(undecoded)} UDP datagrams"] if undecoded else []
            found.append(
                f"{' and '.join(what)} on port {port} carried no Teltonika "
                "traffic: is this the gateway port?"
            )
        return found


# Helpers -----------------------------------------------------------------------


def _ip_from_raw(buf: bytes) -> Any:
    version = buf[0] >> 4 if buf else 0
    if version == 4:
        return dpkt.ip.IP(buf)
    if version == 6:
        return dpkt.ip6.IP6(buf)
    return None


def _snaplen_cut(ip: Any) -> int:
    """Bytes of ``ip`` the capture left out because its snap length was
    shorter than the packet. A length field of 0 (segments built by TCP
    segmentation offload, IPv6 jumbograms) says nothing: 0."""
    if isinstance(ip, dpkt.ip.IP):
        declared = int(ip.len)
    elif ip.plen:
        declared = int(ip.plen) + _IPV6_HEADER
    else:
        declared = 0
    return max(0, declared - len(ip)) if declared else 0


def _udp_head(data: bytes, size: int) -> tuple[str | None, int | None]:
    """IMEI and AVL packet id at the head of a cut datagram that had ``size``
    bytes on the wire; ``(None, None)`` when the head is not a Teltonika one
    (its length field counts the bytes after it), a ``None`` IMEI when the
    cut fell inside it."""
    head = read_udp_head(data)
    if head is None or head.length != size - 2:
        return None, None
    return head.imei, head.avl_packet_id


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _starts_with_login(data: bytes) -> bool:
    # A login frame starts with a non-zero u16 length, a data frame with the
    # zero preamble; leading 0xFF keep-alive bytes may precede either.
    head = data.lstrip(b"\xff")[:2]
    return len(head) < 2 or head != b"\x00\x00"


def _command_size(buffer: bytearray) -> int | None:
    """Size of a Codec 12/14 command at the head of the server stream, if any."""
    if len(buffer) < _COMMAND_HEAD.size + 1:
        return None
    preamble, length = _COMMAND_HEAD.unpack_from(buffer)
    codec = buffer[_COMMAND_HEAD.size]
    if preamble != 0 or length < 3 or codec not in _GPRS_COMMAND_CODECS:
        return None
    return int(length) + _COMMAND_ENVELOPE


def _spread(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "count": len(values),
        "min": round(min(values) * scale, 3),
        "median": round(statistics.median(values) * scale, 3),
        "max": round(max(values) * scale, 3),
    }


def _syn_counts(flows: Iterable[_Flow]) -> dict[str, Any]:
    flows = [flow for flow in flows if flow.syn_times]
    handshakes = [h for flow in flows if (h := flow.handshake_seconds) is not None]
    return {
        "syns": sum(len(flow.syn_times) for flow in flows),
        "syn_retransmits": sum(len(flow.syn_times) - 1 for flow in flows),
        "syns_unanswered": sum(
            1 for flow in flows if not flow.answered and not flow.refused
        ),
        "syns_refused": sum(1 for flow in flows if flow.refused),
        "slow_handshakes": sum(1 for h in handshakes if h >= SLOW_HANDSHAKE_SECONDS),
        "syn_ack_ms": _spread(handshakes, 1000.0),
    }


def _packet_counts(
    flows: Iterable[_Flow], datagrams: Iterable[_Datagram]
) -> dict[str, int]:
    """Packet and record counts over both transports; ACK counts per transport."""
    flows, datagrams = list(flows), list(datagrams)
    packets = [packet for flow in flows for packet in flow.packets]
    decoded = [datagram for datagram in datagrams if datagram.decoded]
    parsers = [flow.parser for flow in flows if flow.parser is not None]
    return {
        "connections": sum(1 for flow in flows if flow.answered),
        "packets": len(packets) + len(decoded),
        "records": sum(p.records for p in packets) + sum(d.records for d in decoded),
        "server_acks": sum(flow.server_acks for flow in flows),
        "acks_missing": sum(flow.acks_missing for flow in flows),
        "acks_not_captured": sum(1 for packet in packets if packet.ack_not_captured),
        "acks_short": sum(flow.nacks for flow in flows),
        "protocol_errors": sum(sum(p.errors.values()) for p in parsers),
        "capture_gaps": sum(p.gaps for p in parsers),
        "gap_bytes": sum(p.gap_bytes for p in parsers),
        "resyncs": sum(p.resyncs for p in parsers),
        "skipped_bytes": sum(p.skipped_bytes for p in parsers),
        "records_after_resync": sum(flow.records_after_resync for flow in flows),
        "connections_not_teltonika": sum(1 for flow in flows if flow.other_traffic),
        "udp_datagrams": len(datagrams),
        "udp_unanswered": sum(1 for d in datagrams if d.replied_at is None),
        "udp_cut_short": sum(1 for d in datagrams if d.cut_short),
    }


def _by_address(
    flows: list[_Flow], datagrams: list[_Datagram]
) -> dict[str, list[_Flow]]:
    grouped: dict[str, list[_Flow]] = {}
    for flow in flows:
        grouped.setdefault(flow.client[0], []).append(flow)
    for datagram in datagrams:
        grouped.setdefault(datagram.client[0], [])
    return grouped


def _address_row(
    address: str,
    flows: list[_Flow],
    datagrams: list[_Datagram],
    udp_errors: Counter[str],
) -> dict[str, Any]:
    mine = [d for d in datagrams if d.client[0] == address]
    imeis = {flow.imei for flow in flows if flow.imei} | {
        d.imei for d in mine if d.imei
    }
    return {
        "address": address,
        "imeis": sorted(imeis),
        "connections_without_imei": sum(
            1 for flow in flows if flow.packets and flow.imei is None
        ),
        **_syn_counts(flows),
        **_packet_counts(flows, mine),
        "udp_errors": udp_errors.get(address, 0),
    }


def _device_row(device: _Device) -> dict[str, Any]:
    return {
        "imei": device.imei,
        "addresses": sorted(device.addresses),
        "connections": device.connections,
        "udp_datagrams": device.udp_datagrams,
        "packets": device.packets,
        "records": device.records,
        "resent_packets": device.resent_packets,
        "acks_missing": device.acks_missing,
        "unsynced_records": device.unsynced_records,
        "lag_seconds": _spread(device.lags),
    }


def _flow_row(flow: _Flow) -> dict[str, Any]:
    handshake = flow.handshake_seconds
    parser = flow.parser
    client, server = flow.client_stream, flow.server_stream
    return {
        "client": f"{_join(flow.client)}",
        "server": f"{_join(flow.server)}",
        "started_at": flow.syn_times[0] if flow.syn_times else None,
        "syns": len(flow.syn_times),
        "syn_ack_ms": None if handshake is None else round(handshake * 1000, 3),
        "syn_ack_retransmits": flow.syn_ack_retransmits,
        "answered": flow.answered,
        "refused": flow.refused,
        "handshake_captured": flow.isn is not None,
        "imei": flow.imei,
        "imei_reply": None if flow.other_traffic else flow.imei_reply,
        "not_teltonika": flow.other_traffic,
        "client_bytes": flow.client_bytes,
        "segments_cut_short": flow.cut_segments,
        "packets": len(flow.packets),
        "records": sum(packet.records for packet in flow.packets),
        "server_acks": flow.server_acks,
        "acks_missing": flow.acks_missing,
        "acks_not_captured": sum(1 for p in flow.packets if p.ack_not_captured),
        "ack_delay_ms": _spread(
            [p.acked_at - p.completed_at for p in flow.packets if p.acked_at],
            1000.0,
        ),
        "keepalives": flow.keepalives,
        "gprs_messages": flow.messages,
        "server_commands": flow.commands,
        "retransmitted_segments": client.retransmitted_segments if client else 0,
        "capture_gaps": parser.gaps if parser else 0,
        "gap_bytes": parser.gap_bytes if parser else 0,
        "skipped_bytes": parser.skipped_bytes if parser else 0,
        "resyncs": parser.resyncs if parser else 0,
        "records_after_resync": flow.records_after_resync,
        "undecoded_bytes": parser.undecoded_bytes if parser else 0,
        "server_capture_gaps": server.gaps if server else 0,
        "server_gap_bytes": server.gap_bytes if server else 0,
        "server_skipped_bytes": flow.server_skipped,
        "protocol_errors": dict(parser.errors) if parser else {},
        "ended": flow.ended,
    }


def _join(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _totals(
    flows: list[_Flow], datagrams: list[_Datagram], devices: Iterable[_Device]
) -> dict[str, Any]:
    devices = list(devices)
    lags = [lag for device in devices for lag in device.lags]
    return {
        **_syn_counts(flows),
        **_packet_counts(flows, datagrams),
        "devices": len(devices),
        "resent_packets": sum(device.resent_packets for device in devices),
        "lag_seconds": _spread(lags),
    }
