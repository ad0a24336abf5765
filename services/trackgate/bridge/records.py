"""Stream entries to JSON records that survive Laravel's queue unchanged.

``record_from_entry`` turns one entry of a records stream (fields as in
``docs/redis-contract.md``, all strings) into the typed record of the data
contract, ready to be JSON-encoded into a job payload. ``group_by_packet``
gathers the entries of one packet. The bridge worker calls both; neither
does any IO.

Laravel's pop script decodes and re-encodes every payload with Lua cjson,
which prints numbers with 14 significant digits. Any integer with more
digits than that would reach PHP changed (an IMEI, a 64-bit IO value), so
such integers are sent as decimal strings; the IMEI is always a string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from trackgate.bridge.errors import EntryError

#: Integers of fewer than 15 digits come back from cjson's ``%.14g`` exact.
EXACT_INT_LIMIT = 10**14

#: Contract fields that hold integers.
INT_FIELDS = (
    "timestamp", "received_at", "priority", "altitude", "angle", "satellites",
    "speed", "event_id", "codec",
)  # fmt: skip
#: Contract fields that hold decimal degrees.
FLOAT_FIELDS = ("longitude", "latitude")
#: Fields present only for some codecs or transports.
OPTIONAL_INT_FIELDS = ("generation_type",)

Record = dict[str, Any]


def exact_int(value: int) -> int | str:
    """``value`` as a JSON number if cjson keeps it exact, else as a string."""
    return value if -EXACT_INT_LIMIT < value < EXACT_INT_LIMIT else str(value)


def _decoded(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    text: dict[str, str] = {}
    for key, raw in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EntryError(f"field {name} is not UTF-8") from exc
        text[name] = raw
    return text


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise EntryError(f"field {name} is missing")
    return value


def _integer(name: str, text: str) -> int:
    body = text[1:] if text.startswith("-") else text
    if not body.isdigit() or not body.isascii():
        raise EntryError(f"field {name} is not an integer: {text[:40]!r}")
    return int(text)


def _degrees(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise EntryError(f"field {name} is not a number: {text[:40]!r}") from exc
    if not math.isfinite(value):
        raise EntryError(f"field {name} is not finite: {text[:40]!r}")
    return value


def _io_value(io_id: str, value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EntryError(f"io {io_id} is neither an integer nor a hex string")
    if isinstance(value, int):
        return exact_int(value)
    if any(c not in "0123456789abcdef" for c in value):
        raise EntryError(f"io {io_id} is not lower-case hex: {value[:40]!r}")
    return value


def _io(text: str) -> dict[str, int | str]:
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise EntryError(f"field io is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise EntryError("field io is not a JSON object")
    io: dict[str, int | str] = {}
    for io_id, value in parsed.items():
        if not io_id.isdigit() or not io_id.isascii():
            raise EntryError(f"io id is not a decimal number: {io_id[:40]!r}")
        io[io_id] = _io_value(io_id, value)
    return io


def record_from_entry(fields: Mapping[bytes | str, bytes | str]) -> Record:
    """The record of one stream entry, typed and safe for cjson.

    ``fields`` is the entry as redis-py returns it (bytes or str keys and
    values). Fields this version does not know are passed on as strings, so
    a newer ingest does not break an older bridge. Raises ``EntryError``
    when a contract field is missing or malformed.
    """
    text = _decoded(fields)
    imei = _required(text, "imei")
    if not imei.isdigit() or not imei.isascii():
        raise EntryError(f"imei is not a string of digits: {imei[:40]!r}")
    record: Record = {"imei": imei}

    for name in INT_FIELDS:
        record[name] = exact_int(_integer(name, _required(text, name)))
    for name in FLOAT_FIELDS:
        record[name] = _degrees(name, _required(text, name))
    for name in OPTIONAL_INT_FIELDS:
        if name in text:
            record[name] = exact_int(_integer(name, text[name]))
    record["io"] = _io(_required(text, "io"))

    for name, value in text.items():
        record.setdefault(name, value)
    return record


def packet_key(record: Record) -> tuple[str, int | str]:
    """Records of one packet share the device and the server's read time."""
    return record["imei"], record["received_at"]


def group_by_packet(
    items: Iterable[tuple[str, Record]],
) -> list[tuple[list[str], list[Record]]]:
    """Entry ids and records grouped by packet, in order of first appearance.

    Interleaved entries of other devices do not split a packet; a packet
    whose entries fall into two read batches does become two groups.
    """
    groups: dict[tuple[str, int | str], tuple[list[str], list[Record]]] = {}
    for entry_id, record in items:
        ids, records = groups.setdefault(packet_key(record), ([], []))
        ids.append(entry_id)
        records.append(record)
    return list(groups.values())
