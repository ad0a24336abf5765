"""Hostile peers against the real ingest service, on loopback.

Garbage before and after the login, half frames and silence, logins sent a
byte at a time, a 2 GiB length field, floods of connections that never
speak, more connections from one address than allowed. Each is refused the
way docs/ingest.md says: closed, counted in the metrics, logged a bounded
number of times; the worker's memory does not follow the bytes thrown at
it; and while all of it runs at once a well-behaved device keeps its ACK
latency. Figures are printed (``pytest -s``).

Peers use distinct loopback source addresses (127.0.0.0/8 is all local), so
per-address limits and log rate limits can be told apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import IngestProcess, RedisServer
from trackgate.ingest.session import MAX_BAD_FRAMES_IN_A_ROW
from trackgate.protocol import encode_avl_packet, encode_imei
from trackgate.sim import make_records

pytestmark = pytest.mark.slow

IMEI = "356307042449999"
#: Settings of the server under attack: short timeouts so a test sees them.
HANDSHAKE_S = 2.0
IDLE_S = 3.0
PER_IP = 300
#: The worker checks timeouts once a second; a close may come this late.
SWEEP_SLACK_S = 1.5
#: A well-behaved device's ACK p99 must stay under this while under attack,
#: and no ACK may wait as long as a SYN retransmission (1 s).
GOOD_P99_MS = 250.0
GOOD_MAX_MS = 1000.0
#: Packets the well-behaved device sends per measurement, one every 20 ms.
GOOD_PACKETS = 200
#: Bound on the worker's RSS growth while peers stream junk at it; buffering
#: what they send would cost the whole stream (tens of MiB and more).
RSS_GROWTH_MIB = 16


@pytest.fixture(scope="module")
def server(redis_proc: RedisServer) -> Iterator[IngestProcess]:
    ingest = IngestProcess(
        redis_proc.url,
        handshake_timeout_s=str(HANDSHAKE_S),
        idle_timeout_s=str(IDLE_S),
        max_connections_per_ip=str(PER_IP),
    )
    ingest.start()
    yield ingest
    ingest.stop()


# Reading the server -------------------------------------------------------------


def scrape(ingest: IngestProcess) -> str:
    url = f"http://127.0.0.1:{ingest.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of counter ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def healthz(ingest: IngestProcess) -> int:
    url = f"http://127.0.0.1:{ingest.admin_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Delta:
    """Counters of the server, before and after something happened."""

    ingest: IngestProcess
    before: str = ""
    after: str = ""

    def __enter__(self) -> Delta:
        self.before = scrape(self.ingest)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.after = scrape(self.ingest)

    def __call__(self, name: str, **labels: str) -> float:
        return metric(self.after, name, **labels) - metric(self.before, name, **labels)


# Blocking peers for the focused tests ---------------------------------------------


def connect(ingest: IngestProcess, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", ingest.port))
    return sock


def read_to_close(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic()
        received += chunk


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock``, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def avl_frame(seed: int = 0) -> bytes:
    records = make_records(2, start_ms=1_700_000_000_000 + seed * 10_000, seed=seed)
    return encode_avl_packet(0x8E, records)


def garbage(size: int, seed: int) -> bytes:
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] |= 0x80  # never a zero preamble byte, never a short IMEI length
    return bytes(data)


#: A frame header announcing 2**31 bytes of data.
HUGE_HEADER = b"\x00\x00\x00\x00" + (1 << 31).to_bytes(4, "big")


# Focused tests ------------------------------------------------------------------


def test_garbage_before_the_login_is_refused_counted_and_closed(
    server: IngestProcess,
) -> None:
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.40")
        sock.sendall(garbage(4096, seed=1))
        reply, _ = read_to_close(sock, 5)
        sock.close()
        time.sleep(0.2)

    # The refusal byte, then the close.
    assert reply == b"\x00"
    assert delta("trackgate_decode_errors_total", kind="bad_imei") == 1
    assert delta("trackgate_sessions_closed_total", reason="protocol_error") == 1


def test_garbage_after_a_valid_login_closes_the_connection(
    server: IngestProcess,
) -> None:
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.41")
        sock.sendall(encode_imei(IMEI))
        assert sock.recv(1) == b"\x01"
        sock.sendall(garbage(4096, seed=2))
        reply, _ = read_to_close(sock, 5)
        sock.close()
        time.sleep(0.2)

    assert reply == b""  # no ACK for anything
    assert delta("trackgate_decode_errors_total", kind="bad_preamble") == 1
    assert delta("trackgate_sessions_closed_total", reason="protocol_error") == 1
    assert delta("trackgate_records_total") == 0


def test_a_stream_of_bad_frames_is_closed_and_a_bad_frame_now_and_then_is_not(
    server: IngestProcess,
) -> None:
    bad = bytearray(avl_frame(seed=6))
    bad[-1] ^= 0xFF  # a CRC that never matches
    limit = MAX_BAD_FRAMES_IN_A_ROW
    with Delta(server) as delta:
        flood = connect(server, "127.0.0.44")
        flood.sendall(encode_imei(IMEI))
        assert flood.recv(1) == b"\x01"
        flood.sendall(bytes(bad) * (limit * 50))
        reply, _ = read_to_close(flood, 5)
        flood.close()
        # A device whose frames are sometimes damaged: each good one counts.
        device = connect(server, "127.0.0.45")
        device.sendall(encode_imei("356307042449998"))
        assert device.recv(1) == b"\x01"
        for seed in (7, 8):
            device.sendall(bytes(bad) * (limit - 1) + avl_frame(seed=seed))
            assert device.recv(4) == (2).to_bytes(4, "big")
        kept = not is_closed(device)
        device.close()
        time.sleep(0.2)

    assert reply == b""
    assert kept
    assert delta("trackgate_decode_errors_total", kind="crc_mismatch") == 3 * limit - 2
    assert delta("trackgate_sessions_closed_total", reason="protocol_error") == 1
    assert delta("trackgate_records_total") == 4


def test_half_a_frame_then_silence_is_closed_at_the_idle_timeout(
    server: IngestProcess,
) -> None:
    frame = avl_frame(seed=3)
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.42")
        sock.sendall(encode_imei(IMEI))
        assert sock.recv(1) == b"\x01"
        sock.sendall(frame[: len(frame) // 2])
        went_silent = time.monotonic()
        reply, closed_at = read_to_close(sock, IDLE_S + 10)
        sock.close()
        time.sleep(0.2)

    took = closed_at - went_silent
    print(f"half frame then silence: closed after {took:.2f} s (idle {IDLE_S} s)")
    assert reply == b""
    assert IDLE_S - 0.1 <= took <= IDLE_S + SWEEP_SLACK_S
    assert delta("trackgate_sessions_closed_total", reason="idle_timeout") == 1
    assert delta("trackgate_records_total") == 0


def test_half_a_login_then_silence_is_closed_at_the_handshake_timeout(
    server: IngestProcess,
) -> None:
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.43")
        opened = time.monotonic()
        sock.sendall(encode_imei(IMEI)[:5])
        reply, closed_at = read_to_close(sock, HANDSHAKE_S + 10)
        sock.close()
        time.sleep(0.2)

    took = closed_at - opened
    print(f"half login then silence: closed after {took:.2f} s")
    assert reply == b""
    assert HANDSHAKE_S - 0.1 <= took <= HANDSHAKE_S + SWEEP_SLACK_S
    assert delta("trackgate_sessions_closed_total", reason="handshake_timeout") == 1


def test_a_login_sent_one_byte_a_second_is_cut_at_the_handshake_timeout(
    server: IngestProcess,
) -> None:
    login = encode_imei(IMEI)  # 17 bytes: 17 s at one byte a second
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.44")
        opened = time.monotonic()
        sent = 0
        closed = False
        sock.settimeout(1.0)
        while sent < len(login) and not closed:
            try:
                sock.sendall(login[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            try:
                reply = sock.recv(16)
            except TimeoutError:
                continue
            except ConnectionResetError:
                reply = b""
            assert reply != b"\x01", "a slowloris login was accepted"
            closed = reply == b""
        took = time.monotonic() - opened
        sock.close()
        time.sleep(0.2)

    print(f"slowloris login: cut after {took:.2f} s and {sent} of {len(login)} bytes")
    assert sent < len(login)
    assert took <= HANDSHAKE_S + SWEEP_SLACK_S + 1.0
    assert delta("trackgate_sessions_closed_total", reason="handshake_timeout") == 1


def test_a_length_field_of_2_31_is_refused_before_anything_is_buffered(
    server: IngestProcess,
) -> None:
    with Delta(server) as delta:
        sock = connect(server, "127.0.0.45")
        sock.sendall(encode_imei(IMEI))
        assert sock.recv(1) == b"\x01"
        sock.sendall(HUGE_HEADER + b"\x8e\x01")
        reply, _ = read_to_close(sock, 5)
        sock.close()
        time.sleep(0.2)

    assert reply == b""
    assert delta("trackgate_decode_errors_total", kind="frame_too_large") == 1
    assert delta("trackgate_sessions_closed_total", reason="protocol_error") == 1


def test_connections_over_the_per_address_limit_are_refused_and_counted(
    server: IngestProcess,
) -> None:
    raise_fd_limit()
    extra = 25
    with Delta(server) as delta:
        socks = [connect(server, "127.0.0.46") for _ in range(PER_IP + extra)]
        # Each refused connection is closed by the server at once; the others
        # stay open until the handshake timeout.
        time.sleep(0.5)
        closed = sum(is_closed(sock) for sock in socks)
        # Another address is not affected.
        other = connect(server, "127.0.0.47")
        other.sendall(encode_imei(IMEI))
        other_reply = other.recv(1)
        for sock in [*socks, other]:
            sock.close()
        time.sleep(0.3)

    assert closed == extra
    assert other_reply == b"\x01"
    refused = delta(
        "trackgate_connections_refused_total", reason="max_connections_per_ip"
    )
    assert refused == extra


async def test_worker_memory_does_not_follow_a_stream_of_junk(
    server: IngestProcess,
) -> None:
    (worker,) = server.worker_pids()
    before = rss_kib(worker)
    frame = bytearray(avl_frame(seed=4))
    frame[-1] ^= 0xFF  # a CRC that never matches: dropped, then too many
    bad_crc = bytes(frame) * 64
    links = {"bad_crc": 0, "oversized": 0, "garbage": 0}
    stop = time.monotonic() + 5.0

    async def one_link(kind: str, payload: bytes, login: str | None) -> None:
        while time.monotonic() < stop:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, local_addr=("127.0.0.48", 0)
            )
            try:
                if login is not None:
                    writer.write(encode_imei(login))
                    await reader.readexactly(1)
                links[kind] += 1
                while time.monotonic() < stop:
                    writer.write(payload)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

    peak = before
    metrics_before = await asyncio.to_thread(scrape, server)
    flood = asyncio.gather(
        # Distinct IMEIs: a second login of one IMEI would replace the first.
        one_link("bad_crc", bad_crc, login="356307042440101"),
        one_link("oversized", HUGE_HEADER + bytes(256 * 1024), "356307042440102"),
        one_link("garbage", garbage(256 * 1024, seed=5), login=None),
    )
    while not flood.done():
        await asyncio.sleep(0.2)
        peak = max(peak, rss_kib(worker))
    await flood
    await asyncio.sleep(0.3)
    delta = Delta(server, metrics_before, await asyncio.to_thread(scrape, server))

    growth_mib = (peak - before) / 1024
    errors = {
        kind: delta("trackgate_decode_errors_total", kind=kind)
        for kind in ("crc_mismatch", "frame_too_large", "bad_imei")
    }
    # Every link is cut after its first bad chunk (bad-CRC ones after a few
    # frames) and comes back: the worker took in thousands of junk chunks.
    print(
        f"junk links: {json.dumps(links)}; decode errors "
        f"{json.dumps(errors)}; worker RSS {before / 1024:.1f} -> peak "
        f"{peak / 1024:.1f} MiB"
    )
    assert growth_mib < RSS_GROWTH_MIB
    assert errors["crc_mismatch"] >= 100 * MAX_BAD_FRAMES_IN_A_ROW
    assert errors["frame_too_large"] >= 100
    assert errors["bad_imei"] >= 100


# Everything at once, and a good device in the middle of it -------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def good_device(
    ingest: IngestProcess, first_imei: int, packets: int = GOOD_PACKETS
) -> dict[str, float]:
    """A tracker sending a packet every 20 ms; its ACK latencies in ms."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trackgate", "simulate", "fleet",
        "--port", str(ingest.port), "--devices", "1",
        "--packets", str(packets), "--records", "1", "--interval", "0.02",
        "--first-imei", str(first_imei), "--timeout", "60",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["records_acked"] == packets
    latency: dict[str, float] = summary["ack_latency_ms"]
    return latency


