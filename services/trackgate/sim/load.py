"""Load modes of ``trackgate simulate``: throughput, storm, hold.

Each returns a JSON-ready summary. They open real TCP connections to the
gateway and measure from the device's side; the gateway's own view is in
its metrics.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from trackgate.core.limits import raise_fd_limit
from trackgate.protocol import encode_imei
from trackgate.sim import SimDevice, imei_for, percentile

Progress = Callable[[int], None]

#: A connect slower than this went through a SYN retransmission (the first
#: retransmit fires after 1 s): the SYN was dropped somewhere.
SYN_RETRANSMIT_S = 0.9


async def throughput(
    host: str,
    port: int,
    *,
    devices: int,
    packets: int,
    records: int,
    codec: int = 0x8E,
    concurrency: int | None = None,
    timeout: float = 300.0,
    progress: Progress | None = None,
    first_imei: int = 0,
    interval: float = 0.0,
) -> dict[str, Any]:
    """N devices each send M packets of K records; every ACK is checked."""
    raise_fd_limit()
    # One set of packets shared by the fleet: a device's records are unique
    # to it by IMEI, and encoding 20 records per packet per device would
    # make the simulator, not the gateway, the bottleneck.
    template = SimDevice.with_records(
        imei_for(first_imei), packets, records, codec=codec
    )
    fleet = [
        SimDevice(imei_for(first_imei + i), template.packets, interval=interval)
        for i in range(devices)
    ]
    limit = asyncio.Semaphore(concurrency or devices)
    deadline = time.monotonic() + timeout

    async def one(device: SimDevice) -> None:
        if interval:
            # Devices of a fleet are not in step: spread their first packets.
            await asyncio.sleep(random.uniform(0, interval))
        async with limit:
            await device.run(host, port, deadline=deadline)
        if progress is not None:
            progress(device.stats.records_acked)

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(d) for d in fleet), return_exceptions=True)
    elapsed = time.perf_counter() - started
    latencies = [x for d in fleet for x in d.stats.ack_latencies]
    acked = sum(d.stats.records_acked for d in fleet)
    return {
        "mode": "throughput",
        "devices": devices,
        "packets_per_device": packets,
        "records_per_packet": records,
        "records_sent": devices * packets * records,
        "records_acked": acked,
        "devices_failed": sum(isinstance(o, BaseException) for o in outcomes),
        "resends": sum(d.stats.resends for d in fleet),
        "reconnects": sum(max(d.stats.connects - 1, 0) for d in fleet),
        "seconds": round(elapsed, 3),
        "records_per_s": round(acked / elapsed, 1) if elapsed else 0.0,
        "ack_latency_ms": _latency_summary(latencies),
    }


async def storm(
    host: str,
    port: int,
    *,
    connections: int,
    concurrency: int = 500,
    handshake: bool = True,
    hold: float = 1.0,
    progress: Progress | None = None,
    first_imei: int = 0,
) -> dict[str, Any]:
    """Open N connections as fast as possible, as after a cell outage.

    Up to ``concurrency`` connects are in flight at once: enough to overflow
    any accept queue that is not drained, few enough that the time measured
    is the kernel's and the gateway's, not this process's own event loop
    working through thousands of callbacks.
    """
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    times: list[float] = []
    failures: dict[str, int] = {}
    handshakes = 0
    socks: list[socket.socket] = []
    done = 0

    in_flight = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        nonlocal handshakes, done
        async with in_flight:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            sock.setblocking(False)
            started = time.perf_counter()
            try:
                await loop.sock_connect(sock, (host, port))
                times.append(time.perf_counter() - started)
                if handshake:
                    imei = encode_imei(imei_for(first_imei + index))
                    await loop.sock_sendall(sock, imei)
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 1), 30)
                    handshakes += reply == b"\x01"
                socks.append(sock)
            except (OSError, TimeoutError) as exc:
                key = type(exc).__name__
                failures[key] = failures.get(key, 0) + 1
                sock.close()
        done += 1
        if progress is not None:
            progress(done)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(hold)
    for sock in socks:
        sock.close()
    return {
        "mode": "storm",
        "connections": connections,
        "connected": len(times),
        "handshakes": handshakes,
        "failures": failures,
        "seconds": round(elapsed, 3),
        "connect_ms": _latency_summary(times),
        "connects_over_0_9s": sum(t >= SYN_RETRANSMIT_S for t in times),
    }


async def hold(
    host: str,
    port: int,
    *,
    sessions: int,
    seconds: float,
    progress: Progress | None = None,
    first_imei: int = 0,
    on_held: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Open N sessions (IMEI accepted) and keep them idle for ``seconds``."""
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    refused = 0
    limit = asyncio.Semaphore(512)

    async def one(index: int) -> None:
        nonlocal refused
        async with limit:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError:  # out of file descriptors: counted, not fatal
                refused += 1
                return
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, port))
                await loop.sock_sendall(sock, encode_imei(imei_for(first_imei + index)))
                reply = await asyncio.wait_for(loop.sock_recv(sock, 1), 30)
            except (OSError, TimeoutError):
                refused += 1
                sock.close()
                return
            if reply != b"\x01":
                refused += 1
                sock.close()
                return
            socks.append(sock)
            if progress is not None:
                progress(len(socks))

    await asyncio.gather(*(one(i) for i in range(sessions)))
    extra = on_held() if on_held is not None else None
    await asyncio.sleep(seconds)
    for sock in socks:
        sock.close()
    summary: dict[str, Any] = {
        "mode": "hold",
        "sessions": sessions,
        "held": len(socks),
        "refused": refused,
        "seconds": seconds,
    }
    if extra is not None:
        summary["measured"] = extra
    return summary


def _latency_summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 2),
        "p90": round(percentile(values, 90) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "max": round(max(values, default=0.0) * 1000, 2),
    }
