"""Sans-IO Teltonika protocol: bytes in, events out, bytes back.

This package knows every framing and codec rule of the Teltonika tracker
protocol and nothing else: it opens no socket, starts no task, logs nothing
and touches no database. The ingest service feeds it what it reads and sends
what it returns; the decode command and the tests call the same functions.

- ``TcpServerConnection``: the incremental state machine for one TCP session
  (IMEI login, keep-alives, AVL packets, GPRS messages), with a bounded
  receive buffer.
- ``decode_tcp_frame``, ``decode_udp_datagram``, ``decode_stream``: stateless
  helpers for bytes already in hand.
- ``encode_*``, ``imei_reply``, ``tcp_ack``, ``udp_ack``: what a server
  sends, and what a device simulator sends.
- Errors split by blame: ``RemoteProtocolError`` (the peer; with ``kind``,
  ``offset``, ``fatal``) and ``LocalProtocolError`` (the caller).

docs/protocol.md describes the error kinds, the IMEI policy and the buffer
bound.
"""

from trackgate.protocol._connection import (
    DEFAULT_MAX_PACKET_SIZE,
    ConnectionState,
    TcpServerConnection,
    decode_stream,
    iter_stream,
    starts_with_login,
)
from trackgate.protocol._crc import crc16_ibm
from trackgate.protocol._errors import (
    REMOTE_ERROR_KINDS,
    BadImei,
    BadPreamble,
    BadUdpDatagram,
    CountMismatch,
    CrcMismatch,
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    ProtocolError,
    RemoteProtocolError,
    TruncatedFrame,
    UnknownCodec,
)
from trackgate.protocol._events import (
    AvlPacket,
    AvlRecord,
    Event,
    GprsMessage,
    Imei,
    KeepAlive,
    UdpDatagram,
)
from trackgate.protocol._imei import IMEI_MAX_DIGITS, IMEI_MIN_DIGITS
from trackgate.protocol._readers import (
    AVL_CODECS,
    CODEC_8,
    CODEC_8E,
    CODEC_12,
    CODEC_13,
    CODEC_14,
    CODEC_15,
    CODEC_16,
    GPRS_CODECS,
    RECORD_DECODER,
    UdpHead,
    decode_tcp_frame,
    decode_udp_datagram,
    read_udp_head,
)
from trackgate.protocol._writers import (
    COMMAND_TYPE,
    NACK_TYPE,
    RESPONSE_TYPE,
    encode_avl_packet,
    encode_command,
    encode_gprs_message,
    encode_imei,
    encode_udp_datagram,
    imei_reply,
    tcp_ack,
    udp_ack,
)

__all__ = [
    "AVL_CODECS",
    "RECORD_DECODER",
    "REMOTE_ERROR_KINDS",
    "CODEC_8",
    "CODEC_8E",
    "CODEC_12",
    "CODEC_13",
    "CODEC_14",
    "CODEC_15",
    "CODEC_16",
    "COMMAND_TYPE",
    "DEFAULT_MAX_PACKET_SIZE",
    "GPRS_CODECS",
    "IMEI_MAX_DIGITS",
    "IMEI_MIN_DIGITS",
    "NACK_TYPE",
    "RESPONSE_TYPE",
    "AvlPacket",
    "AvlRecord",
    "BadImei",
    "BadPreamble",
    "BadUdpDatagram",
    "ConnectionState",
    "CountMismatch",
    "CrcMismatch",
    "Event",
    "FrameTooLarge",
    "GprsMessage",
    "Imei",
    "KeepAlive",
    "LocalProtocolError",
    "MalformedFrame",
    "ProtocolError",
    "RemoteProtocolError",
    "TcpServerConnection",
    "TruncatedFrame",
    "UdpDatagram",
    "UdpHead",
    "UnknownCodec",
    "crc16_ibm",
    "decode_stream",
    "decode_tcp_frame",
    "decode_udp_datagram",
    "encode_avl_packet",
    "encode_command",
    "encode_gprs_message",
    "encode_imei",
    "encode_udp_datagram",
    "imei_reply",
    "iter_stream",
    "read_udp_head",
    "starts_with_login",
    "tcp_ack",
    "udp_ack",
]
