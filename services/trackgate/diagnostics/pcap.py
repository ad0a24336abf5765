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
* the server's answers: the 4-byte record counts it sent back, matched to
  packets in order, so packets never acknowledged stand out;
* record lag: capture time of the packet minus the device's record time;
* UDP datagrams decoded with :func:`trackgate.protocol.decode_udp_datagram`
  and matched to the server's replies by AVL packet id.

It reads a file and computes; it captures nothing and prints nothing. Known
limits (IP fragments, mixed link types in one pcapng) are in
``docs/diagnostics.md``.
"""

from __future__ import annotations

import ipaddress
import logging
import statistics
import struct
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from trackgate.diagnostics.errors import CaptureError
from trackgate.protocol import (
    AvlPacket,
    GprsMessage,
    Imei,
    KeepAlive,
    LocalProtocolError,
    RemoteProtocolError,
    TcpServerConnection,
    decode_udp_datagram,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 5027

# A capture is analysed offline, so frames up to 64 KiB are accepted: camera
# chunks and firmware that overshoots the 1280-byte packet size still decode,
# while a corrupt length field cannot make one flow buffer more than this.
MAX_FRAME_SIZE = 65536
# Bytes held per direction of one connection while waiting for a missing
# segment. A sender never has more than its window in flight (a few hundred
# KiB at most for a tracker); beyond 1 MiB the gap is capture loss, not
# reordering, and the rest of that stream is not decoded.
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
            analysis.feed(_read_packets(reader, analysis))
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

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if size > 0 and 0 < len(data) < size:
            self.torn = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.torn = False
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _read_packets(reader: Any, analysis: _Analysis) -> Iterator[tuple[float, bytes]]:
    try:
        for timestamp, buf in reader:
            yield float(timestamp), bytes(buf)
    except (dpkt.NeedData, dpkt.UnpackError, struct.error, ValueError) as exc:
        # tcpdump killed mid-write leaves a torn last record: keep the rest.
        log.warning("capture ends with a truncated record: %s", exc)
        analysis.truncated = True


# Reassembly -----------------------------------------------------------------


class _Reassembler:
    """One direction of a TCP connection, put back in sequence order."""

    def __init__(self, first_seq: int) -> None:
        self._next_seq = first_seq  # sequence number of the next byte wanted
        self.delivered = 0  # stream offset of that byte
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self.retransmitted_segments = 0
        self.overflowed = False

    @property
    def stuck_bytes(self) -> int:
        """Bytes still waiting behind a gap that never filled."""
        return self._pending_bytes

    def add(self, seq: int, payload: bytes) -> bytes:
        """Take one segment; return the bytes that became contiguous."""
        # Distance from the next wanted byte, in [-2**31, 2**31): sequence
        # numbers wrap at 2**32, stream offsets do not.
        distance = (seq - self._next_seq) % _SEQ_MODULO
        if distance >= _SEQ_HALF:
            distance -= _SEQ_MODULO
        offset = self.delivered + distance
        end = offset + len(payload)
        if end <= self.delivered:
            self.retransmitted_segments += 1
            return b""
        if offset > self.delivered:
            self._hold(offset, payload)
            return b""

        out = bytearray(payload[self.delivered - offset :])
        self.delivered += len(out)
        while self._pending:
            start = min(self._pending)
            if start > self.delivered:
                break
            chunk = self._pending.pop(start)
            self._pending_bytes -= len(chunk)
            if start + len(chunk) > self.delivered:
                fresh = chunk[self.delivered - start :]
                out += fresh
                self.delivered += len(fresh)
        self._next_seq = (self._next_seq + len(out)) % _SEQ_MODULO
        return bytes(out)

    def _hold(self, offset: int, payload: bytes) -> None:
        known = self._pending.get(offset)
        if known is not None and len(known) >= len(payload):
            self.retransmitted_segments += 1
            return
        if self._pending_bytes + len(payload) > MAX_OUT_OF_ORDER_BYTES:
            self.overflowed = True
            return
        self._pending_bytes += len(payload) - (len(known) if known else 0)
        self._pending[offset] = payload


# State per connection ---------------------------------------------------------


@dataclass
class _PacketSeen:
    completed_at: float
    records: int
    acked_at: float | None = None
    ack_value: int | None = None


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
    decoder: TcpServerConnection | None = None
    logged_in: bool | None = None
    imei: str | None = None
    imei_reply: int | None = None
    server_buffer: bytearray = field(default_factory=bytearray)
    packets: list[_PacketSeen] = field(default_factory=list)
    unacked: deque[_PacketSeen] = field(default_factory=deque)
    acks: int = 0
    nacks: int = 0
    commands: int = 0
    messages: int = 0
    keepalives: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def handshake_seconds(self) -> float | None:
        if not self.syn_times or self.syn_ack_at is None:
            return None
        return self.syn_ack_at - self.syn_times[0]

    @property
    def answered(self) -> bool:
        return self.syn_ack_at is not None or self.client_stream is not None


@dataclass
class _Datagram:
    client: Endpoint
    imei: str | None
    avl_packet_id: int | None
    records: int
    seen_at: float
    replied_at: float | None = None


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
            transport = ip.data
            if isinstance(transport, dpkt.tcp.TCP):
                self._tcp(timestamp, ip, transport)
            elif isinstance(transport, dpkt.udp.UDP):
                self._udp(timestamp, ip, transport)

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

    def _tcp(self, ts: float, ip: Any, tcp: Any) -> None:
        src: Endpoint = (_address(ip.src), int(tcp.sport))
        dst: Endpoint = (_address(ip.dst), int(tcp.dport))
        if dst[1] == self.port:
            client, server, from_client = src, dst, True
        elif src[1] == self.port:
            client, server, from_client = dst, src, False
        else:
            return
        self.packets_on_port += 1
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
        if tcp.data:
            if from_client:
                self._client_data(ts, flow, int(tcp.seq), bytes(tcp.data))
            else:
                self._server_data(ts, flow, int(tcp.seq), bytes(tcp.data))

    def _client_syn(
        self, ts: float, key: tuple[Endpoint, Endpoint], flow: _Flow | None, seq: int
    ) -> None:
        if flow is not None and flow.isn == seq:
            flow.syn_times.append(ts)
            return
        if flow is not None:
            self.finished.append(flow)
        flow = self.flows[key] = _Flow(key[0], key[1], isn=seq)
        flow.syn_times.append(ts)

    def _syn_ack(self, ts: float, flow: _Flow, seq: int) -> None:
        if flow.syn_ack_at is None:
            flow.syn_ack_at = ts
            flow.server_isn = seq
        else:
            flow.syn_ack_retransmits += 1

    def _client_data(self, ts: float, flow: _Flow, seq: int, payload: bytes) -> None:
        if flow.client_stream is None:
            first = seq if flow.isn is None else (flow.isn + 1) % _SEQ_MODULO
            flow.client_stream = _Reassembler(first)
        fresh = flow.client_stream.add(seq, payload)
        if fresh:
            self._decode_client(ts, flow, fresh)

    def _server_data(self, ts: float, flow: _Flow, seq: int, payload: bytes) -> None:
        if flow.server_stream is None:
            known = flow.server_isn
            first = seq if known is None else (known + 1) % _SEQ_MODULO
            flow.server_stream = _Reassembler(first)
        fresh = flow.server_stream.add(seq, payload)
        if fresh:
            flow.server_buffer += fresh
            self._read_server_answers(ts, flow)

    def _decode_client(self, ts: float, flow: _Flow, data: bytes) -> None:
        if flow.decoder is None:
            if flow.logged_in is not None:
                return  # decoding stopped after a fatal error
            flow.logged_in = _starts_with_login(data)
            flow.decoder = TcpServerConnection(
                max_packet_size=MAX_FRAME_SIZE, expect_imei=flow.logged_in
            )
        decoder = flow.decoder
        try:
            decoder.receive_data(data)
            while True:
                try:
                    event = decoder.next_event()
                except RemoteProtocolError as exc:
                    flow.errors[exc.kind] += 1
                    if exc.fatal:
                        flow.decoder = None
                        return
                    continue
                if event is None:
                    return
                self._client_event(ts, flow, decoder, event)
        except LocalProtocolError:
            flow.decoder = None

    def _client_event(
        self, ts: float, flow: _Flow, decoder: TcpServerConnection, event: object
    ) -> None:
        if isinstance(event, Imei):
            flow.imei = event.imei
            device = self._device(event.imei)
            device.connections += 1
            device.addresses.add(flow.client[0])
            decoder.accept_imei(True)
        elif isinstance(event, AvlPacket):
            seen = _PacketSeen(ts, len(event.records))
            flow.packets.append(seen)
            flow.unacked.append(seen)
            if flow.imei is not None:
                self._count_packet(self._device(flow.imei), ts, event)
        elif isinstance(event, GprsMessage):
            flow.messages += 1
        elif isinstance(event, KeepAlive):
            flow.keepalives += 1

    def _read_server_answers(self, ts: float, flow: _Flow) -> None:
        buffer = flow.server_buffer
        if flow.logged_in and flow.imei_reply is None:
            flow.imei_reply = buffer[0]
            del buffer[:_IMEI_REPLY_SIZE]
        while len(buffer) >= _TCP_ACK.size:
            size = _command_size(buffer)
            if size is not None:
                if len(buffer) < size:
                    return
                flow.commands += 1
                del buffer[:size]
                continue
            (value,) = _TCP_ACK.unpack_from(buffer)
            del buffer[: _TCP_ACK.size]
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

    def _udp(self, ts: float, ip: Any, udp: Any) -> None:
        src: Endpoint = (_address(ip.src), int(udp.sport))
        dst: Endpoint = (_address(ip.dst), int(udp.dport))
        payload = bytes(udp.data)
        if dst[1] == self.port:
            self.packets_on_port += 1
            self._udp_datagram(ts, src, payload)
        elif src[1] == self.port:
            self.packets_on_port += 1
            self._udp_reply(ts, dst, payload)

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
                self._device(flow.imei).acks_missing += sum(
                    1 for packet in flow.packets if packet.acked_at is None
                )
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
                "truncated": self.truncated,
                "first_timestamp": self.first_ts,
                "duration_seconds": duration,
            },
            "port": self.port,
            "totals": _totals(flows, self.datagrams, self.devices.values()),
            "addresses": [
                _address_row(address, rows, self.datagrams, self.udp_errors_by_address)
                for address, rows in sorted(_by_address(flows, self.datagrams).items())
            ],
            "devices": [_device_row(d) for _, d in sorted(self.devices.items())],
            "connections": [_flow_row(flow) for flow in flows],
            "udp_errors": dict(self.udp_errors),
        }


# Helpers -----------------------------------------------------------------------


def _ip_from_raw(buf: bytes) -> Any:
    version = buf[0] >> 4 if buf else 0
    if version == 4:
        return dpkt.ip.IP(buf)
    if version == 6:
        return dpkt.ip6.IP6(buf)
    return None


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
    decoded = [datagram for datagram in datagrams if datagram.imei is not None]
    return {
        "connections": sum(1 for flow in flows if flow.answered),
        "packets": len(packets) + len(decoded),
        "records": sum(p.records for p in packets) + sum(d.records for d in decoded),
        "server_acks": sum(flow.acks for flow in flows),
        "acks_missing": sum(1 for packet in packets if packet.acked_at is None),
        "acks_short": sum(flow.nacks for flow in flows),
        "protocol_errors": sum(sum(flow.errors.values()) for flow in flows),
        "udp_datagrams": len(datagrams),
        "udp_unanswered": sum(1 for d in datagrams if d.replied_at is None),
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
        "imei_reply": flow.imei_reply,
        "packets": len(flow.packets),
        "records": sum(packet.records for packet in flow.packets),
        "server_acks": flow.acks,
        "acks_missing": sum(1 for p in flow.packets if p.acked_at is None),
        "ack_delay_ms": _spread(
            [p.acked_at - p.completed_at for p in flow.packets if p.acked_at],
            1000.0,
        ),
        "keepalives": flow.keepalives,
        "gprs_messages": flow.messages,
        "server_commands": flow.commands,
        "retransmitted_segments": (
            flow.client_stream.retransmitted_segments if flow.client_stream else 0
        ),
        "undecoded_bytes": _undecoded(flow),
        "reassembly_gave_up": bool(
            flow.client_stream and flow.client_stream.overflowed
        ),
        "protocol_errors": dict(flow.errors),
        "ended": flow.ended,
    }


def _undecoded(flow: _Flow) -> int:
    stuck = flow.client_stream.stuck_bytes if flow.client_stream else 0
    buffered = flow.decoder.buffered if flow.decoder else 0
    return stuck + buffered


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
