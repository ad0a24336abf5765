"""Coverage-guided fuzzing of ``trackgate.protocol`` with atheris (on demand).

Not part of the default test run (pytest does not collect this file). Run::

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_protocol.py --seed-corpus /tmp/tg-corpus
    .venv/bin/python tests/fuzz/fuzz_protocol.py /tmp/tg-corpus -max_total_time=300

The first command writes the public vectors as seed inputs and exits; the
second fuzzes from them (any libFuzzer flag works). The property checked is
the one the hypothesis fuzz tests check, with coverage feedback: whatever the
bytes, only ``RemoteProtocolError`` comes out, and a connection never holds
more than its bound while it waits for data. Any other exception is a crash
that libFuzzer saves as ``crash-*`` for replay.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from trackgate.protocol import (
        Imei,
        RemoteProtocolError,
        TcpServerConnection,
        crc16_ibm,
        decode_stream,
        decode_tcp_frame,
        decode_udp_datagram,
    )

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
# Small enough that fuzzed lengths hit it often, large enough for real frames.
FUZZ_MAX_PACKET_SIZE = 1400


def feed_connection(data: bytes, chunk_sizes: list[int], expect_imei: bool) -> None:
    conn = TcpServerConnection(
        max_packet_size=FUZZ_MAX_PACKET_SIZE, expect_imei=expect_imei
    )
    pos = 0
    for size in [*chunk_sizes, len(data)]:
        conn.receive_data(data[pos : pos + size])
        pos += size
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                if exc.fatal:
                    return
                continue
            if event is None:
                break
            if isinstance(event, Imei):
                conn.accept_imei(True)
        if conn.buffered > conn.max_packet_size:
            raise AssertionError(f"{conn.buffered} bytes buffered while waiting")


def with_crc(data_field: bytes) -> bytes:
    head = struct.pack(">II", 0, len(data_field))
    return head + data_field + struct.pack(">I", crc16_ibm(data_field))


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    mode = fdp.ConsumeIntInRange(0, 4)
    chunk_sizes = [
        fdp.ConsumeIntInRange(1, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))
    ]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if mode == 0:
            feed_connection(data, chunk_sizes, expect_imei=True)
        elif mode == 1:
            feed_connection(data, chunk_sizes, expect_imei=False)
        elif mode == 2:
            # A correct envelope, so the codec parsers see the fuzzed bytes.
            decode_tcp_frame(with_crc(data))
        elif mode == 3:
            decode_udp_datagram(data)
        else:
            decode_stream(data)
    except RemoteProtocolError:
        pass


def write_seed_corpus(folder: Path) -> None:
    """One seed file per public vector, in each mode's input shape."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = json.loads((VECTORS / "teltonika_public.json").read_text())
    for vector in vectors:
        payload = bytes.fromhex(vector["hex"])
        mode = 3 if vector["transport"] == "udp" else 1
        seeds = {mode: payload}
        if len(payload) > 12 and vector["transport"] == "tcp":
            seeds[2] = payload[8:-4]
        for seed_mode, body in seeds.items():
            # Mode byte, zero chunk sizes, then the payload.
            seed = bytes([seed_mode, 0]) + body
            (folder / f"{vector['id']}-{seed_mode}").write_bytes(seed)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        write_seed_corpus(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
