"""Network namespaces for fault tests: a device side, a gateway side, a link.

The ingest fault tests (``tests/ingest/test_netns_faults.py``) build two
namespaces, "devices" and "gateway", join them by a link, run Redis and
``trackgate ingest`` in the gateway namespace and simulated devices in the
devices namespace, then impair or cut the link. This module builds and
tears down that plumbing and holds the small programs that run inside the
namespaces (``python -m tests.support.netns fleet|device|stored|get|relay``),
each printing JSON on stdout.

Two kinds of link:

- :func:`veth_link`: a veth pair; :func:`netem` impairs it with the kernel's
  ``sch_netem`` (loss, delay, jitter, reordering) where the kernel has it;
- :func:`tun_link`: two TUN devices joined by a user-space relay (``relay``
  below) that drops, delays and reorders whole IP packets with the same
  parameters. Used where ``sch_netem`` is missing (kernels without modules).

:func:`blackhole` drops a local TCP port's traffic in one namespace (nft, or
iptables), which turns an established connection into a half-open one the
other side cannot see. Nothing here knows the ingest service's internals:
the tests read its Redis, its metrics and its log.

Needs root and iproute2; every namespace is deleted on exit, whatever
happened, and addresses live only inside the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import itertools
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

REPO = Path(__file__).resolve().parents[2]

#: The device side's and the gateway side's address on every link: private,
#: and only ever configured inside the namespaces this module creates.
DEVICES_IP = "10.231.0.1"
GATEWAY_IP = "10.231.0.2"
#: Ports inside the gateway namespace: it is new and empty, so fixed ports
#: cannot collide with anything.
REDIS_PORT = 6379
TRACKER_PORT = 5027
ADMIN_PORT = 9464

_counter = itertools.count()


# What this machine can do ---------------------------------------------------


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the ip command (apt-get install iproute2)"
    probe = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def netem_unavailable() -> str | None:
    """Why ``tc qdisc ... netem`` cannot be used here, or None if it can."""
    reason = netns_unavailable()
    if reason is not None:
        return reason
    if shutil.which("tc") is None:
        return "needs tc (apt-get install iproute2)"
    with namespace("tgprobe") as ns:
        result = ns.run(
            ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            check=False,
        )
    if result.returncode != 0:
        return (
            "this kernel has no sch_netem and cannot load it "
            f"(tc: {result.stderr.strip()})"
        )
    return None


def blackhole_unavailable() -> str | None:
    """Why :func:`blackhole` cannot work here, or None if it can."""
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        return "needs nft or iptables (apt-get install nftables)"
    return None


def tun_unavailable() -> str | None:
    """Why :func:`tun_link` cannot work here, or None if it can."""
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun for the user-space link"
    return None


# Namespaces and links ---------------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    """A network namespace by name, and ways to run things inside it."""

    name: str

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self, command: Sequence[str], *, check: bool = True, timeout: float = 30,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        result = subprocess.run(
            self.argv(command), capture_output=True, text=True, input=stdin,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {' '.join(command)} exited {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return result

    def popen(
        self, command: Sequence[str], *, env: dict[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:  # fmt: skip
        """Start ``command`` inside; ``ip netns exec`` execs it, so the pid is its."""
        return subprocess.Popen(
            self.argv(command), env=env, stdout=stdout, stdin=stdin,
            stderr=subprocess.PIPE if stdout is subprocess.PIPE else subprocess.STDOUT,
            text=True, cwd=REPO,
        )  # fmt: skip

    def helper(self, *args: str, timeout: float = 60, stdin: str | None = None) -> Any:
        """Run one of this module's programs inside; its stdout is JSON."""
        result = subprocess.run(
            self.argv([sys.executable, "-m", "tests.support.netns", *args]),
            capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
            input=stdin,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(
                f"in {self.name}: helper {args[0]} exited {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return json.loads(result.stdout)

    def helper_popen(self, *args: str) -> subprocess.Popen[str]:
        return self.popen(
            [sys.executable, "-m", "tests.support.netns", *args],
            stdin=subprocess.PIPE,
        )

    def wait_for_port(
        self, port: int, host: str = "127.0.0.1", timeout: float = 30
    ) -> None:
        self.helper("wait", host, str(port), str(timeout), timeout=timeout + 10)


@contextmanager
def namespace(prefix: str) -> Iterator[Namespace]:
    """A new namespace with loopback up; deleted on exit."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@dataclass(frozen=True)
class Link:
    """Two namespaces and the interfaces that join them."""

    devices: Namespace
    gateway: Namespace
    devices_dev: str
    gateway_dev: str
    devices_ip: str = DEVICES_IP
    gateway_ip: str = GATEWAY_IP


def _address(ns: Namespace, dev: str, local: str, peer: str) -> None:
    ns.run(["ip", "addr", "add", local, "peer", f"{peer}/32", "dev", dev])
    ns.run(["ip", "link", "set", dev, "up"])


@contextmanager
def veth_link(prefix: str = "tgf") -> Iterator[Link]:
    """Namespaces "devices" and "gateway" joined by a veth pair."""
    with namespace(f"{prefix}d") as devices, namespace(f"{prefix}g") as gateway:
        tag = f"{os.getpid() % 100000}{next(_counter)}"
        dev_d, dev_g = f"tgvd{tag}"[:15], f"tgvg{tag}"[:15]
        # Both ends are created inside the namespaces: nothing appears on
        # the host, even for a moment.
        subprocess.run(
            ["ip", "-n", devices.name, "link", "add", dev_d, "type", "veth",
             "peer", "name", dev_g, "netns", gateway.name],
            check=True,
        )  # fmt: skip
        _address(devices, dev_d, DEVICES_IP, GATEWAY_IP)
        _address(gateway, dev_g, GATEWAY_IP, DEVICES_IP)
        yield Link(devices, gateway, dev_d, dev_g)


def netem(ns: Namespace, dev: str, impairment: Impairment) -> None:
    """Impair what ``dev`` sends with the kernel's netem."""
    ns.run(["tc", "qdisc", "add", "dev", dev, "root", "netem",
            "loss", f"{impairment.loss_pct}%",
            "delay", f"{impairment.delay_ms}ms", f"{impairment.jitter_ms}ms",
            "reorder", f"{impairment.reorder_pct}%"])  # fmt: skip


@dataclass(frozen=True)
class Impairment:
    """What happens to each packet, in each direction, independently.

    ``reorder_pct`` follows netem: that share of packets is sent at once,
    overtaking the delayed ones.
    """

    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_pct: float = 0.0
    seed: int = 1


@dataclass
class TunLink:
    """A :class:`Link` whose packets pass through the user-space relay."""

    link: Link
    relay: subprocess.Popen[str]
    stats: dict[str, int] = field(default_factory=dict)


@contextmanager
def tun_link(impairment: Impairment, prefix: str = "tgt") -> Iterator[TunLink]:
    """Namespaces joined by two TUN devices and a relay that impairs the link.

    The relay opens both TUN devices in this namespace and they are then
    moved into the namespaces; the relay's file descriptors follow them.
    Its counters (forwarded, dropped, reordered) are in ``stats`` on exit.
    """
    with namespace(f"{prefix}d") as devices, namespace(f"{prefix}g") as gateway:
        tag = f"{os.getpid() % 100000}{next(_counter)}"
        dev_d, dev_g = f"tgtd{tag}"[:15], f"tgtg{tag}"[:15]
        relay = subprocess.Popen(
            [sys.executable, "-m", "tests.support.netns", "relay", dev_d, dev_g,
             "--loss", str(impairment.loss_pct),
             "--delay-ms", str(impairment.delay_ms),
             "--jitter-ms", str(impairment.jitter_ms),
             "--reorder", str(impairment.reorder_pct),
             "--seed", str(impairment.seed)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        link = TunLink(Link(devices, gateway, dev_d, dev_g), relay)
        try:
            assert relay.stdout is not None
            ready = relay.stdout.readline()
            if ready.strip() != "ready":
                _, err = relay.communicate(timeout=10)
                raise AssertionError(f"the relay did not start: {err.strip()}")
            subprocess.run(
                ["ip", "link", "set", dev_d, "netns", devices.name], check=True
            )
            subprocess.run(
                ["ip", "link", "set", dev_g, "netns", gateway.name], check=True
            )
            _address(devices, dev_d, DEVICES_IP, GATEWAY_IP)
            _address(gateway, dev_g, GATEWAY_IP, DEVICES_IP)
            yield link
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                out, _ = relay.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
                out, _ = relay.communicate()
            if out.strip():
                link.stats = json.loads(out.strip().splitlines()[-1])


@contextmanager
def blackhole(ns: Namespace, port: int) -> Iterator[None]:
    """Drop every TCP segment to or from local ``port`` in ``ns``, silently."""
    if shutil.which("nft") is not None:
        table = f"tgblackhole{port}"
        ns.run(["nft", "-f", "-"], stdin=(
            f"table inet {table} {{\n"
            f" chain input {{ type filter hook input priority -300; "
            f"tcp dport {port} drop; }}\n"
            f" chain output {{ type filter hook output priority -300; "
            f"tcp sport {port} drop; }}\n"
            f"}}\n"
        ))  # fmt: skip
        try:
            yield
        finally:
            ns.run(["nft", "delete", "table", "inet", table], check=False)
        return
    rules = [
        ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
        ["OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
    ]
    for rule in rules:
        ns.run(["iptables", "-I", *rule])
    try:
        yield
    finally:
        for rule in rules:
            ns.run(["iptables", "-D", *rule], check=False)


# The gateway: Redis and the ingest service inside a namespace -----------------


@dataclass
class Gateway:
    """redis-server and ``trackgate ingest`` running in ``ns``."""

    ns: Namespace
    log_path: Path
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def redis(self, *command: str) -> list[str]:
        """One redis-cli command inside the namespace; the reply's lines."""
        result = self.ns.run(["redis-cli", "-p", str(REDIS_PORT), *command])
        return result.stdout.splitlines()

    def hash(self, key: str) -> dict[str, str]:
        lines = self.redis("HGETALL", key)
        return dict(zip(lines[::2], lines[1::2], strict=True))

    def metrics(self) -> str:
        answer = self.ns.helper("get", f"http://127.0.0.1:{ADMIN_PORT}/metrics")
        assert answer["status"] == 200, answer
        return str(answer["body"])

    def stored(self) -> dict[str, int]:
        """How many times each ``imei:timestamp`` is in the record streams."""
        counts: dict[str, int] = self.ns.helper("stored", self.redis_url)
        return counts

    def command(self, imei: str, text: str) -> dict[str, Any]:
        """Queue a command for ``imei``; its id and when it was queued."""
        queued: dict[str, Any] = self.ns.helper("command", self.redis_url, imei, text)
        return queued

    def unacknowledged(self) -> int:
        """Bytes the gateway sent to devices that they have not acknowledged."""
        return sum(int(line.split()[1]) for line in self.sockets())

    def sockets(self) -> list[str]:
        """Established TCP connections on the tracker port, as ``ss`` shows."""
        result = self.ns.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{TRACKER_PORT} )"]
        )
        return [line for line in result.stdout.splitlines() if line.strip()]


@contextmanager
def gateway(ns: Namespace, **settings: str) -> Iterator[Gateway]:
    """Start Redis and the ingest service (one worker) inside ``ns``."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    with ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="tgnet-"))
        )
        gw = Gateway(ns, workdir / "ingest.log")
        stack.callback(_stop_all, gw.processes)
        gw.processes.append(ns.popen(
            [redis_server, "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
             "--dir", str(workdir), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        ns.wait_for_port(REDIS_PORT)

        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
        env.update({
            "TRACKGATE_REDIS_URL": gw.redis_url, "TRACKGATE_HOST": "0.0.0.0",
            "TRACKGATE_PORT": str(TRACKER_PORT), "TRACKGATE_ADMIN_HOST": "127.0.0.1",
            "TRACKGATE_ADMIN_PORT": str(ADMIN_PORT), "TRACKGATE_WORKERS": "1",
            "TRACKGATE_LOG_LEVEL": "INFO",
        })  # fmt: skip
        env.update({f"TRACKGATE_{k.upper()}": v for k, v in settings.items()})
        log = stack.enter_context(gw.log_path.open("w"))
        gw.processes.append(ns.popen(
            [sys.executable, "-m", "trackgate", "ingest"], env=env, stdout=log,
        ))  # fmt: skip
        ns.wait_for_port(TRACKER_PORT, GATEWAY_IP, timeout=60)
        ns.wait_for_port(ADMIN_PORT, timeout=60)
        yield gw


def _stop_all(processes: list[subprocess.Popen[str]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Programs run inside the namespaces -------------------------------------------


def _wait(host: str, port: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return {"listening": True}
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return {"status": response.status, "body": response.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode()}


def _stored(redis_url: str) -> dict[str, int]:
    import redis

    from trackgate.core.keys import Keys

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    counts: dict[str, int] = {}
    for stream in Keys().all_records():
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
        for _id, entry in entries:
            key = f"{entry['imei']}:{entry['timestamp']}"
            counts[key] = counts.get(key, 0) + 1
    client.close()
    return counts


async def _command(redis_url: str, imei: str, text: str) -> dict[str, Any]:
    """Queue a command for ``imei`` as the API would; the gateway is woken."""
    from trackgate.core.commands import CommandStore, NewCommand
    from trackgate.core.keys import Keys
    from trackgate.core.redisconn import async_client

    client = async_client(redis_url)
    command, _created = await CommandStore(client, Keys()).enqueue(
        NewCommand(imei=imei, text=text)
    )
    await client.aclose()
    return {"id": command.id, "queued_at": time.time()}


async def _fleet(args: argparse.Namespace) -> dict[str, Any]:
    """Devices that resend unACKed packets; what each sent and got ACKed."""
    from trackgate.sim import SimDevice, imei_for, percentile

    devices = [
        SimDevice.with_records(
            imei_for(args.first_imei + i),
            args.packets,
            args.records,
            seed=i,
            response_timeout=args.response_timeout,
            interval=args.interval,
            reconnect_delays=(0.1, 0.2, 0.5, 1.0),
        )  # fmt: skip
        for i in range(args.devices)
    ]
    deadline = time.monotonic() + args.timeout
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(d.run(args.host, args.port, deadline=deadline) for d in devices),
        return_exceptions=True,
    )
    latencies = [x for d in devices for x in d.stats.ack_latencies]
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "failed": [repr(o) for o in outcomes if isinstance(o, BaseException)],
        "ack_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "ack_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "devices": [
            {
                "imei": d.imei,
                "sent": [r.timestamp for _frame, recs in d.packets for r in recs],
                "acked": d.stats.acked_timestamps,
                "connects": d.stats.connects,
                "resends": d.stats.resends,
            }
            for d in devices
        ],
    }


def _device(args: argparse.Namespace) -> None:
    """Log in, send packets, report them, then hold the connection open.

    Prints one JSON line once every packet was ACKed, then keeps the socket
    until stdin closes: the test decides when the device goes away.
    """
    from trackgate.protocol import encode_avl_packet, encode_imei
    from trackgate.sim import make_records

    sock = socket.create_connection((args.host, args.port), timeout=10)
    sock.sendall(encode_imei(args.imei))
    login = sock.recv(1)
    acked = 0
    start = int(time.time() * 1000) - 60_000
    for n in range(args.packets):
        records = make_records(1, start_ms=start + n * 1000 + args.offset_ms)
        sock.sendall(encode_avl_packet(0x8E, records))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        acked += int.from_bytes(answer, "big") if len(answer) == 4 else 0
    acked_at = time.time()
    # Let the kernel's delayed ACK of the server's last bytes go out, so the
    # server holds nothing unacknowledged when the test cuts the link.
    time.sleep(args.settle)
    print(json.dumps({
        "login": login.hex(), "acked": acked, "acked_at": acked_at,
        "local_port": sock.getsockname()[1],
    }), flush=True)  # fmt: skip
    sys.stdin.read()
    sock.close()


# TUN ioctl constants from <linux/if_tun.h>.
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
#: Largest IP packet read from a TUN device: the 64 KiB IP maximum, so even
#: GSO-sized packets are never cut.
_TUN_READ_SIZE = 65536


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(
        fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI)
    )
    return fd


async def _relay(args: argparse.Namespace) -> dict[str, int]:
    """Forward IP packets between two TUN devices, impaired like netem."""
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    stats = {"forwarded": 0, "dropped": 0, "reordered": 0}
    fds = (_open_tun(args.a), _open_tun(args.b))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def deliver(fd: int, packet: bytes) -> None:
        try:
            os.write(fd, packet)
        except OSError:
            stats["dropped"] += 1  # the device went away or its queue is full

    def forward(source: int, target: int) -> None:
        while True:
            try:
                packet = os.read(source, _TUN_READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if rng.random() * 100 < args.loss:
                stats["dropped"] += 1
                continue
            stats["forwarded"] += 1
            if rng.random() * 100 < args.reorder:
                stats["reordered"] += 1
                deliver(target, packet)
                continue
            delay = args.delay_ms + rng.uniform(-args.jitter_ms, args.jitter_ms)
            loop.call_later(max(delay, 0.0) / 1000, deliver, target, packet)

    loop.add_reader(fds[0], forward, fds[0], fds[1])
    loop.add_reader(fds[1], forward, fds[1], fds[0])
    print("ready", flush=True)
    await stop.wait()
    return stats


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns")
    sub = parser.add_subparsers(dest="program", required=True)
    wait = sub.add_parser("wait")
    wait.add_argument("host")
    wait.add_argument("port", type=int)
    wait.add_argument("timeout", type=float)
    sub.add_parser("get").add_argument("url")
    sub.add_parser("stored").add_argument("redis_url")
    fleet = sub.add_parser("fleet")
    device = sub.add_parser("device")
    for program in (fleet, device):
        program.add_argument("--host", default=GATEWAY_IP)
        program.add_argument("--port", type=int, default=TRACKER_PORT)
        program.add_argument("--packets", type=int, default=1)
    fleet.add_argument("--devices", type=int, default=10)
    fleet.add_argument("--records", type=int, default=4)
    fleet.add_argument("--first-imei", type=int, default=0)
    fleet.add_argument("--response-timeout", type=float, default=3.0)
    fleet.add_argument("--interval", type=float, default=0.05)
    fleet.add_argument("--timeout", type=float, default=120.0)
    device.add_argument("--imei", required=True)
    device.add_argument("--offset-ms", type=int, default=0)
    device.add_argument("--settle", type=float, default=0.5)
    command = sub.add_parser("command")
    command.add_argument("redis_url")
    command.add_argument("imei")
    command.add_argument("text")
    relay = sub.add_parser("relay")
    relay.add_argument("a")
    relay.add_argument("b")
    relay.add_argument("--loss", type=float, default=0.0)
    relay.add_argument("--delay-ms", type=float, default=0.0)
    relay.add_argument("--jitter-ms", type=float, default=0.0)
    relay.add_argument("--reorder", type=float, default=0.0)
    relay.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    result: Any
    if args.program == "wait":
        result = _wait(args.host, args.port, args.timeout)
    elif args.program == "get":
        result = _get(args.url)
    elif args.program == "stored":
        result = _stored(args.redis_url)
    elif args.program == "command":
        result = asyncio.run(_command(args.redis_url, args.imei, args.text))
    elif args.program == "fleet":
        result = asyncio.run(_fleet(args))
    elif args.program == "device":
        _device(args)
        return 0
    else:
        result = asyncio.run(_relay(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
