"""The write path alone: ``RecordStore.write`` against a local redis-server.

    .venv/bin/python bench/store_bench.py     # or: python -m bench.store_bench

Starts its own redis-server, then stores 400 packets of 20 Codec 8 records
(50 devices) one packet per call and 20 packets per call, and prints the
time per call, records/s and the Redis CPU per stored record (from
``INFO cpu``). One process, no sockets to devices: what the store costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import redis_server  # noqa: E402

from trackgate.core.keys import Keys  # noqa: E402
from trackgate.core.redisconn import async_client  # noqa: E402
from trackgate.core.store import PacketWrite, RecordStore  # noqa: E402
from trackgate.protocol import AvlPacket, decode_tcp_frame, encode_avl_packet  # noqa: E402
from trackgate.sim import make_records  # noqa: E402

PACKETS = 400
DEVICES = 50


def packets() -> list[AvlPacket]:
    out = []
    for k in range(PACKETS):
        records = make_records(20, codec=8, start_ms=1_700_000_000_000 + k * 20_000)
        packet = decode_tcp_frame(encode_avl_packet(8, records))
        assert isinstance(packet, AvlPacket)
        out.append(packet)
    return out


async def measure(url: str) -> None:
    client = async_client(url)
    store = RecordStore(client, Keys())
    decoded = packets()

    async def redis_cpu() -> float:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    print(f"{'packets per call':>16} {'ms per call':>12} {'records/s':>10} "
          f"{'Redis µs per record':>20}")  # fmt: skip
    for per_call in (1, 20):
        await client.flushall()
        stored, calls = 0, 0
        started, cpu = time.perf_counter(), await redis_cpu()
        for k in range(0, PACKETS, per_call):
            batch = [
                PacketWrite(str(356_307_040_000_000 + (k + i) % DEVICES), 8,
                            decoded[k + i].records, 1, "tcp", "127.0.0.1:1")
                for i in range(per_call)
            ]  # fmt: skip
            stored += sum(r.stored for r in await store.write(batch))
            calls += 1
        elapsed = time.perf_counter() - started
        cpu = await redis_cpu() - cpu
        print(f"{per_call:>16} {elapsed / calls * 1000:>12.2f} "
              f"{stored / elapsed:>10,.0f} {cpu / stored * 1e6:>20.1f}")  # fmt: skip
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    with redis_server() as server:
        asyncio.run(measure(server.url))


if __name__ == "__main__":
    main()
