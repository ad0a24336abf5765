"""Single-core decode throughput of ``trackgate.protocol``, in records per second.

Run from the repository root::

    .venv/bin/python bench/decode_bench.py            # about 20 s
    .venv/bin/python bench/decode_bench.py --seconds 1 --json

Workloads are real device packets from the public vectors (``shared/vectors``
beside the checkout) plus a synthetic 25-record Codec 8 packet with a typical
FMB IO set, kept under the 1280-byte packet maximum. Each goes through the
path the ingest service uses (``TcpServerConnection.receive_data`` and
``next_event``), once with the package as shipped (compiled record loop and
compiled CRC-16) and, in the same run, with the record loop in pure Python,
and with the CRC swapped for two pure-Python baselines: the per-byte,
per-bit loop of the Teltonika documents and a 256-entry table. The
best of ``--repeat`` runs is reported; the process is single-threaded, so the
figure is what one core does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trackgate.protocol import (
    AvlPacket,
    AvlRecord,
    TcpServerConnection,
    _readers,  # the baselines swap the CRC function the frame reader calls
    decode_tcp_frame,
    encode_avl_packet,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"

# A typical FMB periodic record: (IO id, width, value). 25 such records make a
# 1240-byte frame, under the 1280-byte packet maximum.
_FMB_IO = [
    ("239", 1, 1),  # ignition
    ("240", 1, 1),  # movement
    ("21", 1, 4),  # GSM signal
    ("69", 1, 1),  # GNSS status
    ("66", 2, 12876),  # external voltage
    ("67", 2, 4012),  # battery voltage
    ("16", 4, 2092825),  # total odometer
]


def per_bit_crc(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/ARC exactly as the Teltonika documents spell it out."""
    crc = 0
    for byte in bytes(data):
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _table() -> list[int]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def table_crc(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/ARC with a 256-entry table: one lookup per byte."""
    crc = 0
    table = _TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


@contextmanager
def swapped(
    crc: Callable[[bytes | bytearray | memoryview], int] | None,
    python_records: bool,
) -> Iterator[None]:
    """Run the readers with another CRC function (None: the shipped one),
    and with the pure-Python record loop when ``python_records``."""
    shipped = getattr(_readers, "crc16_ibm")  # noqa: B009
    loop = _readers._fast_read_records
    if crc is not None:
        setattr(_readers, "crc16_ibm", crc)  # noqa: B010
    if python_records:
        _readers._fast_read_records = None
    try:
        yield
    finally:
        setattr(_readers, "crc16_ibm", shipped)  # noqa: B010
        _readers._fast_read_records = loop


def synthetic_codec8(records: int = 25) -> bytes:
    widths = {key: width for key, width, _ in _FMB_IO}
    base = 1_700_000_000_000
    recs = [
        AvlRecord(
            timestamp=base + 30_000 * i,
            priority=0,
            longitude=25.2797 + i * 1e-4,
            latitude=54.6872 - i * 1e-4,
            altitude=112,
            angle=214,
            satellites=11,
            speed=57,
            event_id=0,
            io={key: value for key, _, value in _FMB_IO},
        )
        for i in range(records)
    ]
    return encode_avl_packet(8, recs, io_widths=widths)


def workloads() -> list[tuple[str, list[bytes]]]:
    path = VECTORS / "teltonika_public.json"
    if not path.is_file():
        sys.exit(f"decode_bench: vectors not found at {path}")
    vectors = {v["id"]: v for v in json.loads(path.read_text())}
    real_8e = [
        bytes.fromhex(v["hex"])
        for v in vectors.values()
        if v["valid"] and v["transport"] == "tcp" and v["codec"] == 0x8E
        and v["kind"] == "avl" and v["expected"]["record_count"] > 0
    ]  # fmt: skip
    synthetic = synthetic_codec8()
    return [
        ("codec 8, 25 records x 7 IO (synthetic, 1240 B)", [synthetic]),
        (
            "codec 8, 14 records x 22 IO (real, 1261 B)",
            [bytes.fromhex(vectors["karticr-codec8-tcp-split-1024"]["hex"])],
        ),
        (
            "codec 8, 25 records, no IO (real)",
            [bytes.fromhex(vectors["maprox-codec8-tcp-25rec"]["hex"])],
        ),
        (f"codec 8E, {len(real_8e)} real packets", real_8e),
    ]


def records_per_second(frames: list[bytes], seconds: float) -> float:
    """Feed ``frames`` round-robin through a connection for ``seconds``."""
    conn = TcpServerConnection(max_packet_size=4096, expect_imei=False)
    per_round = 0
    for frame in frames:
        packet = decode_tcp_frame(frame)
        assert isinstance(packet, AvlPacket)
        per_round += len(packet.records)

    rounds = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for frame in frames:
            conn.receive_data(frame)
            conn.next_event()
        rounds += 1
        now = time.perf_counter()
        if now >= deadline:
            return rounds * per_round / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()

    Crc = Callable[[bytes | bytearray | memoryview], int]
    variants: list[tuple[str, Crc | None, bool]] = [
        (f"shipped ({_readers.RECORD_DECODER})", None, False),
        ("python record loop", None, True),
        ("+ table CRC", table_crc, True),
        ("+ per-bit CRC", per_bit_crc, True),
    ]
    results: list[dict[str, object]] = []
    for name, frames in workloads():
        rates: dict[str, int] = {}
        for variant, crc, python_records in variants:
            with swapped(crc, python_records):
                best = max(
                    records_per_second(frames, args.seconds) for _ in range(args.repeat)
                )
            rates[variant] = round(best)
        sizes = sorted({len(f) for f in frames})
        results.append({"workload": name, "frame_bytes": sizes, "records_per_s": rates})
        if not args.json:
            cells = "".join(f"{rates[v]:>20,}" for v, _, _ in variants)
            if len(results) == 1:
                print(f"python {sys.version.split()[0]}, one core, best of "
                      f"{args.repeat}, records/s via TcpServerConnection")  # fmt: skip
                header = f"{'workload':46}" + "".join(f"{v:>20}" for v, *_ in variants)
                print(header)
                print("-" * len(header))
            print(f"{name:46}{cells}", flush=True)

    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
