"""Simulated Teltonika devices, for trying the gateway, tests and load.

A :class:`SimDevice` behaves like a real tracker as far as a server can
tell: it logs in with its IMEI, sends AVL packets and waits for each ACK,
sends the same packet again after a missing or wrong ACK (on a new
connection, as devices do after their response timeout), reconnects with
backoff, and answers Codec 12 commands (:func:`command_answer`). Everything
a device did is kept in :class:`DeviceStats`, so tests can audit exactly
which records were ACKed.

It speaks the protocol through :mod:`trackgate.protocol` only: no Redis, no
knowledge of the server's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trackgate.protocol import (
    AvlPacket,
    AvlRecord,
    crc16_ibm,
    decode_tcp_frame,
    encode_avl_packet,
    encode_gprs_message,
    encode_imei,
)

#: A Codec 12 command frame from the server: preamble, length, codec 0x0C.
_PREAMBLE = b"\x00\x00\x00\x00"
#: Largest command frame the simulated device reads; a real device's buffer
#: is of this order.
MAX_COMMAND_FRAME = 2048

#: The largest AVL packet Teltonika devices send (the protocol's own limit).
DEVICE_MAX_PACKET = 1280

CommandHandler = Callable[[str], str | None]


def default_command_handler(command: str) -> str | None:
    """Answers like an FMB device to a few common commands."""
    name = command.strip().split(" ", 1)[0].lower()
    if name == "getinfo":
        return "INI:2025/1/1 0:00 RTC:2025/1/1 0:00 RST:1 ERR:0 SR:0 BR:0 CF:0 FG:0"
    if name == "getver":
        return "Ver:03.27.07_00 GPS:AXN_5.1.9 Hw:FMB920 Mod:13 IMEI:simulated"
    if name == "getgps":
        return "GPS:1 Sat:9 Lat:54.687157 Long:25.279651 Alt:112 Speed:0 Dir:0"
    if name == "cpureset":
        return None
    return f"Param ID:0 Value:{command}"


#: A text command: printable ASCII, as the API accepts for ``text``.
_TEXT_COMMAND = re.compile(rb"[\x20-\x7e]*")


def command_answer(
    payload: bytes, handler: CommandHandler = default_command_handler
) -> bytes | None:
    """The payload of a simulated device's answer to a command, or None.

    A payload of printable ASCII is a text command, answered by ``handler``
    (on the wire a text command and the same bytes sent as binary are one
    thing). Any other payload, a Modbus frame or serial data, is answered
    with its own bytes, as a serial line looped back would: the answer is
    the command, byte for byte.
    """
    if _TEXT_COMMAND.fullmatch(payload) is None:
        return bytes(payload)
    answer = handler(payload.decode("ascii"))
    return None if answer is None else answer.encode()


_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: Preamble and data length before a frame's data; the CRC field after it.
_FRAME_HEAD = 8
_CRC_FIELD = 4
#: Codec id and record count before the first record of the data.
_RECORDS_START = _FRAME_HEAD + 2


@dataclass(frozen=True, slots=True)
class LivePacket:
    """An encoded AVL packet whose record times are set when it is sent.

    A device records its positions as it goes and sends them a little
    later; a simulated one that pre-encodes its packets (to cost little
    CPU) stamps them just before sending instead: the times are written
    into the frame and its CRC is computed again.
    """

    frame: bytes
    #: where each record's 8-byte timestamp starts in ``frame``
    offsets: tuple[int, ...]

    @classmethod
    def of(cls, frame: bytes) -> LivePacket:
        packet = decode_tcp_frame(frame)
        if not isinstance(packet, AvlPacket):
            raise ValueError("not an AVL packet")
        offsets: list[int] = []
        at = _RECORDS_START
        for record in packet.records:
            offsets.append(at)
            at += len(record.raw)
        return cls(frame, tuple(offsets))

    def stamped(self, newest_ms: int, step_ms: int) -> bytes:
        """The frame with its last record at ``newest_ms`` and each earlier
        one ``step_ms`` before the next."""
        out = bytearray(self.frame)
        last = len(self.offsets) - 1
        for index, offset in enumerate(self.offsets):
            _U64.pack_into(out, offset, newest_ms - (last - index) * step_ms)
        end = len(out) - _CRC_FIELD
        _U32.pack_into(out, end, crc16_ibm(memoryview(out)[_FRAME_HEAD:end]))
        return bytes(out)


def make_records(
    count: int,
    *,
    start_ms: int | None = None,
    step_ms: int = 1000,
    codec: int = 0x8E,
    seed: int = 0,
) -> list[AvlRecord]:
    """Plausible records: a vehicle driving a loop near Vilnius."""
    start = int(time.time() * 1000) if start_ms is None else start_ms
    rng = random.Random(seed)
    records = []
    for n in range(count):
        phase = (seed * 97 + n) / 50.0
        io: dict[str, int | str] = {
            "239": 1,
            "240": 1,
            "21": rng.randint(1, 5),
            "66": 12000 + rng.randint(0, 900),
            "16": 100_000 + n * 13,
            "11": 8_937_000_000_000_000_000 + seed,
        }
        if codec == 0x8E:
            io["256"] = b"WVWZZZ1JZXW000001".hex()
        records.append(
            AvlRecord(
                timestamp=start + n * step_ms,
                priority=0,
                longitude=round(25.2797 + 0.01 * math.cos(phase), 7),
                latitude=round(54.6872 + 0.01 * math.sin(phase), 7),
                altitude=112,
                angle=int(phase * 57) % 360,
                satellites=9,
                speed=40 + n % 20,
                event_id=0,
                io=io,
                generation_type=5 if codec == 0x10 else None,
                raw=b"",
            )
        )
    return records


@dataclass
class DeviceStats:
    connects: int = 0
    connect_failures: int = 0
    handshakes_refused: int = 0
    packets_sent: int = 0
    packets_acked: int = 0
    resends: int = 0
    records_acked: int = 0
    commands_answered: int = 0
    ack_latencies: list[float] = field(default_factory=list)
    #: device timestamps of every record the server ACKed, in order
    acked_timestamps: list[int] = field(default_factory=list)


class DeviceError(Exception):
    """The server did something a device cannot work with."""


@dataclass
class SimDevice:
    """One simulated tracker; see the module docstring."""

    imei: str
    packets: Sequence[tuple[bytes, Sequence[AvlRecord]]]
    response_timeout: float = 10.0
    reconnect_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)
    answer_commands: bool = True
    #: seconds between packets, and to stay connected after the last one;
    #: commands that arrive meanwhile are answered at once
    interval: float = 0.0
    linger: float = 0.0
    command_handler: CommandHandler = default_command_handler
    stats: DeviceStats = field(default_factory=DeviceStats)

    @classmethod
    def with_records(
        cls,
        imei: str,
        packets: int,
        records_per_packet: int,
        *,
        codec: int = 0x8E,
        start_ms: int | None = None,
        seed: int = 0,
        **options: object,
    ) -> SimDevice:
        """A device with ``packets`` packets of recent records, pre-encoded."""
        now = int(time.time() * 1000)
        start = (
            now - packets * records_per_packet * 1000 if start_ms is None else start_ms
        )
        encoded = []
        for p in range(packets):
            records = make_records(
                records_per_packet,
                start_ms=start + p * records_per_packet * 1000,
                codec=codec,
                seed=seed,
            )
            frame = encode_avl_packet(codec, records)
            if len(frame) > DEVICE_MAX_PACKET:
                raise ValueError(
                    f"{records_per_packet} records make a {len(frame)}-byte packet; "
                    f"devices send at most {DEVICE_MAX_PACKET} bytes: use fewer records"
                )
            encoded.append((frame, records))
        return cls(imei, encoded, **options)  # type: ignore[arg-type]

    async def run(self, host: str, port: int, *, deadline: float | None = None) -> None:
        """Deliver every packet, reconnecting as needed, until ``deadline``."""
        failures = 0
        while self.stats.packets_acked < len(self.packets):
            if deadline is not None and time.monotonic() > deadline:
                raise DeviceError(
                    f"{self.imei}: {self.stats.packets_acked} of "
                    f"{len(self.packets)} packets ACKed by the deadline"
                )
            try:
                # A device resends only what was not ACKed: the next packet
                # is the count of ACKed ones, whatever ended the session.
                await self._session(host, port, self.stats.packets_acked)
                failures = 0
            except (OSError, asyncio.IncompleteReadError, TimeoutError, DeviceError):
                self.stats.connect_failures += 1
                delay = self.reconnect_delays[
                    min(failures, len(self.reconnect_delays) - 1)
                ]
                failures += 1
                await asyncio.sleep(delay * (0.5 + random.random()))

    async def _session(self, host: str, port: int, next_packet: int) -> int:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), self.response_timeout
        )
        self.stats.connects += 1
        try:
            writer.write(encode_imei(self.imei))
            reply = await asyncio.wait_for(reader.readexactly(1), self.response_timeout)
            if reply != b"\x01":
                self.stats.handshakes_refused += 1
                raise DeviceError(f"{self.imei}: IMEI refused")
            while next_packet < len(self.packets):
                frame, records = self.packets[next_packet]
                writer.write(frame)
                self.stats.packets_sent += 1
                sent = time.perf_counter()
                count = await self._read_ack(reader, writer)
                if count != len(records):
                    # What a device does: keep the records, close, send again.
                    self.stats.resends += 1
                    raise DeviceError(f"{self.imei}: ACK {count} for {len(records)}")
                self.stats.ack_latencies.append(time.perf_counter() - sent)
                self.stats.packets_acked += 1
                self.stats.records_acked += count
                self.stats.acked_timestamps.extend(r.timestamp for r in records)
                next_packet += 1
                last = next_packet == len(self.packets)
                await self._idle(reader, writer, self.linger if last else self.interval)
            return next_packet
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            self.stats.resends += 1 if next_packet < len(self.packets) else 0
            raise
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read_ack(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> int:
        """The next record-count ACK; Codec 12 commands before it are answered."""
        while True:
            head = await asyncio.wait_for(reader.readexactly(4), self.response_timeout)
            if head != _PREAMBLE:
                return int.from_bytes(head, "big")
            await self._command(reader, writer)

    async def _idle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
    ) -> None:
        """Stay connected for ``seconds``, answering commands as they come."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                head = await asyncio.wait_for(reader.readexactly(4), left)
            except TimeoutError:
                return
            if head != _PREAMBLE:
                raise DeviceError(f"{self.imei}: unexpected bytes {head.hex()}")
            await self._command(reader, writer)

    async def _command(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        length = int.from_bytes(await reader.readexactly(4), "big")
        if length > MAX_COMMAND_FRAME:
            raise DeviceError(f"{self.imei}: command frame of {length} bytes")
        body = await reader.readexactly(length + 4)
        codec, msg_type = body[0], body[2]
        size = int.from_bytes(body[3:7], "big")
        payload = body[7 : 7 + size]
        if codec == 0x0E:
            payload = payload[8:]
        if msg_type != 0x05 or not self.answer_commands:
            return
        answer = command_answer(payload, self.command_handler)
        if answer is None:
            return
        if codec == 0x0E:
            writer.write(encode_gprs_message(0x0E, 0x06, answer, imei=self.imei))
        else:
            writer.write(encode_gprs_message(0x0C, 0x06, answer))
        self.stats.commands_answered += 1


#: The record count of an AVL packet is one byte.
MAX_RECORDS_PER_PACKET = 255


@functools.cache
def max_records_per_packet(codec: int = 0x8E) -> int:
    """How many records of :func:`make_records` one packet of ``codec`` holds:
    at most 255 (the count is one byte) in :data:`DEVICE_MAX_PACKET` bytes."""
    low, high = 0, MAX_RECORDS_PER_PACKET
    while low < high:
        middle = (low + high + 1) // 2
        frame = encode_avl_packet(codec, make_records(middle, start_ms=0, codec=codec))
        if len(frame) <= DEVICE_MAX_PACKET:
            low = middle
        else:
            high = middle - 1
    return low


def imei_for(index: int, base: int = 356_307_040_000_000) -> str:
    """A distinct 15-digit IMEI per simulated device."""
    return str(base + index)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]
