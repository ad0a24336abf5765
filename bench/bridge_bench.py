"""Throughput of the Laravel bridge, single Redis against Redis Cluster.

For each target it starts a throw-away Redis (one server, then a 3-master
cluster) on loopback, fills the records streams with N entries written as
ingest writes them (one XADD per record, docs/redis-contract.md), runs the
bridge until every shard is empty and reports jobs/s into the Laravel queue.
With PHP and Debian's Laravel installed (.ci/install-php.sh) it then lets one
real ``php artisan queue:work`` drain up to --php-jobs of those jobs and
reports the worker's jobs/s:

    .venv/bin/python bench/bridge_bench.py --records 20000
    .venv/bin/python -m bench.bridge_bench --records 20000   # the same
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bridge.streams import entry_fields, record  # noqa: E402
from tests.support.cluster import redis_cluster  # noqa: E402
from tests.support.servers import redis_server, trackgate_env  # noqa: E402

from trackgate.bridge import (  # noqa: E402
    Bridge,
    BridgeSettings,
    BridgeStats,
    build_bridge,
)
from trackgate.core.keys import Keys  # noqa: E402
from trackgate.core.redisconn import sync_client  # noqa: E402

APP = ROOT / "tests" / "support" / "laravel"
#: XADDs per pipeline while filling: large enough to make the fill quick,
#: small enough to keep one pipeline's replies in a few MB.
FILL_CHUNK = 1000


@contextmanager
def target(kind: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh Redis URL and the env that points the test Laravel app at it."""
    if kind == "single":
        with redis_server() as server:
            yield server.url, {"REDIS_PORT": str(server.port)}
    else:
        with redis_cluster() as cluster:
            seeds = ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
            yield (
                cluster.url,
                {"REDIS_CLUSTER_SEEDS": seeds, "REDIS_QUEUE": "{default}"},
            )


def fill(url: str, keys: Keys, count: int, devices: int, per_packet: int) -> float:
    """Write ``count`` entries in packets of ``per_packet`` records, the packets
    spread over ``devices`` IMEIs; returns the seconds taken."""
    client = sync_client(url)
    started = time.perf_counter()
    for first in range(0, count, FILL_CHUNK):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + FILL_CHUNK, count)):
            packet = n // per_packet
            imei = str(356307042441013 + packet % devices)
            rec = record(imei, n, received_at=1764780000000 + packet)
            pipe.xadd(keys.records_for(imei), entry_fields(rec))
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def php_ready() -> bool:
    if shutil.which("php") is None:
        return False
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout
    return "redis" in modules.split() and Path("/usr/share/php/Illuminate").is_dir()


def drain_with_php(url: str, env: dict[str, str], jobs: int) -> tuple[int, float]:
    """Let one Laravel worker run ``jobs`` jobs; returns (jobs run, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "sink.jsonl"
        full_env = trackgate_env(
            TRACKGATE_LARAVEL_STORAGE=tmp, TRACKGATE_LARAVEL_SINK=str(sink), **env
        )
        started = time.perf_counter()
        subprocess.run(
            ["php", str(APP / "artisan"), "queue:work", "redis", "--stop-when-empty",
             f"--max-jobs={jobs}", "--quiet"],
            env=full_env, check=True, timeout=900,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        done = len(sink.read_text().splitlines()) if sink.exists() else 0
    return done, elapsed


def bench(kind: str, args: argparse.Namespace) -> dict[str, float]:
    with target(kind) as (url, env):
        settings = BridgeSettings(
            redis_url=url, stream_shards=args.shards, bridge_mode=args.mode,
            bridge_batch=args.batch, laravel_job="App\\Jobs\\IngestRecord@handle",
            bridge_consumer="bench", bridge_metrics_port=0,
        )  # fmt: skip
        fill_s = fill(url, settings.keys(), args.records, args.devices, args.per_packet)

        bridge = build_bridge(settings, stop_when_empty=True)
        started = time.perf_counter()
        stats = asyncio.run(_run(bridge))
        bridge_s = time.perf_counter() - started
        assert stats.acked == args.records, stats

        result = {
            "fill_rec_s": args.records / fill_s,
            "bridge_rec_s": args.records / bridge_s,
            "bridge_jobs_s": stats.pushed / bridge_s,
            "jobs": float(stats.pushed),
        }
        if args.php_jobs and php_ready():
            done, php_s = drain_with_php(url, env, min(args.php_jobs, stats.pushed))
            result["php_jobs_s"] = done / php_s
            result["php_jobs"] = float(done)
        return result


async def _run(bridge: Bridge) -> BridgeStats:
    try:
        return await bridge.run()
    finally:
        await bridge.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--per-packet", type=int, default=5, help="records a packet")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--mode", choices=["record", "packet"], default="record")
    parser.add_argument("--php-jobs", type=int, default=3000,
                        help="jobs a real Laravel worker runs; 0 = skip")  # fmt: skip
    parser.add_argument("--targets", default="single,cluster")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"records={args.records} devices={args.devices} per_packet="
          f"{args.per_packet} shards={args.shards} "
          f"batch={args.batch} mode={args.mode} cpus={os.cpu_count()} "
          f"python={sys.version.split()[0]}")  # fmt: skip
    header = f"{'target':8} {'fill rec/s':>11} {'bridge rec/s':>13} {'jobs/s':>9}"
    print(header + f" {'php jobs/s':>11}")
    for kind in args.targets.split(","):
        r = bench(kind, args)
        php = f"{r['php_jobs_s']:11.0f}" if "php_jobs_s" in r else f"{'-':>11}"
        print(f"{kind:8} {r['fill_rec_s']:11.0f} {r['bridge_rec_s']:13.0f} "
              f"{r['bridge_jobs_s']:9.0f} {php}")  # fmt: skip


if __name__ == "__main__":
    main()
