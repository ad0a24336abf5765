"""Load modes of ``trackgate simulate``: throughput, storm, hold.

Each returns a JSON-ready summary. They open real TCP connections to the
gateway and measure from the device's side; the gateway's own view is in
its metrics.

The simulator shares the machine with the gateway and Redis during a
benchmark, so the two busy modes are written to cost little CPU:
throughput drives each device from transport callbacks (no stream reader,
no task or timeout per read), and storm is a plain non-blocking loop over
the kernel's selector, with no event loop at all. Hold reads nothing
while its sessions are idle: the event loop only tells it when the
gateway closes one. :class:`SimDevice` stays the device for tests that
audit every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import random
import selectors
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from trackgate.core.limits import raise_fd_limit
from trackgate.protocol import (
    CODEC_12,
    CODEC_14,
    COMMAND_TYPE,
    RESPONSE_TYPE,
    GprsMessage,
    ProtocolError,
    decode_tcp_frame,
    encode_gprs_message,
    encode_imei,
)
from trackgate.sim import (
    MAX_COMMAND_FRAME,
    DeviceError,
    LivePacket,
    SimDevice,
    command_answer,
    imei_for,
    percentile,
)

Progress = Callable[[int], None]

#: A connect slower than this went through a SYN retransmission (the first
#: retransmit fires after 1 s): the SYN was dropped somewhere.
SYN_RETRANSMIT_S = 0.9

#: How long a storm connect, and then its IMEI reply, may take before it
#: counts as a failure: long enough for several SYN retransmissions.
STORM_TIMEOUT_S = 30.0

#: Connects a storm starts between two looks at the selector. A completion
#: is stamped when the selector is next read, so a long run of connect()
#: calls (some 30 us each on loopback) would add itself to the connect
#: times of the first sockets of the run.
STORM_START_BURST = 32

#: File descriptors a storm leaves free besides its sockets: stdio, the
#: selector, whatever the interpreter has open.
SPARE_FDS = 64

#: What a throughput device waits for an IMEI reply or an ACK, and how it
#: backs off between sessions: the same as :class:`SimDevice`.
RESPONSE_TIMEOUT_S = 10.0
RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)

#: How long a hold session may take to connect and have its IMEI accepted.
HOLD_LOGIN_TIMEOUT_S = 30.0

#: Hold sessions logging in at once: hold measures idle sessions, and
#: leaves connection storms to :func:`storm`.
HOLD_CONCURRENCY = 512

#: A Codec 12/14 frame starts with this; an ACK (a record count) never does.
_PREAMBLE = bytes(4)
_FRAME_HEAD = 8
_CRC_FIELD = 4


class LoadError(Exception):
    """The load asked for cannot run here (e.g. too few file descriptors)."""


# Throughput ----------------------------------------------------------------


async def throughput(
    host: str,
    port: int,
    *,
    devices: int,
    packets: int,
    records: int,
    codec: int = 0x8E,
    concurrency: int | None = None,
    timeout: float = 300.0,
    progress: Progress | None = None,
    first_imei: int = 0,
    interval: float = 0.0,
    response_timeout: float = RESPONSE_TIMEOUT_S,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """N devices each send M packets of K records; every ACK is checked.

    A device sends its next packet when the ACK of the previous one says
    exactly its record count or, with an ``interval``, on its own clock:
    ``interval`` seconds after it sent the previous one (at once when that
    ACK came later), the first packet at a random point of the first
    interval. Devices keep their own phases, as real ones do, instead of
    falling into step with the ACKs of a shared batch. With an interval a
    packet's records are stamped when it is first sent, the last one then
    and the others spread over the interval before it, as a device that
    records as it goes (a resend repeats them); without one, the packets
    are a backlog whose records are ``packets x records`` seconds old at
    the start, one a second. A wrong or missing
    ACK, or a lost connection, makes it send the same packet again on a new
    connection after a backoff. Codec 12/14 commands are answered as
    :class:`SimDevice` answers them. ``ack_latency_ms`` is from writing a
    packet to reading its ACK; with a ``warmup``, ``ack_latency_ms_steady``
    leaves out the packets written in its first seconds (the logins and the
    first packets of every device); a figure without a single latency in
    it is ``None``. Every wait for a connection, an IMEI reply or an ACK
    lasts ``response_timeout`` at most, and no wait, backoff or pause
    between packets lasts past ``timeout``.

    ``records_sent`` counts the records of the packets written to a
    connected gateway, each packet once however often it was resent;
    ``devices_connected`` the devices that connected at least once, and
    ``connect_failures`` the connects that failed, by what ended them
    (as in :func:`storm`).
    """
    raise_fd_limit()
    # One set of packets shared by the fleet: a device's records are unique
    # to it by IMEI, and encoding 20 records per packet per device would
    # make the simulator, not the gateway, the bottleneck.
    template = SimDevice.with_records(
        imei_for(first_imei), packets, records, codec=codec
    )
    frames = [(frame, len(recs)) for frame, recs in template.packets]
    live = [LivePacket.of(frame) for frame, _ in frames] if interval else []
    fleet = [
        _Device(imei_for(first_imei + i), frames, interval, response_timeout, live)
        for i in range(devices)
    ]
    limit = asyncio.Semaphore(concurrency or devices)
    deadline = time.monotonic() + timeout

    async def one(device: _Device) -> None:
        if interval:
            # Devices of a fleet are not in step: spread their first packets.
            spread = random.uniform(0, interval)
            await asyncio.sleep(min(spread, max(deadline - time.monotonic(), 0.0)))
        async with limit:
            await device.run(host, port, deadline=deadline)
        if progress is not None:
            progress(device.records_acked)

    started = time.perf_counter()
    for device in fleet:
        device.steady_from = started + warmup
    outcomes = await asyncio.gather(*(one(d) for d in fleet), return_exceptions=True)
    elapsed = time.perf_counter() - started
    latencies = [x for d in fleet for x in d.ack_latencies]
    steady = [x for d in fleet for x in d.steady_latencies]
    acked = sum(d.records_acked for d in fleet)
    connect_failures: Counter[str] = Counter()
    for device in fleet:
        connect_failures.update(device.connect_failures)
    return {
        "mode": "throughput",
        "devices": devices,
        "packets_per_device": packets,
        "records_per_packet": records,
        "records_sent": sum(d.records_sent for d in fleet),
        "records_acked": acked,
        "devices_failed": sum(isinstance(o, BaseException) for o in outcomes),
        "devices_connected": sum(d.connects > 0 for d in fleet),
        "connect_failures": dict(connect_failures),
        "resends": sum(d.resends for d in fleet),
        "reconnects": sum(max(d.connects - 1, 0) for d in fleet),
        "seconds": round(elapsed, 3),
        "records_per_s": round(acked / elapsed, 1) if elapsed else 0.0,
        "ack_latency_ms": _latency_summary(latencies),
        **(
            {"warmup_s": warmup, "ack_latency_ms_steady": _latency_summary(steady)}
            if warmup
            else {}
        ),
    }


@dataclass(eq=False)
class _Device:
    """One device of a throughput run: its packets and what happened to them.

    ``resends`` counts packets that were written and then had to be written
    again (wrong or missing ACK, connection lost while waiting for it);
    ``records_sent`` the records of every packet written at least once.
    """

    imei: str
    packets: Sequence[tuple[bytes, int]]
    interval: float
    response_timeout: float
    #: the packets again, to be stamped when first sent; empty: sent as encoded
    live: Sequence[LivePacket] = ()
    #: the packet last stamped, its index and bytes: a resend repeats them
    stamped: tuple[int, bytes] | None = None
    newest_ms: int = 0
    connects: int = 0
    #: failed connects by what ended them (see :func:`_failure_kind`)
    connect_failures: Counter[str] = field(default_factory=Counter)
    packets_written: int = 0
    records_sent: int = 0
    resends: int = 0
    packets_acked: int = 0
    records_acked: int = 0
    commands_answered: int = 0
    ack_latencies: list[float] = field(default_factory=list)
    #: latencies of packets written from ``steady_from`` (perf_counter) on
    steady_latencies: list[float] = field(default_factory=list)
    steady_from: float = 0.0
    #: when the run gives up (time.monotonic)
    deadline: float = math.inf

    def reply_wait(self) -> float:
        """How long the next reply may take: the response timeout, cut short
        where it would pass the deadline."""
        return min(self.response_timeout, self.time_left())

    def time_left(self) -> float:
        """Seconds until the deadline; 0 once it has passed."""
        return max(self.deadline - time.monotonic(), 0.0)

    def wrote(self, index: int) -> None:
        """Count packet ``index`` as sent the first time it is written."""
        if index == self.packets_written:
            self.packets_written += 1
            self.records_sent += self.packets[index][1]

    def frame(self, index: int) -> bytes:
        """The bytes of packet ``index``: its records stamped now if live."""
        if not self.live:
            return self.packets[index][0]
        if self.stamped is not None and self.stamped[0] == index:
            return self.stamped[1]
        records = self.packets[index][1]
        # The records are spread over the interval, the last one now; never
        # back to or before the previous packet's last one.
        step = max(1, round(self.interval * 1000 / records))
        oldest = max(time.time_ns() // 1_000_000 - (records - 1) * step,
                     self.newest_ms + 1)  # fmt: skip
        self.newest_ms = oldest + (records - 1) * step
        frame = self.live[index].stamped(self.newest_ms, step)
        self.stamped = (index, frame)
        return frame

    async def run(self, host: str, port: int, *, deadline: float) -> None:
        """Deliver every packet, reconnecting as needed, until ``deadline``."""
        loop = asyncio.get_running_loop()
        self.deadline = deadline
        failures = 0
        while self.packets_acked < len(self.packets):
            if time.monotonic() >= deadline:
                raise DeviceError(
                    f"{self.imei}: {self.packets_acked} of "
                    f"{len(self.packets)} packets ACKed by the deadline"
                )
            acked_before = self.packets_acked
            try:
                await self._session(loop, host, port)
            except (OSError, TimeoutError, DeviceError):
                if self.packets_acked > acked_before:
                    failures = 0  # back off longer only while nothing gets through
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                await asyncio.sleep(
                    min(delay * (0.5 + random.random()), self.time_left())
                )

    async def _session(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> None:
        """One connection, from the connect until it ends or fails."""
        try:
            transport, session = await asyncio.wait_for(
                loop.create_connection(lambda: _Session(self, loop), host, port),
                self.reply_wait(),
            )
        except (OSError, TimeoutError) as exc:
            self.connect_failures[_failure_kind(exc)] += 1
            raise
        try:
            # The session's timer bounds each reply; this also bounds the
            # pauses of a paced device, which no timer watches.
            await asyncio.wait_for(session.finished, self.time_left())
        finally:
            transport.close()


class _Session(asyncio.Protocol):
    """One connection of a :class:`_Device`, driven by transport callbacks.

    The next packet is written from the callback that read the ACK. One
    timer per session enforces the response timeout: each write moves a
    deadline forward, and the timer, when it fires early, re-arms itself
    for that deadline instead of being replaced on every packet.
    """

    def __init__(self, device: _Device, loop: asyncio.AbstractEventLoop) -> None:
        self.device = device
        self.loop = loop
        self.finished: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        #: "login" or "ack" while a reply is due (the timer runs), "idle"
        #: between paced packets (only commands may come), then "done"
        self.waiting = "login"
        self.sent_at = 0.0
        #: when the device's clock says the next packet is due (loop time)
        self.next_due = 0.0
        self.expires = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.pacer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.device.connects += 1
        self.transport.write(encode_imei(self.device.imei))
        self._expect_reply()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_timers()
        if self.waiting == "ack":
            self.device.resends += 1
        self._end(exc or ConnectionResetError(f"{self.device.imei}: closed by peer"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while buffer and not self.finished.done():
            if self.waiting == "login":
                if buffer[0] != 1:
                    self._fail(DeviceError(f"{self.device.imei}: IMEI refused"))
                    return
                del buffer[:1]
                self._send_packet()
            elif not buffer.startswith(_PREAMBLE):
                if len(buffer) < 4:
                    return
                count = int.from_bytes(buffer[:4], "big")
                del buffer[:4]
                self._acked(count)
            elif not self._take_command():
                return

    def _acked(self, count: int) -> None:
        device = self.device
        if self.waiting != "ack":
            self._fail(DeviceError(f"{device.imei}: ACK {count} with none due"))
            return
        records = device.packets[device.packets_acked][1]
        if count != records:
            # What a device does: keep the records, close, send again.
            device.resends += 1
            self._fail(DeviceError(f"{device.imei}: ACK {count} for {records}"))
            return
        latency = time.perf_counter() - self.sent_at
        device.ack_latencies.append(latency)
        if self.sent_at >= device.steady_from:
            device.steady_latencies.append(latency)
        device.packets_acked += 1
        device.records_acked += count

        if device.packets_acked == len(device.packets):
            self.waiting = "done"
            self._stop_timers()
            self._end(None)
        elif device.interval:
            self.waiting = "idle"
            delay = max(self.next_due - self.loop.time(), 0.0)
            self.pacer = self.loop.call_later(delay, self._send_packet)
        else:
            self._send_packet()

    def _send_packet(self) -> None:
        self.pacer = None
        if self.transport is None:
            return
        self.waiting = "ack"
        self.sent_at = time.perf_counter()
        self.next_due = self.loop.time() + self.device.interval
        index = self.device.packets_acked
        self.transport.write(self.device.frame(index))
        self.device.wrote(index)
        self._expect_reply()

    def _take_command(self) -> bool:
        """Answer the command frame at the head of the buffer, if it is whole."""
        buffer = self.buffer
        if len(buffer) < _FRAME_HEAD:
            return False
        length = int.from_bytes(buffer[4:_FRAME_HEAD], "big")
        if length > MAX_COMMAND_FRAME:
            self._fail(DeviceError(f"{self.device.imei}: {length}-byte frame"))
            return False
        end = _FRAME_HEAD + length + _CRC_FIELD
        if len(buffer) < end:
            return False
        frame = bytes(buffer[:end])
        del buffer[:end]
        try:
            message = decode_tcp_frame(frame)
        except ProtocolError as exc:
            self._fail(DeviceError(f"{self.device.imei}: bad command frame: {exc}"))
            return False
        if isinstance(message, GprsMessage):
            self._answer(message)
        return True

    def _answer(self, message: GprsMessage) -> None:
        if message.type != COMMAND_TYPE or self.transport is None:
            return
        answer = command_answer(message.payload)
        if answer is None:
            return
        if message.codec == CODEC_14:
            reply = encode_gprs_message(
                CODEC_14, RESPONSE_TYPE, answer, imei=self.device.imei
            )
        else:
            reply = encode_gprs_message(CODEC_12, RESPONSE_TYPE, answer)
        self.transport.write(reply)
        self.device.commands_answered += 1

    def _expect_reply(self) -> None:
        self.expires = self.loop.time() + self.device.reply_wait()
        if self.timer is None:
            self.timer = self.loop.call_at(self.expires, self._check_timeout)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.waiting not in ("login", "ack"):
            return
        if self.loop.time() < self.expires:
            self.timer = self.loop.call_at(self.expires, self._check_timeout)
            return
        if self.waiting == "ack":
            self.device.resends += 1
        waited = "IMEI reply" if self.waiting == "login" else "ACK"
        self._fail(TimeoutError(f"{self.device.imei}: no {waited}"))

    def _fail(self, exc: Exception) -> None:
        self.waiting = "done"
        self._stop_timers()
        self._end(exc)
        if self.transport is not None:
            self.transport.abort()

    def _end(self, exc: Exception | None) -> None:
        if self.finished.done():
            return
        if exc is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(exc)

    def _stop_timers(self) -> None:
        for handle in (self.timer, self.pacer):
            if handle is not None:
                handle.cancel()
        self.timer = self.pacer = None


# Storm ---------------------------------------------------------------------


def storm(
    host: str,
    port: int,
    *,
    connections: int,
    concurrency: int = 500,
    handshake: bool = True,
    hold: float = 1.0,
    progress: Progress | None = None,
    first_imei: int = 0,
    timeout: float = STORM_TIMEOUT_S,
) -> dict[str, Any]:
    """Open N connections as fast as possible, as after a cell outage.

    Up to ``concurrency`` connections are being set up at once (connect,
    then the IMEI login when ``handshake``): enough to overflow any accept
    queue that is not drained. This is a blocking function with no event
    loop: one selector, non-blocking sockets, one clock reading per wakeup.

    ``connect_ms`` runs from ``connect()`` to the selector reporting the
    socket writable: the SYN to SYN-ACK path, plus however long this process
    took to look again (at most :data:`STORM_START_BURST` connects or one
    pass over the sockets that were ready; well under a millisecond unless
    the CPU is taken by others). Anything near a second is a dropped SYN.
    ``handshake_ms`` runs from there to reading the gateway's 0x01, so it
    includes the wait for the gateway to accept the connection.

    ``failures`` counts connections by what ended them: the OSError of a
    failed connect or login by class (``ConnectionRefusedError``) or errno
    name (``EHOSTUNREACH``), ``TimeoutError`` for a connect or login slower
    than ``timeout``, ``ImeiRefused`` for a reply other than 0x01 and
    ``ClosedBeforeReply`` when the gateway closed without one. Connections
    that logged in are held ``hold`` seconds, then closed.

    Raises:
        LoadError: the open-file limit cannot hold ``connections`` sockets.
    """
    limit = raise_fd_limit()
    if connections + SPARE_FDS > limit:
        raise LoadError(
            f"{connections} connections need {connections + SPARE_FDS} open "
            f"files; the limit is {limit}: run fewer, or raise ulimit -n"
        )
    run = _Storm(
        host,
        port,
        concurrency=concurrency,
        handshake=handshake,
        timeout=timeout,
        first_imei=first_imei,
        progress=progress,
    )
    started = time.perf_counter()
    try:
        run.open(connections)
        elapsed = time.perf_counter() - started
        time.sleep(hold)
    finally:
        run.close()
    return {
        "mode": "storm",
        "connections": connections,
        "connected": len(run.connect_times),
        "handshakes": len(run.handshake_times),
        "failures": run.failures,
        "seconds": round(elapsed, 3),
        "connect_ms": _latency_summary(run.connect_times),
        "connects_over_0_9s": sum(t >= SYN_RETRANSMIT_S for t in run.connect_times),
        "handshake_ms": _latency_summary(run.handshake_times),
    }


@dataclass(eq=False, slots=True)
class _Attempt:
    """One storm connection on its way to being held."""

    index: int
    sock: socket.socket
    started: float
    connected_at: float = 0.0
    #: login bytes not yet written; empty until the connect completes
    unsent: bytes = b""
    #: "connect", then "login" until the reply, then "done"
    phase: str = "connect"


class _Storm:
    """The selector loop behind :func:`storm`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        concurrency: int,
        handshake: bool,
        timeout: float,
        first_imei: int,
        progress: Progress | None,
    ) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        self.family = family
        self.address = address
        self.concurrency = concurrency
        self.handshake = handshake
        self.timeout = timeout
        self.first_imei = first_imei
        self.progress = progress
        self.selector = selectors.DefaultSelector()
        #: (deadline, attempt, phase): appended at "now + timeout", so in
        #: deadline order; entries whose attempt moved on are skipped
        self.deadlines: deque[tuple[float, _Attempt, str]] = deque()
        self.in_flight = 0
        self.done = 0
        self.held: list[socket.socket] = []
        self.connect_times: list[float] = []
        self.handshake_times: list[float] = []
        self.failures: dict[str, int] = {}

    def open(self, connections: int) -> None:
        next_index = 0
        reported = 0
        while next_index < connections or self.in_flight:
            room = min(
                self.concurrency - self.in_flight,
                connections - next_index,
                STORM_START_BURST,
            )
            for index in range(next_index, next_index + room):
                self._start(index)
            next_index += room

            # Connects refused at once leave nothing to wait for; with more
            # to start, only look at what is ready.
            more = next_index < connections and self.in_flight < self.concurrency
            if self.in_flight:
                self._poll(block=not more)
            if self.progress is not None and self.done != reported:
                reported = self.done
                self.progress(reported)

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            cast(socket.socket, key.fileobj).close()
        self.selector.close()
        for sock in self.held:
            sock.close()
        self.held.clear()

    def _poll(self, *, block: bool) -> None:
        """Handle what the selector reports, stamped with one clock reading."""
        wait: float | None = 0.0
        if block:
            wait = None
            if self.deadlines:
                wait = max(self.deadlines[0][0] - time.perf_counter(), 0.0)
        events = self.selector.select(wait)
        now = time.perf_counter()
        for key, _mask in events:
            attempt: _Attempt = key.data
            if attempt.phase == "connect":
                self._connected(attempt, now)
            elif attempt.unsent:
                self._send_login(attempt)
            else:
                self._replied(attempt, now)
        self._expire(now)

    def _start(self, index: int) -> None:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:
            self._count(_failure_kind(exc))
            self.done += 1
            return
        sock.setblocking(False)
        attempt = _Attempt(index, sock, time.perf_counter())
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._count(_failure_kind(OSError(code, os.strerror(code))))
            self.done += 1
            return
        self.in_flight += 1
        self.selector.register(sock, selectors.EVENT_WRITE, attempt)
        self.deadlines.append((attempt.started + self.timeout, attempt, "connect"))
        if code == 0:
            self._connected(attempt, time.perf_counter())

    def _connected(self, attempt: _Attempt, now: float) -> None:
        code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(attempt, _failure_kind(OSError(code, os.strerror(code))))
            return
        self.connect_times.append(now - attempt.started)
        if not self.handshake:
            self._hold(attempt)
            return
        attempt.phase = "login"
        attempt.connected_at = now
        attempt.unsent = encode_imei(imei_for(self.first_imei + attempt.index))
        self.deadlines.append((now + self.timeout, attempt, "login"))
        self._send_login(attempt)

    def _send_login(self, attempt: _Attempt) -> None:
        try:
            sent = attempt.sock.send(attempt.unsent)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._drop(attempt, _failure_kind(exc))
            return
        attempt.unsent = attempt.unsent[sent:]
        # A fresh socket takes 17 bytes at once; a partial write waits for room.
        wanted = selectors.EVENT_WRITE if attempt.unsent else selectors.EVENT_READ
        self.selector.modify(attempt.sock, wanted, attempt)

    def _replied(self, attempt: _Attempt, now: float) -> None:
        try:
            reply = attempt.sock.recv(1)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(attempt, _failure_kind(exc))
            return
        if reply == b"\x01":
            self.handshake_times.append(now - attempt.connected_at)
            self._hold(attempt)
        elif reply:
            self._drop(attempt, "ImeiRefused")
        else:
            self._drop(attempt, "ClosedBeforeReply")

    def _expire(self, now: float) -> None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, attempt, phase = deadlines.popleft()
            if attempt.phase == phase:
                self._drop(attempt, "TimeoutError")

    def _hold(self, attempt: _Attempt) -> None:
        self.selector.unregister(attempt.sock)
        self.held.append(attempt.sock)
        self._finish(attempt)

    def _drop(self, attempt: _Attempt, kind: str) -> None:
        self.selector.unregister(attempt.sock)
        attempt.sock.close()
        self._count(kind)
        self._finish(attempt)

    def _finish(self, attempt: _Attempt) -> None:
        attempt.phase = "done"
        self.in_flight -= 1
        self.done += 1

    def _count(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def _failure_kind(exc: OSError) -> str:
    """The error's class, or its errno name where the class says no more."""
    if type(exc) is OSError and exc.errno is not None:
        return errno.errorcode.get(exc.errno, "OSError")
    return type(exc).__name__


# Hold ----------------------------------------------------------------------


async def hold(
    host: str,
    port: int,
    *,
    sessions: int,
    seconds: float,
    progress: Progress | None = None,
    first_imei: int = 0,
    on_held: Callable[[], Any] | None = None,
    login_timeout: float = HOLD_LOGIN_TIMEOUT_S,
) -> dict[str, Any]:
    """Open N sessions (IMEI accepted) and keep them idle for ``seconds``.

    ``refused`` counts the sessions whose connect failed or whose IMEI was
    refused, ``timed_out`` those without a reply within ``login_timeout``
    (``login_seconds`` is how long the logins took). Every session that
    logged in is watched for the gateway closing it (EOF or reset) while it
    is held: ``lost`` counts those, ``held`` the ones still open at the
    end. The hold ends early once every session is lost; ``seconds`` is how
    long it lasted.
    ``on_held`` is called once every login has ended; what it returns is
    reported as ``measured``.
    """
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    address = infos[0][4]
    watch = _HoldWatch()
    limit = asyncio.Semaphore(HOLD_CONCURRENCY)

    async def one(index: int) -> None:
        async with limit:
            session = _HeldSession(imei_for(first_imei + index), loop, watch)
            try:
                async with asyncio.timeout(login_timeout):
                    await loop.create_connection(lambda: session, *address[:2])
                    reply = await session.reply
            except TimeoutError:
                watch.timed_out += 1
                session.close()
                return
            except OSError:
                watch.refused += 1
                session.close()
                return
            if reply != b"\x01":
                watch.refused += 1
                session.close()
                return
            watch.logged_in(session)
            if progress is not None:
                progress(len(watch.sessions))

    logging_in = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    logins = time.monotonic() - logging_in
    extra = on_held() if on_held is not None else None
    started = time.monotonic()
    watch.logins_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watch.all_lost.wait(), seconds)
    elapsed = time.monotonic() - started
    for session in watch.sessions:
        session.close()
    summary: dict[str, Any] = {
        "mode": "hold",
        "sessions": sessions,
        "held": len(watch.sessions) - watch.lost,
        "lost": watch.lost,
        "refused": watch.refused,
        "timed_out": watch.timed_out,
        "login_seconds": round(logins, 3),
        "seconds": round(elapsed, 3),
    }
    if extra is not None:
        summary["measured"] = extra
    return summary


