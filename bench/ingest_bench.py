"""Benchmark the ingest path against a naive baseline, in one run.

    .venv/bin/python bench/ingest_bench.py [--quick] [--json out.json]

Starts its own redis-server, then for trackgate and for the naive baseline
(bench/naive_server.py) in turn, in alternating rounds: a throughput run of
the simulator (devices x packets x records, every ACK checked); and for
trackgate also ACK latency at
half of the measured load, a connection storm, and idle sessions held to
measure RSS per connection across all worker processes. Prints a table and
the ratios; absolute figures depend on the machine, the ratios much less.
The simulator, the gateway and Redis share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    out.update(extra)
    return out


def simulate(port: int, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-m", "trackgate", "simulate", *args, "--port", str(port)],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    try:
        return dict(json.loads(out.stdout))
    except json.JSONDecodeError:
        raise RuntimeError(f"simulate failed: {out.stderr[-2000:]}") from None


def server_ack_quantiles(admin_port: int) -> dict[str, float]:
    """p50/p99 of the gateway's own ACK latency histogram (ms, bucket bounds)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "trackgate_ack_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    out = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        bound = next((b for b, c in ordered if c >= q * total), float("inf"))
        out[name] = round(bound * 1000, 2)
    out["count"] = total
    return out


def records_in_redis(redis_port: int, kind: str) -> int:
    """Entries in the server's record streams (resent records count again)."""
    import redis

    from trackgate.core.keys import Keys

    names = ["naive:records"] if kind == "naive" else Keys().all_records()
    client = redis.Redis(port=redis_port)
    try:
        return sum(int(client.xlen(name)) for name in names)
    finally:
        client.close()


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class Server:
    def __init__(
        self,
        kind: str,
        redis_url: str,
        workers: int,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.admin = free_port()
        if kind == "naive":
            cmd = [
                PYTHON,
                str(ROOT / "bench" / "naive_server.py"),
                str(self.port),
                redis_url,
            ]
        else:
            cmd = [PYTHON, "-m", "trackgate", "ingest"]
        self.proc = subprocess.Popen(
            cmd,
            env=env(
                TRACKGATE_REDIS_URL=redis_url,
                TRACKGATE_HOST="127.0.0.1",
                TRACKGATE_PORT=str(self.port),
                TRACKGATE_ADMIN_PORT=str(self.admin),
                TRACKGATE_ADMIN_HOST="127.0.0.1",
                TRACKGATE_WORKERS=str(workers),
                TRACKGATE_LOG_LEVEL="WARNING",
                TRACKGATE_MAX_CONNECTIONS="100000",
                TRACKGATE_MAX_CONNECTIONS_PER_IP="100000",
                **(extra or {}),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        time.sleep(1.0)

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds, naive and trackgate"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    opts = parser.parse_args()
    q = opts.quick
    # The half-load run gets a fresh gateway so its ACK histogram is its own.
    # 20 Codec 8 records with six IO values: a 1,076-byte packet, what a
    # device emptying its memory sends (devices cap packets at 1,280 bytes).
    # Both servers get the same fleet and the same packets, each for about
    # half a minute (the naive one 75 packets a device, trackgate ten times
    # as many): this VM's speed drifts by a fifth within seconds, and runs
    # of equal length weigh its drift equally on both.
    devices, records = (50, 20) if q else (200, 20)
    packets = {"naive": 10, "trackgate": 100} if q else {"naive": 75, "trackgate": 750}
    half_seconds, warmup = (5.0, 1.0) if q else (30.0, 2.0)
    storm_n = 2000 if q else 10_000
    hold_n = 4000 if q else 20_000

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    workdir = Path(tempfile.mkdtemp(prefix="trackgate-bench-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_port(redis_port)
    url = f"redis://127.0.0.1:{redis_port}/0"
    try:

        def load(kind: str) -> list[str]:
            return [
                "throughput",
                "--devices",
                str(devices),
                "--packets",
                str(packets[kind]),
                "--records",
                str(records),
                "--codec",
                "8",
            ]

        # Rounds alternate the two servers, so that a machine that slows down
        # or speeds up during the run weighs on both; the round with the
        # median ratio is reported, every round is in the JSON.
        rounds: list[dict[str, Any]] = []
        for _ in range(opts.rounds):
            one: dict[str, Any] = {}
            for kind in ("naive", "trackgate"):
                subprocess.run(
                    ["redis-cli", "-p", str(redis_port), "flushall"],
                    capture_output=True,
                    check=False,
                )
                server = Server(kind, url, opts.workers)
                try:
                    run = simulate(server.port, *load(kind))
                    run["records_in_redis"] = records_in_redis(redis_port, kind)
                    one[f"{kind}_throughput"] = run
                    if kind == "trackgate":
                        one["trackgate_server_ack_full_load"] = server_ack_quantiles(
                            server.admin
                        )
                finally:
                    server.stop()
            one["ratio"] = round(
                one["trackgate_throughput"]["records_per_s"]
                / max(one["naive_throughput"]["records_per_s"], 1e-9),
                2,
            )
            rounds.append(one)
        median = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]
        results.update({k: v for k, v in median.items() if k != "ratio"})
        results["throughput_rounds"] = rounds

        server = Server("trackgate", url, opts.workers)
        try:
            best = results["trackgate_throughput"]["records_per_s"]
            # Half load: each device sends on its own clock, so that the fleet
            # offers half the measured rate, for half_seconds; the ACK latency
            # of the first seconds (logins, first packets) is also reported
            # apart from the steady state.
            interval = devices * records / (best / 2)
            half_packets = round(half_seconds / interval)
            server.stop()
            server = Server("trackgate", url, opts.workers)
            results["trackgate_half_load"] = simulate(
                server.port,
                "fleet",
                "--devices",
                str(devices),
                "--packets",
                str(half_packets),
                "--records",
                str(records),
                "--interval",
                f"{interval:.4f}",
                "--codec",
                "8",
                "--warmup",
                str(warmup),
            )
            results["trackgate_server_ack_half_load"] = server_ack_quantiles(
                server.admin
            )
            results["trackgate_storm"] = simulate(
                server.port,
                "storm",
                "--connections",
                str(storm_n),
                "--first-imei",
                "500000",
            )
        finally:
            server.stop()

        # A fresh gateway, so memory freed by the runs above cannot hide
        # what the idle sessions cost.
        server = Server("trackgate", url, opts.workers)
        try:
            time.sleep(2)
            before = rss_kib(server.pids())
            # One client process cannot hold 20,000 sockets under the usual
            # 20,000 open-file limit: two hold half each.
            holders = [
                subprocess.Popen(
                    [PYTHON, "-m", "trackgate", "simulate", "hold", "--port",
                     str(server.port), "--sessions", str(hold_n // 2), "--seconds",
                     "25", "--first-imei", str(800_000 + n * hold_n)],
                    stdout=subprocess.PIPE, text=True, env=env(),
                )
                for n in range(2)
            ]  # fmt: skip
            time.sleep(20)
            during = rss_kib(server.pids())
            parts = [json.loads(h.communicate(timeout=120)[0]) for h in holders]
            held = {
                "mode": "hold",
                "sessions": hold_n,
                "held": sum(p["held"] for p in parts),
                "lost": sum(p["lost"] for p in parts),
                "refused": sum(p["refused"] for p in parts),
                "timed_out": sum(p["timed_out"] for p in parts),
            }
            held["rss_kib_before"] = before
            held["rss_kib_held"] = during
            held["rss_bytes_per_session"] = round(
                (during - before) * 1024 / max(held["held"], 1)
            )
            results["trackgate_hold"] = held
        finally:
            server.stop()

        server = Server("naive", url, 1)
        try:
            results["naive_storm"] = simulate(
                server.port, "storm", "--connections", str(storm_n)
            )
        finally:
            server.stop()
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    report(results)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> None:
    naive, tg = r["naive_throughput"], r["trackgate_throughput"]
    ratio = tg["records_per_s"] / max(naive["records_per_s"], 1e-9)
    rows = [
        (
            "acked records/s",
            naive["records_per_s"],
            tg["records_per_s"],
            f"x{ratio:.1f}",
        ),
        (
            "records acked / sent",
            f"{naive['records_acked']}/{naive['records_sent']}",
            f"{tg['records_acked']}/{tg['records_sent']}",
            "",
        ),
        (
            "records in the Redis streams",
            naive["records_in_redis"],
            tg["records_in_redis"],
            "",
        ),
        (
            "ACK p99 ms (full load)",
            naive["ack_latency_ms"]["p99"],
            tg["ack_latency_ms"]["p99"],
            "",
        ),
        (
            "ACK p99 ms (half load, steady)",
            "",
            r["trackgate_half_load"]["ack_latency_ms_steady"]["p99"],
            "",
        ),
        (
            "ACK p99 ms (half load, all)",
            "",
            r["trackgate_half_load"]["ack_latency_ms"]["p99"],
            "",
        ),
        (
            "half load offered / acked rec/s",
            "",
            f"{r['trackgate_throughput']['records_per_s'] / 2:.0f}"
            f"/{r['trackgate_half_load']['records_per_s']:.0f}",
            "",
        ),
        (
            "gateway ACK p99 ms, full load",
            "",
            f"<={r['trackgate_server_ack_full_load']['p99']}",
            "",
        ),
        (
            "gateway ACK p99 ms, half load",
            "",
            f"<={r['trackgate_server_ack_half_load']['p99']}",
            "",
        ),
        (
            "storm connects >= 0.9 s",
            r["naive_storm"]["connects_over_0_9s"],
            r["trackgate_storm"]["connects_over_0_9s"],
            "",
        ),
        (
            "storm connect p99 ms",
            r["naive_storm"]["connect_ms"]["p99"],
            r["trackgate_storm"]["connect_ms"]["p99"],
            "",
        ),
        ("idle sessions held", "", r["trackgate_hold"]["held"], ""),
        (
            "idle sessions lost / refused / timed out",
            "",
            "{lost}/{refused}/{timed_out}".format(**r["trackgate_hold"]),
            "",
        ),
        (
            "RSS bytes per idle session",
            "",
            r["trackgate_hold"]["rss_bytes_per_session"],
            "",
        ),
    ]
    ratios = ", ".join(f"x{one['ratio']}" for one in r["throughput_rounds"])
    print(f"throughput ratio in each round: {ratios} (the median round is shown)")
    print(f"{'':30} {'naive':>14} {'trackgate':>14} {'ratio':>8}")
    for name, a, b, c in rows:
        print(f"{name:30} {a!s:>14} {b!s:>14} {c:>8}")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
