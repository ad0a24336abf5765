"""The server side of one Teltonika TCP connection, as a state machine over bytes.

The ingest service owns the socket: it passes every chunk it reads to
``receive_data``, pulls events with ``next_event`` until it gets None, and
writes what ``accept_imei`` and the writers return. The connection never
reads, writes, sleeps or logs; it only cuts the stream into frames, keeps
count of where it is, and refuses to buffer more than one frame's worth.

States::

    AWAIT_IMEI --Imei event, accept_imei(True)--> STREAMING
    AWAIT_IMEI --accept_imei(False)--> CLOSED
    any --fatal RemoteProtocolError--> ERROR
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from trackgate.protocol._errors import (
    BadImei,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    TruncatedFrame,
)
from trackgate.protocol._events import AvlPacket, Event, GprsMessage, Imei, KeepAlive
from trackgate.protocol._imei import (
    IMEI_MAX_DIGITS,
    IMEI_MIN_DIGITS,
    is_digit_prefix,
    is_valid_imei,
)
from trackgate.protocol._readers import (
    DATA_OFFSET,
    FRAME_HEAD,
    MIN_DATA_LENGTH,
    TCP_ENVELOPE_SIZE,
    check_frame_head,
    read_tcp_frame,
)
from trackgate.protocol._writers import imei_reply

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "ConnectionState",
    "TcpServerConnection",
    "decode_stream",
    "iter_stream",
    "starts_with_login",
]

# Largest TCP frame (preamble to CRC) a connection buffers. Teltonika gives
# 1280 bytes as the maximum AVL packet of its trackers (512 for the FMx640
# family), and real 1261-byte packets occur (a 14-record Codec 8 backlog).
# 2048 leaves 60 % headroom for firmware that overshoots, for GPRS messages
# (which share the limit) and for long Codec 8 Extended variable-length IOs,
# while a corrupt length field costs at most 2 KiB per connection: 50,000
# devices stalled mid-frame hold 100 MiB. Camera image chunks (Codec 12 type
# 0x0D) can exceed it; servers that take photos raise the limit.
DEFAULT_MAX_PACKET_SIZE = 2048

# Smallest limit that still admits a zero-record packet and a login frame.
_MIN_MAX_PACKET_SIZE = MIN_DATA_LENGTH + TCP_ENVELOPE_SIZE + IMEI_MAX_DIGITS

_KEEPALIVE_BYTE = 0xFF
_KEEPALIVE = KeepAlive()
_IMEI_LENGTH_SIZE = 2


class ConnectionState(enum.Enum):
    """Where a ``TcpServerConnection`` is in the session."""

    AWAIT_IMEI = "await_imei"  # before the login frame, or before it is answered
    STREAMING = "streaming"  # IMEI accepted: AVL packets and GPRS messages
    CLOSED = "closed"  # IMEI refused: nothing more is read
    ERROR = "error"  # a fatal protocol error: the stream cannot be trusted


class TcpServerConnection:
    """Turns the bytes a device sends into events, incrementally.

    Bytes may arrive one at a time, split anywhere, or several frames at
    once: the events are the same. Usage::

        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            ...  # Imei -> write conn.accept_imei(ok); AvlPacket -> store, ack

    Args:
        max_packet_size: largest frame, in bytes from preamble to CRC, that
            the connection will buffer; a length field above it is fatal.
        expect_imei: False starts in STREAMING, for captures that begin after
            the login (decode tools, tests).
    """

    def __init__(
        self,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        expect_imei: bool = True,
    ) -> None:
        if max_packet_size < _MIN_MAX_PACKET_SIZE:
            raise LocalProtocolError(
                f"max_packet_size {max_packet_size} is below {_MIN_MAX_PACKET_SIZE}"
            )
        self._max_packet_size = max_packet_size
        self._buffer = bytearray()
        # Stream offset of self._buffer[0], for error offsets.
        self._consumed = 0
        self._imei: str | None = None
        self._state = (
            ConnectionState.AWAIT_IMEI if expect_imei else ConnectionState.STREAMING
        )

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def imei(self) -> str | None:
        """The IMEI from the login frame, once it was read."""
        return self._imei

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events.

        Whenever ``next_event`` returns None this is at most
        ``max_packet_size``: the rest of the stream waits in the kernel.
        """
        return len(self._buffer)

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the socket; an empty chunk is ignored."""
        self._check_usable()
        self._buffer += data

    def accept_imei(self, accepted: bool) -> bytes:
        """Record the server's decision on the login; returns the byte to send."""
        if self._state is not ConnectionState.AWAIT_IMEI or self._imei is None:
            raise LocalProtocolError(
                f"accept_imei needs an unanswered login, state is {self._state.name}"
            )
        self._state = ConnectionState.STREAMING if accepted else ConnectionState.CLOSED
        return imei_reply(accepted)

    def next_event(self) -> Event | None:
        """The next complete event, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: the peer broke the protocol. If ``fatal``,
                the state is now ERROR; otherwise the bad frame was dropped
                and the next call reads the frame after it.
            LocalProtocolError: the connection is in ERROR or CLOSED.
        """
        self._check_usable()
        try:
            if self._state is ConnectionState.STREAMING:
                return self._next_stream_event()
            return self._next_login_event()
        except RemoteProtocolError as exc:
            if exc.fatal:
                self._state = ConnectionState.ERROR
            raise

    def _check_usable(self) -> None:
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("the connection failed; close it")
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("the IMEI was refused; close the connection")

    def _consume(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._consumed += size
        return chunk

    def _next_login_event(self) -> Event | None:
        buffer = self._buffer
        if self._imei is not None:
            # The device waits for the reply; anything more is buffered, to a limit.
            if len(buffer) > self._max_packet_size:
                raise FrameTooLarge(
                    f"{len(buffer)} bytes arrived before the IMEI was answered",
                    offset=self._consumed + len(buffer),
                )
            return None
        if not buffer:
            return None
        if buffer[0] == _KEEPALIVE_BYTE:
            self._consume(1)
            return _KEEPALIVE
        if len(buffer) < _IMEI_LENGTH_SIZE:
            return None

        length = int.from_bytes(buffer[:_IMEI_LENGTH_SIZE], "big")
        raw = bytes(buffer[_IMEI_LENGTH_SIZE : _IMEI_LENGTH_SIZE + length])
        if not IMEI_MIN_DIGITS <= length <= IMEI_MAX_DIGITS or not is_digit_prefix(raw):
            raise BadImei(
                f"login frame announces {length} bytes starting {raw[:20]!r}",
                offset=self._consumed,
            )
        if len(raw) < length:
            return None
        if not is_valid_imei(raw):
            raise BadImei(
                f"{raw!r} is not a 15 or 16-digit IMEI", offset=self._consumed
            )
        self._consume(_IMEI_LENGTH_SIZE + length)
        self._imei = raw.decode("ascii")
        return Imei(self._imei)

    def _next_stream_event(self) -> Event | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] == _KEEPALIVE_BYTE:
            self._consume(1)
            return _KEEPALIVE
        if len(buffer) < DATA_OFFSET:
            # Refuse a broken preamble as soon as its bytes are in.
            if any(buffer[:4]):
                head = bytes(buffer[:4]).ljust(4, b"\x00")
                self._check_head(int.from_bytes(head, "big"), MIN_DATA_LENGTH)
            return None

        preamble, length = FRAME_HEAD.unpack_from(buffer)
        self._check_head(preamble, length)
        size = length + TCP_ENVELOPE_SIZE
        if size > self._max_packet_size:
            raise FrameTooLarge(
                f"frame of {size} bytes announced, limit {self._max_packet_size}",
                offset=self._consumed + 4,
            )
        if len(buffer) < size:
            return None

        start = self._consumed
        frame = self._consume(size)
        try:
            return read_tcp_frame(frame, length)
        except RemoteProtocolError as exc:
            raise exc.shifted(start) from None

    def _check_head(self, preamble: int, length: int) -> None:
        try:
            check_frame_head(preamble, length)
        except RemoteProtocolError as exc:
            raise exc.shifted(self._consumed) from None