class _HoldWatch:
    """What became of the sessions of a :func:`hold`."""

    def __init__(self) -> None:
        self.sessions: list[_HeldSession] = []
        self.refused = 0
        self.timed_out = 0
        self.lost = 0
        self.all_lost = asyncio.Event()
        self.logging_in = True

    def logged_in(self, session: _HeldSession) -> None:
        self.sessions.append(session)
        session.held = True
        # The gateway may have closed it between the reply and now.
        if session.lost:
            self.lost += 1

    def logins_done(self) -> None:
        self.logging_in = False
        if self.lost == len(self.sessions):
            self.all_lost.set()

    def session_lost(self, session: _HeldSession) -> None:
        if not session.held:
            return  # counted when its login ends
        self.lost += 1
        if not self.logging_in and self.lost == len(self.sessions):
            self.all_lost.set()


class _HeldSession(asyncio.Protocol):
    """One idle session of :func:`hold`: it logs in, then only sees its end.

    Reading is left to the event loop, as for any protocol: an idle session
    costs no task and no timer, and the gateway closing it shows up as
    ``connection_lost``. Whatever the gateway sends after the IMEI reply
    (a command) is read and ignored.
    """

    def __init__(
        self, imei: str, loop: asyncio.AbstractEventLoop, watch: _HoldWatch
    ) -> None:
        self.imei = imei
        self.watch = watch
        #: the first byte of the gateway's IMEI reply
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        #: logged in and counted by the watch
        self.held = False
        #: closed by the gateway after its IMEI was accepted
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(encode_imei(self.imei))

    def data_received(self, data: bytes) -> None:
        if not self.reply.done():
            self.reply.set_result(data[:1])

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # closed here
        self.transport = None
        if not self.reply.done():
            self.reply.set_exception(
                exc or ConnectionResetError(f"{self.imei}: closed before the reply")
            )
            return
        self.lost = True
        self.watch.session_lost(self)

    def close(self) -> None:
        """Close the session from this side; it does not count as lost."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()


def _latency_summary(values: list[float]) -> dict[str, float | None]:
    """Percentiles and maximum in ms; each ``None`` when there is no value."""
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "max"))
    return {
        "p50": round(percentile(values, 50) * 1000, 2),
        "p90": round(percentile(values, 90) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "max": round(max(values) * 1000, 2),
    }
