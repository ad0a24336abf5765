"""Redis memory per record and per device, measured on a real redis-server.

    .venv/bin/python bench/capacity.py [--records 200000] [--devices 5000]

Writes records through the same store the gateway uses (single server,
default settings) and reads ``used_memory`` before and after. Prints bytes
per record (stream entry) and per device (status hash, dedup window full,
device index entry).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time

from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.core.store import DEFAULT_DEDUP_WINDOW, PacketWrite, RecordStore
from trackgate.protocol import decode_tcp_frame, encode_avl_packet
from trackgate.sim import imei_for, make_records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def used_memory(client: object) -> int:
    info = await client.info("memory")  # type: ignore[attr-defined]
    return int(info["used_memory"])


def packets_for(
    imei: str, count: int, per_packet: int, start: int
) -> list[PacketWrite]:
    out = []
    for p in range(count // per_packet):
        frame = encode_avl_packet(
            8, make_records(per_packet, codec=8, start_ms=start + p * per_packet * 1000)
        )
        decoded = decode_tcp_frame(frame)
        out.append(
            PacketWrite(
                imei=imei,
                codec=8,
                records=decoded.records,  # type: ignore[union-attr]
                received_at=int(time.time() * 1000),
                transport="tcp",
                peer="10.0.0.1:40000",
            )
        )
    return out


async def measure(url: str, records: int, devices: int) -> dict[str, float]:
    client = async_client(url)
    store = RecordStore(client, Keys())
    base = await used_memory(client)

    # Records: one device, so per-device state is negligible.
    batch = packets_for(imei_for(0), records, 20, 1_700_000_000_000)
    for i in range(0, len(batch), 100):
        await store.write(batch[i : i + 100])
    after_records = await used_memory(client)

    # Devices: each with a full dedup window and its status hash.
    per_device = DEFAULT_DEDUP_WINDOW
    stream_before = await used_memory(client)
    stream_len = await client.xlen(Keys().records(0))
    for d in range(1, devices + 1):
        await store.write(packets_for(imei_for(d), per_device, 20, 1_700_000_000_000))
    after_devices = await used_memory(client)
    added_records = await client.xlen(Keys().records(0)) - stream_len
    per_record = (after_records - base) / records
    device_bytes = (
        after_devices - stream_before - added_records * per_record
    ) / devices
    await client.aclose()
    return {
        "records": records,
        "bytes_per_record": round(per_record, 1),
        "mib_per_million_records": round(per_record * 1e6 / 2**20, 1),
        "devices": devices,
        "bytes_per_device": round(device_bytes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=2_000)
    opts = parser.parse_args()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="trackgate-capacity-")
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port),
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        result = asyncio.run(
            measure(f"redis://127.0.0.1:{port}/0", opts.records, opts.devices)
        )
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
