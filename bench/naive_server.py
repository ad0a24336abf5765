"""The baseline: how a typical home-made gateway is written.

A plain asyncio server with the default listen backlog (100), the default
event loop, one awaited Redis XADD per record, and the ACK after the last
one. Each entry holds the same fields as trackgate's (the data contract),
so both store the same records. It decodes with trackgate's protocol
package, so the comparison measures the serving and storing path, not the
decoder. Used only by the benchmarks in this folder (bench/ingest_bench.py
starts it):

    .venv/bin/python bench/naive_server.py PORT REDIS_URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis

from trackgate.protocol import AvlPacket, Imei, TcpServerConnection, tcp_ack


async def serve(port: int, redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = TcpServerConnection()
        imei = ""
        try:
            while data := await reader.read(65536):
                conn.receive_data(data)
                while (event := conn.next_event()) is not None:
                    if isinstance(event, Imei):
                        imei = event.imei
                        writer.write(conn.accept_imei(True))
                    elif isinstance(event, AvlPacket):
                        now = int(time.time() * 1000)
                        for r in event.records:
                            await client.xadd(
                                "naive:records",
                                {
                                    "imei": imei,
                                    "timestamp": r.timestamp,
                                    "received_at": now,
                                    "priority": r.priority,
                                    "longitude": r.longitude,
                                    "latitude": r.latitude,
                                    "altitude": r.altitude,
                                    "angle": r.angle,
                                    "satellites": r.satellites,
                                    "speed": r.speed,
                                    "event_id": r.event_id,
                                    "io": json.dumps(r.io),
                                    "codec": event.codec,
                                    "transport": "tcp",
                                },
                            )
                        writer.write(tcp_ack(len(event.records)))
        except Exception:  # noqa: BLE001 - the baseline just drops the client
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int, help="TCP port to serve on 127.0.0.1")
    parser.add_argument("redis_url", help="Redis to store the records in")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.redis_url))


if __name__ == "__main__":
    main()
