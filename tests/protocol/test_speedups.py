"""The compiled record loop gives exactly what the Python loop gives.

The Python loop (``_readers._read_records``) is the reference. Both run on
every AVL vector, on packets built from random records, and on random and
truncated bytes, where both must fail the same way.
"""

from __future__ import annotations

import struct
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol import strategies as gen
from tests.protocol import vectors as vec
from trackgate.protocol import AvlRecord, encode_avl_packet
from trackgate.protocol import _readers as readers

compiled = readers._fast_read_records
AVL_CODECS = (0x08, 0x8E, 0x10)


def test_the_compiled_loop_is_built_and_used() -> None:
    # CI builds the extension; a silent fallback would leave it untested.
    assert compiled is not None
    assert readers.RECORD_DECODER == "compiled"


def python_read(body: bytes, count: int, codec: int) -> tuple[list[AvlRecord], int]:
    return readers._read_records(memoryview(body), count, readers._CODECS[codec])


def compiled_read(body: bytes, count: int, codec: int) -> tuple[list[AvlRecord], int]:
    assert compiled is not None
    return compiled(memoryview(body), count, codec)


def as_values(record: AvlRecord) -> list[tuple[str, Any, type]]:
    """Every field with its type, raw bytes included (equality skips them)."""
    out = []
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name == "io":
            value = sorted((k, v, type(v)) for k, v in value.items())
        out.append((f.name, value, type(value)))
    return out


def outcome(read: Any, body: bytes, count: int, codec: int) -> Any:
    try:
        records, end = read(body, count, codec)
    except (IndexError, struct.error):
        return "runs out"
    return [as_values(r) for r in records], end


def avl_body(frame: bytes) -> tuple[int, int, bytes]:
    """Codec, record count and record bytes of a TCP AVL frame."""
    length = int.from_bytes(frame[4:8], "big")
    data = frame[8 : 8 + length]
    return data[0], data[1], data[2:-1]


@pytest.mark.parametrize("vector", vec.TCP_AVL, ids=vec.ids(vec.TCP_AVL))
def test_every_avl_vector_decodes_the_same(vector: vec.Vector) -> None:
    codec, count, body = avl_body(vec.frame_bytes(vector))
    expected = outcome(python_read, body, count, codec)
    assert expected != "runs out"
    assert outcome(compiled_read, body, count, codec) == expected
    records, end = compiled_read(body, count, codec)
    assert end == len(body)
    assert len(records) == vector["expected"]["record_count"]
    # Raw bytes are each record's own wire bytes, back to back.
    assert b"".join(r.raw for r in records) == body


@settings(max_examples=300, deadline=None)
@given(gen.packets())
def test_random_packets_decode_the_same(
    packet: tuple[int, list[AvlRecord], dict[str, int]],
) -> None:
    codec, records, widths = packet
    frame = encode_avl_packet(codec, records, io_widths=widths)
    codec_id, count, body = avl_body(frame)
    got = outcome(compiled_read, body, count, codec_id)
    assert got == outcome(python_read, body, count, codec_id)
    assert got != "runs out"
    decoded, _ = compiled_read(body, count, codec_id)
    assert decoded == records


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(AVL_CODECS),
    st.integers(min_value=0, max_value=6),
    st.binary(max_size=400),
)
def test_random_bytes_fail_or_decode_the_same(
    codec: int, count: int, body: bytes
) -> None:
    assert outcome(compiled_read, body, count, codec) == outcome(
        python_read, body, count, codec
    )


@pytest.mark.parametrize("vector", vec.TCP_AVL[:12], ids=vec.ids(vec.TCP_AVL[:12]))
def test_every_truncation_fails_the_same(vector: vec.Vector) -> None:
    codec, count, body = avl_body(vec.frame_bytes(vector))
    for cut in range(len(body)):
        short = body[:cut]
        assert outcome(compiled_read, short, count, codec) == outcome(
            python_read, short, count, codec
        ), f"cut at {cut}"
        assert outcome(compiled_read, short, count, codec) == "runs out"


def test_a_huge_8e_count_is_refused_without_reading_past_the_end() -> None:
    # Record head, event id, total, then an IO group count of 65,535 pairs.
    head = bytes(24) + b"\x00\x01\x00\x00" + b"\xff\xff"
    with pytest.raises(IndexError):
        compiled_read(head, 1, 0x8E)


def test_unknown_codec_and_bad_arguments_are_errors() -> None:
    assert compiled is not None
    with pytest.raises(ValueError, match="codec 12 "):
        compiled(memoryview(b""), 0, 0x0C)
    with pytest.raises(ValueError, match="negative"):
        compiled(memoryview(b""), -1, 0x08)
    with pytest.raises(TypeError):
        compiled(memoryview(b""), 0)  # type: ignore[call-arg]
