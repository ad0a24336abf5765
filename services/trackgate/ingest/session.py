"""One TCP connection from a tracker: handshake, packets, ACKs.

:class:`TcpSession` is an ``asyncio.Protocol`` (no task per connection, so
an idle session costs a few hundred bytes). It is the only code that pauses
and resumes reading its socket: while a packet is being stored it keeps at
most one more read and then reads nothing, so a slow Redis pushes back to
the device through TCP instead of filling memory. Decoding is
:class:`trackgate.protocol.TcpServerConnection`'s job; storing is the
writer's; the worker (:mod:`trackgate.ingest.worker`) holds the registry of
live sessions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, cast

from trackgate.core.store import DedupLedger, PacketWrite, StoreError, WriteResult
from trackgate.protocol import (
    AvlPacket,
    BadImei,
    GprsMessage,
    Imei,
    KeepAlive,
    RemoteProtocolError,
    TcpServerConnection,
    imei_reply,
    tcp_ack,
)

if TYPE_CHECKING:
    from trackgate.ingest.worker import Worker

log = logging.getLogger("trackgate.ingest.session")

#: Frames dropped in a row (bad CRC, counts that disagree) before the
#: connection is closed. A device waits for the ACK of a frame before it
#: sends another, so one that streams bad frames is broken or hostile, and
#: decoding its stream would hold the event loop for every other device.
MAX_BAD_FRAMES_IN_A_ROW = 8


class TcpSession(asyncio.Protocol):
    """A tracker's TCP connection, from accept to close."""

    __slots__ = (
        "worker",
        "transport",
        "conn",
        "peer",
        "peer_ip",
        "imei",
        "session_id",
        "started_at",
        "last_seen",
        "pending",
        "closed_reason",
        "replaced",
        "first_packet",
        "bad_frames",
        "ledger",
        "_paused",
        "_packet_read_at",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.conn = TcpServerConnection(max_packet_size=worker.settings.max_packet_size)
        self.peer = "?"
        self.peer_ip = "?"
        #: empty until the IMEI was accepted
        self.imei = ""
        self.session_id = ""
        self.started_at = time.time()
        self.last_seen = time.monotonic()
        self.pending: asyncio.Future[WriteResult] | None = None
        self.closed_reason: str | None = None
        self.replaced = False
        self.first_packet = True
        #: frames dropped since the last one decoded
        self.bad_frames = 0
        #: the device's dedup state as this session last wrote it
        self.ledger = DedupLedger()
        self._paused = False
        self._packet_read_at = 0.0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; they behave alike.
        self.transport = cast(asyncio.Transport, transport)
        address = transport.get_extra_info("peername")
        if address:
            self.peer_ip = str(address[0])
            self.peer = f"{address[0]}:{address[1]}"
        refusal = self.worker.admit(self)
        if refusal is not None:
            self.close(refusal)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        if self.pending is not None:
            # The device sent more before its ACK: keep this read, take no
            # more from the socket until the packet is stored. Pausing only
            # then spares two system calls per packet of a device that waits.
            self._paused = True
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_reason is None:
            self.closed_reason = "peer closed" if exc is None else f"lost: {exc}"
        if self.pending is not None and not self.pending.done():
            # The device is gone; the write may still land (a resend is deduped),
            # but nobody will be ACKed.
            self.pending.remove_done_callback(self._stored)
        self.worker.forget(self)

    # public API for the worker and the command courier

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        """Close at once, dropping unsent data (replaced or dead sessions)."""
        if self.closed_reason is None:
            self.closed_reason = reason
        if self.transport is not None:
            self.transport.abort()

    # the pump: decode events until one must wait for Redis

    def _pump(self) -> None:
        while self.pending is None and not self.closed:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                if self._protocol_error(exc):
                    return
                continue
            if event is None:
                return
            self.bad_frames = 0
            if isinstance(event, AvlPacket):
                self._store(event)
            elif isinstance(event, KeepAlive):
                continue
            elif isinstance(event, Imei):
                self._handshake(event.imei)
            elif isinstance(event, GprsMessage):
                self.worker.gprs_message(self, event)

    def _handshake(self, imei: str) -> None:
        accepted = self.worker.accept_imei(imei)
        assert self.transport is not None
        self.transport.write(self.conn.accept_imei(accepted))
        if not accepted:
            self.close("imei refused")
            return
        self.imei = imei
        self.session_id = secrets.token_hex(8)
        self.worker.session_started(self)

    def _store(self, packet: AvlPacket) -> None:
        assert self.imei and self.transport is not None
        self._packet_read_at = time.perf_counter()
        now_ms = int(time.time() * 1000)
        burst = False
        if self.first_packet and packet.records:
            self.first_packet = False
            oldest = min(r.timestamp for r in packet.records)
            burst = now_ms - oldest > self.worker.settings.burst_threshold_s * 1000
        write = PacketWrite(
            imei=self.imei,
            codec=packet.codec,
            records=packet.records,
            received_at=now_ms,
            transport="tcp",
            peer=self.peer,
            burst=burst,
            ledger=self.ledger,
        )
        self.pending = self.worker.writer.submit(write)
        self.pending.add_done_callback(self._stored)
        self.worker.record_lags(write)

    def _stored(self, future: asyncio.Future[WriteResult]) -> None:
        self.pending = None
        if self.closed:
            return
        try:
            result = future.result()
        except StoreError as exc:
            self.worker.refused(self, "store_timeout", str(exc))
            self.close("store failed")
            return
        if not result.ok:
            self.worker.refused(self, "store_refused", result.error or "")
            self.close("store refused")
            return
        assert self.transport is not None
        self.transport.write(tcp_ack(result.accepted))
        self.worker.packet_acked(self, time.perf_counter() - self._packet_read_at)
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._pump()

    def _protocol_error(self, exc: RemoteProtocolError) -> bool:
        """Count and log; True when the connection had to be closed."""
        self.worker.decode_error(self, exc)
        if isinstance(exc, BadImei) and self.transport is not None:
            # A device reads the refusal byte; silence would make it wait.
            self.transport.write(imei_reply(False))
        if exc.fatal:
            self.close(f"protocol error: {exc.kind}")
            return True
        self.bad_frames += 1
        if self.bad_frames >= MAX_BAD_FRAMES_IN_A_ROW:
            self.close(f"protocol error: {self.bad_frames} bad frames in a row")
            return True
        return False
