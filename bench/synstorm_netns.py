"""Reproduce the silent SYN drop of a small accept queue, then show the fix.

Two network namespaces joined by a veth pair play "devices" (10.200.0.1) and
"gateway" (10.200.0.2). In the gateway namespace an nftables DNAT rule maps
the service port 5027 to the listener's port 15027, like a container port
mapping, so conntrack is in the path. Each phase starts a listener there,
runs ``trackgate netcheck --json`` in the gateway namespace while a storm of
devices connects, sends an IMEI and waits for the one-byte reply:

* ``small-backlog``: listen(8), accepting 20 connections a second. SYNs are
  dropped silently; devices retry after 1 s, 3 s, 7 s; ListenOverflows grows.
* ``big-backlog``: net.core.somaxconn raised in that namespace, listen(8192),
  accepting as fast as it can. No slow connects.

Run as root: ``.venv/bin/python bench/synstorm_netns.py [--devices 300]``.
Needs ``ip`` and ``nft`` (apt-get install nftables). Namespaces are removed
on exit, whatever happens. Traffic never leaves the two namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

SERVICE_PORT = 5027
LISTENER_PORT = 15027
DEVICE_ADDRESS = "10.200.0.1"
GATEWAY_ADDRESS = "10.200.0.2"
IMEI_FRAME = bytes.fromhex("000f333536333037303432343431303133")
SLOW_SECONDS = 0.9
# Long enough for SYN retransmissions at 1, 3 and 7 s (and the 15 s one).
CONNECT_TIMEOUT = 20.0
HERE = Path(__file__).resolve()


# Roles run inside a namespace -------------------------------------------------


def serve(backlog: int, accepts_per_second: float) -> None:
    """Gateway role: listen, accept at a fixed rate (0 = unlimited), answer 01."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", LISTENER_PORT))
    server.listen(backlog)
    print("ready", flush=True)
    pause = 1 / accepts_per_second if accepts_per_second else 0.0
    while True:
        conn, _ = server.accept()
        conn.settimeout(5)
        try:
            if conn.recv(len(IMEI_FRAME)):
                conn.sendall(b"\x01")
        except OSError:
            pass
        finally:
            conn.close()
        if pause:
            time.sleep(pause)


async def _device(index: int) -> dict[str, float | None]:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(GATEWAY_ADDRESS, SERVICE_PORT), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError):
        return {"connect": None, "reply": None}
    connected = time.monotonic() - started
    try:
        writer.write(IMEI_FRAME)
        reply = await asyncio.wait_for(reader.readexactly(1), CONNECT_TIMEOUT)
        replied = time.monotonic() - started if reply == b"\x01" else None
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        replied = None
    finally:
        writer.close()
    return {"connect": connected, "reply": replied}


async def _storm(devices: int) -> list[dict[str, float | None]]:
    return list(await asyncio.gather(*(_device(i) for i in range(devices))))


def storm(devices: int) -> None:
    """Device role: connect all at once, print per-device timings as JSON."""
    print(json.dumps(asyncio.run(_storm(devices))))


# Orchestration ----------------------------------------------------------------


def _run(*command: str) -> str:
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout


