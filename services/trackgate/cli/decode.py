"""``trackgate decode``: Teltonika bytes from a paste or a file, as JSON lines.

Takes the hex of a TCP capture (login, keep-alives, any number of frames) or
of one UDP datagram, decodes it with ``trackgate.protocol`` exactly as the
ingest service would, and prints one JSON object per frame with the field
names of the data contract. It needs neither Redis nor a network; the
protocol package does all the decoding, this module only parses the hex and
shapes the output.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trackgate.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    AvlPacket,
    AvlRecord,
    Event,
    GprsMessage,
    Imei,
    KeepAlive,
    LocalProtocolError,
    RemoteProtocolError,
    TcpServerConnection,
    UdpDatagram,
    decode_udp_datagram,
    starts_with_login,
    tcp_ack,
    udp_ack,
)

# Exit codes: 1 = the bytes do not decode, 2 = the input is not hex / usage.
EXIT_DECODE_ERROR = 1
EXIT_BAD_INPUT = 2

# Offset labels at the start of a line, as tcpdump -x prints them ("0x0010:").
_OFFSET_LABEL = re.compile(r"^\s*0[xX][0-9a-fA-F]+:\s", re.MULTILINE)
# Separators that tools put between bytes: whitespace, ':' (Wireshark bytes
# with colons), '-', ',' and '0x' prefixes (C arrays), '\x' escapes.
_SEPARATORS = re.compile(r"0[xX]|\\x|[\s:,\-]")
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")

HELP = """Decode Teltonika frames given as hex and print them as JSON, one per line.

HEX may contain spaces, newlines, colons, commas, 0x prefixes and tcpdump's
offset labels, as pasted from tcpdump, Wireshark or a log; give the TCP or UDP
payload only, not the IP and TCP headers. Without HEX (or with -), it is read
from standard input.

A TCP capture may hold keep-alive bytes, the IMEI login and any number of
AVL packets or Codec 12/13/14/15 messages. With --udp the input is one UDP
datagram.

Each frame prints as an object with "frame" set to imei, keepalive, avl,
gprs or udp. IO values are raw unsigned integers (lower-case hex for Codec 8
Extended variable-length values), exact even above 2^53. A frame that does
not decode prints its error kind and byte offset on stderr; the frames before
it are still printed and the exit code is 1. Bad hex exits with 2.
"""

EPILOG = """Examples:

  trackgate decode 000000000000000f0c010500000007676574696e666f0100004312

  echo "00 0f 33 35 36 33 30 37 30 34 32 34 34 31 30 31 33" | trackgate decode

  trackgate decode --udp --pretty --file datagram.hex