Attack = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Siege:
    """Hostile peers that run until ``stop`` is set; what they did."""

    port: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    async def open(
        self, source: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(source, 0)
        )

    async def until_closed(self, reader: asyncio.StreamReader) -> None:
        """Wait for the server to close; give up when the siege ends."""
        read = asyncio.ensure_future(reader.read())
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([read, stop], return_when=asyncio.FIRST_COMPLETED)
        for future in (read, stop):
            future.cancel()

    async def loop(self, name: str, source: str, attack: Attack) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await self.open(source)
            except OSError:
                self.count(f"{name}_connect_failed")
                await asyncio.sleep(0.1)
                continue
            try:
                await attack(reader, writer)
                self.count(name)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.count(name)
            finally:
                writer.close()
            await asyncio.sleep(0.02)

    async def silent(self, sources: list[str], per_source: int) -> None:
        """Connections that never say a word, held until the server closes them."""
        gate = asyncio.Semaphore(200)  # do not overflow the accept queue

        async def hold(source: str) -> None:
            async with gate:
                try:
                    reader, writer = await self.open(source)
                except OSError:
                    self.count("silent_connect_failed")
                    return
            self.count("silent")
            await reader.read()
            self.count("silent_closed_by_server")
            writer.close()

        await asyncio.gather(*(hold(s) for s in sources for _ in range(per_source)))

    async def garbage_first(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:  # fmt: skip
        writer.write(garbage(64 * 1024, seed=6))
        await reader.read()

    async def login_then_garbage(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        writer.write(encode_imei("356307042440201"))
        await reader.readexactly(1)
        writer.write(garbage(64 * 1024, seed=7))
        await reader.read()

    async def oversized(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:  # fmt: skip
        writer.write(encode_imei("356307042440202"))
        await reader.readexactly(1)
        writer.write(HUGE_HEADER + bytes(64 * 1024))
        await reader.read()

    async def bad_crc(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:  # fmt: skip
        frame = bytearray(avl_frame(seed=8))
        frame[-1] ^= 0xFF
        writer.write(encode_imei("356307042440203"))
        await reader.readexactly(1)
        for _ in range(20):
            writer.write(bytes(frame) * 50)
            await writer.drain()
            await asyncio.sleep(0.01)

    async def slowloris(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:  # fmt: skip
        for byte in encode_imei(IMEI):
            if self.stop.is_set() or reader.at_eof():
                return
            writer.write(bytes((byte,)))
            await asyncio.sleep(1.0)

    async def too_many(self, source: str, count: int) -> None:
        """More connections from one address than it may hold, held a while."""
        writers = []
        for _ in range(count):
            try:
                _reader, writer = await self.open(source)
            except OSError:
                self.count("too_many_connect_failed")
                continue
            writers.append(writer)
        self.count("too_many", len(writers))
        await self.stop.wait()
        for writer in writers:
            writer.close()


async def test_hostile_peers_at_once_leave_a_good_device_its_latency(
    redis_proc: RedisServer,
) -> None:
    raise_fd_limit()
    per_ip = 1200
    # Long enough for the first measurement to end before the silent
    # thousands expire together; the second one spans that moment.
    handshake_s = 12.0
    ingest = IngestProcess(
        redis_proc.url, handshake_timeout_s=str(handshake_s),
        idle_timeout_s=str(handshake_s), max_connections_per_ip=str(per_ip),
    )  # fmt: skip
    await asyncio.to_thread(ingest.start)
    try:
        (worker,) = ingest.worker_pids()
        rss_before = rss_kib(worker)
        calm = await good_device(ingest, first_imei=7000)
        metrics_before = await asyncio.to_thread(scrape, ingest)

        siege = Siege(ingest.port)
        silent = asyncio.create_task(siege.silent(
            ["127.0.0.10", "127.0.0.11", "127.0.0.12"], per_source=1000
        ))  # fmt: skip
        attacks = [
            siege.loop("garbage_first", "127.0.0.20", siege.garbage_first),
            siege.loop("login_then_garbage", "127.0.0.21", siege.login_then_garbage),
            siege.loop("oversized", "127.0.0.22", siege.oversized),
            siege.loop("bad_crc", "127.0.0.23", siege.bad_crc),
            *(siege.loop("slowloris", "127.0.0.24", siege.slowloris)
              for _ in range(50)),
            siege.too_many("127.0.0.25", per_ip + 100),
        ]  # fmt: skip
        attackers = [asyncio.create_task(attack) for attack in attacks]
        # Let the silent thousands arrive before measuring.
        await asyncio.sleep(1.0)
        health: list[int] = []
        rss_peak = rss_kib(worker)
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal rss_peak
            while not done.is_set():
                health.append(await asyncio.to_thread(healthz, ingest))
                rss_peak = max(rss_peak, rss_kib(worker))
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        besieged = await good_device(ingest, first_imei=7100)
        siege.stop.set()
        await asyncio.gather(*attackers)
        expiring = await good_device(ingest, first_imei=7200, packets=450)
        await asyncio.wait_for(silent, timeout=30)
        done.set()
        await watcher
        await asyncio.sleep(0.5)
        metrics_after = await asyncio.to_thread(scrape, ingest)
        after_health = await asyncio.to_thread(healthz, ingest)
    finally:
        await asyncio.to_thread(ingest.stop)
    log = ingest.log()

    def delta(name: str, **labels: str) -> int:
        return int(
            metric(metrics_after, name, **labels)
            - metric(metrics_before, name, **labels)
        )

    warnings = [line for line in log.splitlines() if " WARNING " in line]
    decode_errors = {
        kind: delta("trackgate_decode_errors_total", kind=kind)
        for kind in ("bad_imei", "bad_preamble", "frame_too_large", "crc_mismatch")
    }
    handshake_timeouts = delta(
        "trackgate_sessions_closed_total", reason="handshake_timeout"
    )
    refused = delta(
        "trackgate_connections_refused_total", reason="max_connections_per_ip"
    )
    print("siege:", json.dumps({
        "good_ack_ms_calm": calm, "good_ack_ms_besieged": besieged,
        "good_ack_ms_while_3000_expire": expiring,
        "hostile_connections": siege.counts, "decode_errors": decode_errors,
        "handshake_timeouts": handshake_timeouts, "refused_per_ip": refused,
        "warning_lines": len(warnings),
        "info_lines": sum(" INFO " in line for line in log.splitlines()),
        "rss_mib": [round(rss_before / 1024, 1), round(rss_peak / 1024, 1)],
        "healthz": sorted(set(health)),
    }))  # fmt: skip

    assert besieged["p99"] < GOOD_P99_MS
    assert besieged["max"] < GOOD_MAX_MS
    # Thousands of connections closed in one sweep stall the worker for a
    # moment (docs/ingest.md); never as long as a SYN retransmission.
    assert expiring["max"] < GOOD_MAX_MS
    assert health and set(health) == {200}
    assert after_health == 200
    # Every kind of abuse was seen and counted.
    assert siege.counts["silent"] == 3000
    assert siege.counts["silent_closed_by_server"] == 3000
    assert handshake_timeouts >= 3000
    for kind, count in decode_errors.items():
        assert count > 0, kind
    assert refused == 100
    # ...and logged a bounded number of times: the log limiter allows five
    # lines per (kind, address) a minute; seven such keys here.
    assert len(warnings) <= 7 * 5 + 5, "\n".join(warnings[:50])
    assert (rss_peak - rss_before) / 1024 < 64
