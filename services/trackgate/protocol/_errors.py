"""The protocol package's exceptions, split by who is to blame.

``RemoteProtocolError`` and its subclasses mean the device (or whatever sits
on the other end of the socket) sent bytes that break the Teltonika protocol.
Each carries a short stable ``kind`` for metrics and logs, the byte ``offset``
where decoding went wrong when it is known, and ``fatal``: whether the byte
stream is still usable. ``LocalProtocolError`` means our own code misused the
API (fed a connection that already failed, asked to encode a value the wire
format cannot carry).

Callers catch these; the package itself never logs or counts them.
"""

from __future__ import annotations

__all__ = [
    "BadImei",
    "BadPreamble",
    "BadUdpDatagram",
    "CountMismatch",
    "CrcMismatch",
    "FrameTooLarge",
    "LocalProtocolError",
    "MalformedFrame",
    "REMOTE_ERROR_KINDS",
    "ProtocolError",
    "RemoteProtocolError",
    "TruncatedFrame",
    "UnknownCodec",
]


class ProtocolError(Exception):
    """Base of every error this package raises."""


class LocalProtocolError(ProtocolError):
    """The caller used the API wrongly; a bug on our side, not the device's."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    Attributes:
        kind: short snake_case name of the failure, stable across releases,
            meant as a metric label or log field.
        offset: byte offset where decoding failed, if known. For
            ``TcpServerConnection`` it counts from the first byte the
            connection received; for the stateless helpers, from the first
            byte of the frame or datagram they were given.
        fatal: True when the stream is desynchronised and the connection must
            be closed; False when the bad frame was consumed whole and the
            next frame can be read.
    """

    kind: str = "protocol_error"
    default_fatal: bool = True

    def __init__(
        self, message: str, *, offset: int | None = None, fatal: bool | None = None
    ) -> None:
        super().__init__(message)
        self.offset = offset
        self.fatal = self.default_fatal if fatal is None else fatal

    def __str__(self) -> str:
        where = "" if self.offset is None else f" at byte {self.offset}"
        return f"{self.kind}{where}: {self.args[0]}"

    def shifted(self, delta: int) -> RemoteProtocolError:
        """Move ``offset`` by ``delta`` bytes (frame offset to stream offset)."""
        if self.offset is not None:
            self.offset += delta
        return self


class BadImei(RemoteProtocolError):
    """The login frame is not an IMEI under our policy (see docs/protocol.md)."""

    kind = "bad_imei"


class FrameTooLarge(RemoteProtocolError):
    """A length field asks for more than the connection is willing to buffer."""

    kind = "frame_too_large"


class BadPreamble(RemoteProtocolError):
    """A TCP frame does not start with the four zero bytes: stream out of step."""

    kind = "bad_preamble"


class CrcMismatch(RemoteProtocolError):
    """The CRC-16/IBM of a complete frame does not match its CRC field."""

    kind = "crc_mismatch"
    default_fatal = False


class CountMismatch(RemoteProtocolError):
    """Number of Data 1 and Number of Data 2 (or the GPRS quantities) differ."""

    kind = "count_mismatch"
    default_fatal = False


class UnknownCodec(RemoteProtocolError):
    """A well-framed frame carries a codec id this package does not decode."""

    kind = "unknown_codec"
    default_fatal = False


class MalformedFrame(RemoteProtocolError):
    """A frame's content does not parse; fatal only when framing itself broke."""

    kind = "malformed_frame"


class TruncatedFrame(RemoteProtocolError):
    """A stateless helper was given fewer bytes than the frame header announces.

    ``TcpServerConnection`` never raises this: it waits for more data instead.
    """

    kind = "truncated_frame"


class BadUdpDatagram(RemoteProtocolError):
    """A UDP datagram's envelope (length, IMEI length) does not add up.

    Never fatal: every datagram stands alone.
    """

    kind = "bad_udp_datagram"
    default_fatal = False


#: Every ``kind`` a peer's bad input can be counted under.
REMOTE_ERROR_KINDS: tuple[str, ...] = tuple(
    error.kind
    for error in (
        BadImei,
        FrameTooLarge,
        BadPreamble,
        CrcMismatch,
        CountMismatch,
        UnknownCodec,
        MalformedFrame,
        TruncatedFrame,
        BadUdpDatagram,
    )
)