def iter_stream(
    data: bytes, *, max_packet_size: int | None = None
) -> Iterator[AvlPacket | GprsMessage | Imei | KeepAlive]:
    """Events of a captured TCP byte stream, in order; stops at the first error.

    The capture may start with keep-alives and a login frame (the IMEI is
    taken as accepted) or directly with AVL frames.

    Raises:
        RemoteProtocolError: at the first bad frame, after yielding the ones
            before it (offsets count from the start of ``data``).
        TruncatedFrame: the capture ends inside a frame.
    """
    data = bytes(data)
    limit = max(DEFAULT_MAX_PACKET_SIZE, len(data), _MIN_MAX_PACKET_SIZE)
    conn = TcpServerConnection(
        max_packet_size=max_packet_size or limit,
        expect_imei=starts_with_login(data),
    )
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is None:
            break
        yield event
        if isinstance(event, Imei):
            conn.accept_imei(True)
    if conn.buffered:
        raise TruncatedFrame(
            f"the data ends inside a frame ({conn.buffered} bytes left over)",
            offset=len(data),
        )


def decode_stream(data: bytes) -> list[Event]:
    """Every event in a captured TCP byte stream (see ``iter_stream``)."""
    return list(iter_stream(data))


def starts_with_login(data: bytes) -> bool:
    """True if ``data`` (after keep-alives) begins with a login frame.

    A login starts with a non-zero u16 length; every data frame with four zero
    bytes.
    """
    head = bytes(data).lstrip(bytes([_KEEPALIVE_BYTE]))[:2]
    return len(head) == 2 and head != b"\x00\x00"
