"""The public Teltonika test vectors, loaded once for the protocol and CLI tests.

The corpus lives in ``shared/vectors`` beside the repository checkout (in CI
the repository is cloned into a folder with ``shared/`` next to it). A missing
file is an error, not a skip: without it the codec is untested.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
VECTORS_FILE = VECTORS_DIR / "teltonika_public.json"

Vector = dict[str, Any]

# What each invalid vector must produce: an error kind, or None for "wait for
# more bytes" (a truncated frame). Frames beyond the default buffer bound are
# listed with the kind they get under the default and under a raised bound.
INVALID_OUTCOMES: dict[str, str | None] = {
    "wiki-codec16-udp-original-inconsistent": "bad_udp_datagram",
    "filipkroca-codec12-resp-bad-crc": "crc_mismatch",
    "falyoun-codec14-nack-as-copied": "crc_mismatch",
    "pdf-fm64-codec8e-udp-bogus": "malformed_frame",
    "traccar-c13-14": "crc_mismatch",
    "traccar-c16-20": "crc_mismatch",
    "traccar-c8-22": "crc_mismatch",
    "traccar-c8-28": "malformed_frame",
    "traccar-c8-33": None,
    "traccar-c8-40": None,
    "traccar-c12-50": "frame_too_large",
}
# With a bound large enough for the frame, what the frame itself is.
OVERSIZED_OUTCOMES_WITH_ROOM = {"traccar-c12-50": "crc_mismatch"}
# Marked invalid by the corpus, but a decoder that parses GPRS messages by
# their Size field (as the wiki advises) reads them correctly.
INVALID_BUT_DECODABLE = {"traccar-hist-75aa9f8b"}
# Valid frames this package deliberately does not decode, and what it raises.
UNSUPPORTED_OUTCOMES = {
    "traccar-c7-31": "unknown_codec",  # Codec 7 (GH3000): not implemented
    "traccar-c7-37": "unknown_codec",
    "traccar-c8-46": "malformed_frame",  # Traccar's non-standard 'extended' mode
}
SERVER_ACKS = {"doc-tcp-ack-2", "doc-udp-ack-abcd-inconsistent"}


def _load() -> list[Vector]:
    if not VECTORS_FILE.is_file():
        raise FileNotFoundError(
            f"test vectors not found at {VECTORS_FILE}; the repository must be "
            "checked out next to the shared/ folder"
        )
    vectors: list[Vector] = json.loads(VECTORS_FILE.read_text())
    return vectors


ALL: list[Vector] = _load()
BY_ID: dict[str, Vector] = {v["id"]: v for v in ALL}


def frame_bytes(vector: Vector) -> bytes:
    return bytes.fromhex(vector["hex"])


def select(predicate: Any) -> list[Vector]:
    return [v for v in ALL if predicate(v)]


def is_supported_valid(vector: Vector) -> bool:
    return bool(vector["valid"]) and vector["id"] not in UNSUPPORTED_OUTCOMES


TCP_AVL = select(
    lambda v: is_supported_valid(v) and v["transport"] == "tcp" and v["kind"] == "avl"
)
UDP_AVL = select(
    lambda v: is_supported_valid(v) and v["transport"] == "udp" and v["kind"] == "avl"
)
GPRS = select(
    lambda v: v["valid"] and v["kind"] in ("response", "message", "command", "camera")
)
IMEI_FRAMES = select(lambda v: v["kind"] == "imei")
IMEI_REPLIES = select(lambda v: v["kind"] == "imei_reply")
STREAMS = select(lambda v: "segments_expected" in v or v["kind"] == "keepalive")
# Every device-to-server TCP frame that decodes to an event.
TCP_FRAMES = [v for v in TCP_AVL + GPRS if v["direction"] == "device_to_server"]


def ids(vectors: list[Vector]) -> list[str]:
    return [v["id"] for v in vectors]


@cache
def io_widths(vector_id: str) -> dict[str, int]:
    """IO id -> value width over all records of an AVL vector."""
    widths: dict[str, int] = {}
    for record in BY_ID[vector_id]["expected"]["records"]:
        for group, width in (("n1", 1), ("n2", 2), ("n4", 4), ("n8", 8)):
            for key in record["io"].get(group, {}):
                widths[key] = width
    return widths


def flat_io(expected_io: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The corpus's grouped IO map as one decimal-id -> value dict."""
    flat: dict[str, Any] = {}
    for group in ("n1", "n2", "n4", "n8", "nx"):
        for key, value in expected_io.get(group, {}).items():
            assert key not in flat, f"IO {key} appears in two groups"
            flat[key] = value
    return flat
