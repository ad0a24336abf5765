"""Hypothesis strategies for records, packets and streams of the protocol tests."""

from __future__ import annotations

from hypothesis import strategies as st

from trackgate.protocol import (
    AvlRecord,
    encode_avl_packet,
    encode_command,
    encode_gprs_message,
    encode_imei,
)

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
IO_WIDTH_BITS = {1: 8, 2: 16, 4: 32, 8: 64}

imeis = st.from_regex(r"\A[0-9]{15,16}\Z")
# IMEIs that survive packing into 8 bytes (Codec 14/15): no 16-digit IMEI with
# a leading zero, which would read back as 15 digits.
packable_imeis = st.from_regex(r"\A([0-9]{15}|[1-9][0-9]{15})\Z")


@st.composite
def io_maps(draw: st.DrawFn, codec: int) -> tuple[dict[str, int | str], dict[str, int]]:
    """An IO map for ``codec`` and the widths to encode it with."""
    id_range = U8 if codec == 8 else U16
    ids = draw(st.lists(id_range, max_size=12, unique=True))
    io: dict[str, int | str] = {}
    widths: dict[str, int] = {}
    for io_id in ids:
        key = str(io_id)
        if codec == 0x8E and draw(st.booleans()) and draw(st.booleans()):
            io[key] = draw(st.binary(max_size=40)).hex()
            continue
        width = draw(st.sampled_from([1, 2, 4, 8]))
        widths[key] = width
        io[key] = draw(st.integers(0, 2 ** IO_WIDTH_BITS[width] - 1))
    return io, widths


@st.composite
def records(draw: st.DrawFn, codec: int) -> tuple[AvlRecord, dict[str, int]]:
    io, widths = draw(io_maps(codec))
    record = AvlRecord(
        timestamp=draw(U64),
        priority=draw(U8),
        longitude=draw(I32) / 1e7,
        latitude=draw(I32) / 1e7,
        altitude=draw(st.integers(-(2**15), 2**15 - 1)),
        angle=draw(U16),
        satellites=draw(U8),
        speed=draw(U16),
        event_id=draw(U8 if codec == 8 else U16),
        io=io,
        generation_type=draw(U8) if codec == 16 else None,
        raw=b"",
    )
    return record, widths


@st.composite
def packets(draw: st.DrawFn) -> tuple[int, list[AvlRecord], dict[str, int]]:
    """A codec, records for it, and IO widths consistent across the records."""
    codec = draw(st.sampled_from([8, 0x8E, 16]))
    drawn = draw(st.lists(records(codec), max_size=6))
    widths: dict[str, int] = {}
    kept: list[AvlRecord] = []
    for record, record_widths in drawn:
        # One width per IO id within a packet, as a device's IO table fixes it.
        if all(widths.get(k, w) == w for k, w in record_widths.items()):
            widths.update(record_widths)
            kept.append(record)
    return codec, kept, widths


@st.composite
def device_frames(draw: st.DrawFn) -> bytes:
    """One frame a device (or, for commands, a server) might put on the stream."""
    kind = draw(st.sampled_from(["avl", "command", "message"]))
    if kind == "avl":
        codec, recs, widths = draw(packets())
        return encode_avl_packet(codec, recs, io_widths=widths)
    if kind == "command":
        return encode_command(draw(st.binary(max_size=60)))
    codec = draw(st.sampled_from([12, 13, 14, 15]))
    return encode_gprs_message(
        codec,
        draw(U8),
        draw(st.binary(max_size=60)),
        timestamp=draw(U32) if codec in (13, 15) else None,
        imei=draw(packable_imeis) if codec in (14, 15) else None,
    )


@st.composite
def sessions(draw: st.DrawFn) -> bytes:
    """Keep-alives, a login, then frames and keep-alives interleaved."""
    parts = [b"\xff" * draw(st.integers(0, 2)), encode_imei(draw(imeis))]
    for frame in draw(st.lists(device_frames(), min_size=1, max_size=4)):
        parts.append(b"\xff" * draw(st.integers(0, 2)))
        parts.append(frame)
    return b"".join(parts)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places (possibly into single bytes)."""
    if len(data) < 2:
        return [data]
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=20, unique=True))
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
