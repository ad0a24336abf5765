"""End-to-end throughput on a single Redis and on a 3-master Redis Cluster.

    .venv/bin/python bench/cluster_bench.py [--devices 200 --packets 25 --records 20]

Starts a redis-server and a 3-master cluster (Debian's redis-server and
`redis-cli --cluster create`, as the tests do), runs `trackgate ingest` with
4 stream shards against each in turn, and the same simulator load; prints
acked records/s, ACK latency and the run's record audit for both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import redis_cluster  # noqa: E402
from tests.support.servers import redis_server  # noqa: E402

from bench.ingest_bench import Server, simulate  # noqa: E402
from trackgate.core.keys import Keys  # noqa: E402
from trackgate.core.redisconn import sync_client  # noqa: E402


def stored(url: str) -> int:
    client = sync_client(url)
    total = sum(int(client.xlen(k)) for k in Keys(shards=4).all_records())
    client.close()
    return total


def run(url: str, load: list[str], workers: int) -> dict[str, object]:
    server = Server("trackgate", url, workers, extra={"TRACKGATE_STREAM_SHARDS": "4"})
    try:
        result = simulate(server.port, *load)
    finally:
        server.stop()
    result["records_in_streams"] = stored(url)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--packets", type=int, default=25)
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    load = [
        "throughput", "--devices", str(opts.devices), "--packets", str(opts.packets),
        "--records", str(opts.records), "--codec", "8",
    ]  # fmt: skip
    results = {}
    with redis_server() as single:
        results["single"] = run(single.url, load, opts.workers)
    with redis_cluster() as cluster:
        results["cluster"] = run(cluster.url, load, opts.workers)
    for name, r in results.items():
        ack: dict[str, float] = r["ack_latency_ms"]  # type: ignore[assignment]
        print(
            f"{name:8} acked/s {r['records_per_s']:>9}  "
            f"acked {r['records_acked']}/{r['records_sent']}  "
            f"in streams {r['records_in_streams']}  "
            f"ACK p50 {ack['p50']} ms p99 {ack['p99']} ms"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