def _in(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


@contextmanager
def namespaces() -> Iterator[tuple[str, str]]:
    """The devices and gateway namespaces, wired and NATed; always removed."""
    tag = os.getpid() % 100000
    devices, gateway = f"tgsyn-dev-{tag}", f"tgsyn-gw-{tag}"
    veth_dev, veth_gw = f"tgsd{tag}", f"tgsg{tag}"
    try:
        for name in (devices, gateway):
            _run("ip", "netns", "add", name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        _run(
            "ip",
            "link",
            "add",
            veth_dev,
            "netns",
            devices,
            "type",
            "veth",
            "peer",
            "name",
            veth_gw,
            "netns",
            gateway,
        )
        for name, veth, address in (
            (devices, veth_dev, DEVICE_ADDRESS),
            (gateway, veth_gw, GATEWAY_ADDRESS),
        ):
            _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", veth)
            _run("ip", "-n", name, "link", "set", veth, "up")
        nat = (
            "add table ip tgnat\n"
            "add chain ip tgnat prerouting "
            "{ type nat hook prerouting priority dstnat; }\n"
            f"add rule ip tgnat prerouting tcp dport {SERVICE_PORT} "
            f"dnat to {GATEWAY_ADDRESS}:{LISTENER_PORT}\n"
        )
        subprocess.run(_in(gateway, "nft", "-f", "-"), input=nat, text=True, check=True)
        yield devices, gateway
    finally:
        for name in (devices, gateway):
            subprocess.run(
                ["ip", "netns", "del", name], check=False, capture_output=True
            )


def _counters(gateway: str) -> dict[str, int]:
    code = (
        "import json; from trackgate.diagnostics import read_netstat; "
        "c = read_netstat(); print(json.dumps({k: c[k] for k in "
        "('TcpExtListenOverflows', 'TcpExtListenDrops', 'TcpExtTCPSynRetrans')}))"
    )
    return dict(json.loads(_run(*_in(gateway, sys.executable, "-c", code))))


def _trackgate() -> list[str]:
    script = Path(sys.executable).with_name("trackgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from trackgate.cli import main; main()"]


@dataclass
class PhaseResult:
    phase: str
    somaxconn: int
    backlog: int
    accepts_per_second: float
    devices: int
    connected: int
    replied: int
    slow_connects: int
    slow_replies: int
    connect_median_s: float | None
    connect_max_s: float | None
    reply_max_s: float | None
    listen_overflows: int
    listen_drops: int
    syn_retransmits: int
    netcheck_status: str
    netcheck_codes: list[str]
    netcheck_exit: int
    conntrack_count: int | None


def run_phase(
    devices_ns: str,
    gateway: str,
    phase: str,
    somaxconn: int,
    backlog: int,
    accepts_per_second: float,
    devices: int,
    netcheck_seconds: float,
) -> PhaseResult:
    _run(*_in(gateway, "sh", "-c", f"echo {somaxconn} > /proc/sys/net/core/somaxconn"))
    server = subprocess.Popen(
        _in(
            gateway,
            sys.executable,
            str(HERE),
            "serve",
            "--backlog",
            str(backlog),
            "--rate",
            str(accepts_per_second),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("listener did not start")
        before = _counters(gateway)
        netcheck = subprocess.Popen(
            _in(
                gateway,
                *_trackgate(),
                "netcheck",
                "--json",
                "--port",
                str(LISTENER_PORT),
                "--seconds",
                str(netcheck_seconds),
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.8)  # netcheck takes its first sample before the storm
        timings = json.loads(
            _run(
                *_in(
                    devices_ns,
                    sys.executable,
                    str(HERE),
                    "storm",
                    "--devices",
                    str(devices),
                )
            )
        )
        report_text, _ = netcheck.communicate(timeout=netcheck_seconds + 60)
        after = _counters(gateway)
    finally:
        server.kill()
        server.wait()

    report = json.loads(report_text)
    connects = [t["connect"] for t in timings if t["connect"] is not None]
    replies = [t["reply"] for t in timings if t["reply"] is not None]
    conntrack = report["conntrack"]
    return PhaseResult(
        phase=phase,
        somaxconn=somaxconn,
        backlog=backlog,
        accepts_per_second=accepts_per_second,
        devices=devices,
        connected=len(connects),
        replied=len(replies),
        slow_connects=sum(1 for c in connects if c >= SLOW_SECONDS),
        slow_replies=sum(1 for r in replies if r >= SLOW_SECONDS),
        connect_median_s=round(statistics.median(connects), 3) if connects else None,
        connect_max_s=round(max(connects), 3) if connects else None,
        reply_max_s=round(max(replies), 3) if replies else None,
        listen_overflows=after["TcpExtListenOverflows"]
        - before["TcpExtListenOverflows"],
        listen_drops=after["TcpExtListenDrops"] - before["TcpExtListenDrops"],
        syn_retransmits=after["TcpExtTCPSynRetrans"] - before["TcpExtTCPSynRetrans"],
        netcheck_status=report["status"],
        netcheck_codes=[f["code"] for f in report["findings"]],
        netcheck_exit=netcheck.returncode,
        conntrack_count=None if conntrack is None else conntrack["count"],
    )


def print_table(results: list[PhaseResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="SYN storm through a DNAT hop (Overflows, Drops: growth of the "
        "gateway namespace's ListenOverflows, ListenDrops)"
    )
    columns = (
        "phase",
        "somaxconn",
        "backlog",
        "accept/s",
        "devices",
        "connected",
        "replied",
        "conn>=0.9s",
        "reply>=0.9s",
        "conn max s",
        "reply max s",
        "Overflows",
        "Drops",
    )
    for column in columns:
        table.add_column(
            column,
            justify="left" if column == "phase" else "right",
            no_wrap=column == "phase",
        )
    for r in results:
        rate = "max" if not r.accepts_per_second else f"{r.accepts_per_second:g}"
        table.add_row(
            r.phase,
            str(r.somaxconn),
            str(r.backlog),
            rate,
            str(r.devices),
            str(r.connected),
            str(r.replied),
            str(r.slow_connects),
            str(r.slow_replies),
            str(r.connect_max_s),
            str(r.reply_max_s),
            str(r.listen_overflows),
            str(r.listen_drops),
        )
    console = Console(width=160)
    console.print(table)
    for r in results:
        codes = ", ".join(r.netcheck_codes) or "no findings"
        console.print(
            f"netcheck in the gateway namespace, {r.phase}: {r.netcheck_status} "
            f"(exit {r.netcheck_exit}): {codes}; conntrack entries {r.conntrack_count}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    serve_args = sub.add_parser("serve")
    serve_args.add_argument("--backlog", type=int, required=True)
    serve_args.add_argument("--rate", type=float, required=True)
    storm_args = sub.add_parser("storm")
    storm_args.add_argument("--devices", type=int, required=True)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--small-backlog", type=int, default=8)
    parser.add_argument("--slow-rate", type=float, default=20.0)
    parser.add_argument("--netcheck-seconds", type=float, default=6.0)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    if args.role == "serve":
        serve(args.backlog, args.rate)
        return
    if args.role == "storm":
        storm(args.devices)
        return
    if os.geteuid() != 0:
        sys.exit("synstorm_netns needs root (ip netns, veth, nft)")
    # A plain kill must still run the cleanup in namespaces()' finally block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with namespaces() as (devices_ns, gateway):
        results = [
            run_phase(
                devices_ns,
                gateway,
                "small-backlog",
                4096,
                args.small_backlog,
                args.slow_rate,
                args.devices,
                args.netcheck_seconds,
            ),
            run_phase(
                devices_ns,
                gateway,
                "big-backlog",
                16384,
                8192,
                0.0,
                args.devices,
                args.netcheck_seconds,
            ),
        ]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