"""


def register(app: typer.Typer) -> None:
    app.command(name="decode", help=HELP, epilog=EPILOG)(decode)


def decode(
    hex_input: Annotated[
        str | None,
        typer.Argument(
            metavar="HEX", help="Hex bytes; '-' or nothing reads standard input."
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Read the hex from this file instead.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    udp: Annotated[
        bool, typer.Option("--udp", help="The input is one UDP datagram.")
    ] = False,
    pretty: Annotated[
        bool, typer.Option("--pretty", help="Indent each JSON object.")
    ] = False,
    max_packet_size: Annotated[
        int,
        typer.Option(
            help="Largest TCP frame to accept, as the ingest service's setting."
        ),
    ] = DEFAULT_MAX_PACKET_SIZE,
) -> None:
    try:
        data = parse_hex(_read_input(hex_input, file))
    except ValueError as exc:
        typer.echo(f"trackgate decode: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None

    indent = 2 if pretty else None
    if udp:
        ok = _decode_udp(data, indent)
    else:
        try:
            ok = _decode_tcp(data, max_packet_size, indent)
        except LocalProtocolError as exc:
            typer.echo(f"trackgate decode: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
    if not ok:
        raise typer.Exit(EXIT_DECODE_ERROR)


def _strip_dump_columns(text: str) -> str:
    """Keep only the hex of tcpdump -x/-X lines: no offset, no ASCII column."""
    lines = []
    for line in text.splitlines():
        label = _OFFSET_LABEL.match(line)
        if label is None:
            lines.append(line)
            continue
        # -X prints the ASCII column two or more spaces after the hex groups.
        lines.append(re.split(r"\s{2,}", line[label.end() :].strip())[0])
    return "\n".join(lines)


def parse_hex(text: str) -> bytes:
    """Bytes from hex text with the usual separators; ValueError if it is not hex."""
    digits = _SEPARATORS.sub("", _strip_dump_columns(text))
    bad = _NOT_HEX.search(digits)
    if bad is not None:
        raise ValueError(f"not hex: {bad.group()!r} in the input")
    if not digits:
        raise ValueError("no hex digits in the input")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)})")
    return bytes.fromhex(digits)


def _read_input(hex_input: str | None, file: Path | None) -> str:
    if file is not None:
        if hex_input not in (None, "-"):
            raise ValueError("give HEX or --file, not both")
        return file.read_text()
    if hex_input is None or hex_input == "-":
        return sys.stdin.read()
    return hex_input


def _decode_tcp(data: bytes, max_packet_size: int, indent: int | None) -> bool:
    """Print every frame of a TCP capture; False if any frame failed."""
    conn = TcpServerConnection(
        max_packet_size=max_packet_size, expect_imei=starts_with_login(data)
    )
    conn.receive_data(data)
    ok = True
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            _report(exc)
            ok = False
            if exc.fatal:
                return False
            continue
        if event is None:
            break
        _emit(event_to_json(event), indent)
        if isinstance(event, Imei):
            conn.accept_imei(True)
    if conn.buffered:
        typer.echo(
            f"truncated_frame at byte {len(data)}: the input ends inside a frame "
            f"({conn.buffered} bytes left over)",
            err=True,
        )
        ok = False
    return ok


def _decode_udp(data: bytes, indent: int | None) -> bool:
    try:
        datagram = decode_udp_datagram(data)
    except RemoteProtocolError as exc:
        _report(exc)
        return False
    _emit(datagram_to_json(datagram), indent)
    return True


def _report(exc: RemoteProtocolError) -> None:
    typer.echo(str(exc), err=True)
    if exc.kind == "bad_imei" and exc.offset == 0:
        typer.echo("hint: a UDP datagram? try --udp", err=True)


def _emit(obj: dict[str, Any], indent: int | None) -> None:
    typer.echo(json.dumps(obj, indent=indent))


def record_to_json(record: AvlRecord, codec: int) -> dict[str, Any]:
    """One record with the data contract's field names."""
    obj: dict[str, Any] = {
        "timestamp": record.timestamp,
        "priority": record.priority,
        "longitude": record.longitude,
        "latitude": record.latitude,
        "altitude": record.altitude,
        "angle": record.angle,
        "satellites": record.satellites,
        "speed": record.speed,
        "event_id": record.event_id,
        "io": record.io,
    }
    if codec == 0x10:
        obj["generation_type"] = record.generation_type
    return obj


def packet_to_json(packet: AvlPacket) -> dict[str, Any]:
    return {
        "codec": packet.codec,
        "record_count": len(packet.records),
        "records": [record_to_json(r, packet.codec) for r in packet.records],
    }


def event_to_json(event: Event) -> dict[str, Any]:
    """The JSON object printed for one TCP event."""
    if isinstance(event, Imei):
        return {"frame": "imei", "imei": event.imei}
    if isinstance(event, KeepAlive):
        return {"frame": "keepalive"}
    if isinstance(event, AvlPacket):
        return {
            "frame": "avl",
            **packet_to_json(event),
            "server_ack_hex": tcp_ack(len(event.records)).hex(),
        }
    return message_to_json(event)


def message_to_json(message: GprsMessage) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "frame": "gprs",
        "codec": message.codec,
        "type": message.type,
        "quantity": message.quantity,
    }
    if message.timestamp is not None:
        obj["timestamp"] = message.timestamp
    if message.imei is not None:
        obj["imei"] = message.imei
    text = message.text
    if text is None:
        obj["payload_hex"] = message.payload.hex()
    else:
        obj["text"] = text
    return obj


def datagram_to_json(datagram: UdpDatagram) -> dict[str, Any]:
    packet = datagram.packet
    return {
        "frame": "udp",
        "imei": datagram.imei,
        "packet_id": datagram.packet_id,
        "avl_packet_id": datagram.avl_packet_id,
        "not_usable": datagram.not_usable,
        **packet_to_json(packet),
        "server_ack_hex": udp_ack(
            datagram.packet_id, datagram.avl_packet_id, len(packet.records)
        ).hex(),
    }
