"""``trackgate simulate``: simulated devices against a running gateway."""

from __future__ import annotations

import enum
import json
import math
import sys
import time
from typing import Annotated, Any

import typer


class Mode(enum.StrEnum):
    fleet = "fleet"
    throughput = "throughput"
    storm = "storm"
    hold = "hold"


_NAME = "trackgate simulate"

#: The simulated IMEIs stay 15 digits for offsets below this.
_FIRST_IMEI_LIMIT = 10**14

#: How long the first connect may take before there is no gateway: time for
#: two SYN retransmissions (1 s, then 3 s), shortened to --timeout.
_REACH_S = 5.0

#: How long fleet and throughput run at most, unless --timeout says.
RUN_TIMEOUT_S = 300.0


def register(app: typer.Typer) -> None:
    app.command(name="simulate")(simulate)


def _finite(value: float) -> float:
    # No range refuses inf, and nan is false in every comparison.
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number of seconds")
    return value


def _positive(value: float) -> float:
    if _finite(value) <= 0:
        raise typer.BadParameter(f"{value} is not above 0 seconds")
    return value


def _positive_or_default(value: float | None) -> float | None:
    return None if value is None else _positive(value)


def simulate(
    mode: Annotated[
        Mode, typer.Argument(help="fleet, throughput, storm or hold")
    ] = Mode.fleet,
    host: Annotated[str, typer.Option(help="Gateway address")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Gateway tracker port")
    ] = 5027,
    devices: Annotated[
        int, typer.Option(min=1, help="Devices (fleet, throughput)")
    ] = 5,
    packets: Annotated[int, typer.Option(min=1, help="Packets per device")] = 10,
    records: Annotated[
        int,
        typer.Option(
            min=1,
            max=255,
            help="Records per packet; a packet also fits in 1280 bytes: "
            "23 records at most in codec 8, 20 in 16, 14 in 8E",
        ),
    ] = 3,
    interval: Annotated[
        float,
        typer.Option(min=0, callback=_finite, help="Seconds between packets (fleet)"),
    ] = 2.0,
    codec: Annotated[str, typer.Option(help="8, 8E or 16")] = "8E",
    connections: Annotated[int, typer.Option(min=1, help="Connections (storm)")] = 1000,
    sessions: Annotated[int, typer.Option(min=1, help="Idle sessions (hold)")] = 1000,
    seconds: Annotated[
        float, typer.Option(min=0, callback=_finite, help="How long to hold (hold)")
    ] = 10.0,
    first_imei: Annotated[
        int,
        typer.Option(min=0, max=_FIRST_IMEI_LIMIT - 1, help="Offset of the first IMEI"),
    ] = 0,
    timeout: Annotated[
        float | None,
        typer.Option(
            callback=_positive_or_default,
            show_default=False,
            help="Give up after this many seconds: fleet and throughput as a "
            "whole, no connect, wait for a reply or pause outlasting it "
            "(default 300); storm and hold per connection, connect and login "
            "(default 30)",
        ),
    ] = None,
    warmup: Annotated[
        float,
        typer.Option(
            min=0,
            callback=_finite,
            help="Seconds at the start whose ACK latencies are also left out "
            "of a separate steady-state figure (fleet, throughput)",
        ),
    ] = 0.0,
) -> None:
    """Send simulated Teltonika devices to a gateway and print a JSON summary.

    fleet: a few devices sending records every INTERVAL seconds (see them with
    `trackgate records`). throughput: N devices x M packets x K records as fast
    as ACKs come. storm: N connections at once, connect times and IMEI reply
    times measured (a connect >= 0.9 s means a SYN was dropped and
    retransmitted). hold: N idle sessions kept open; those the gateway
    closes meanwhile are counted lost.

    Latencies without a single sample are null. Exit status: 0 done, 1
    devices failed, sessions were refused or lost, or storm connections
    failed, 2 an invalid option or
    no gateway at the address (nothing answered a connect).
    """
    import asyncio
    import socket

    from rich.progress import Progress

    from trackgate.sim import DEVICE_MAX_PACKET, load, max_records_per_packet
    from trackgate.sim.load import throughput

    codec_id = {"8": 0x08, "8E": 0x8E, "8e": 0x8E, "16": 0x10}.get(codec)
    if codec_id is None:
        typer.echo(f"{_NAME}: unknown codec {codec!r}: use 8, 8E or 16", err=True)
        raise typer.Exit(2)
    fits = max_records_per_packet(codec_id)
    if mode in (Mode.fleet, Mode.throughput) and records > fits:
        typer.echo(
            f"{_NAME}: --records {records} does not fit one packet: "
            f"{DEVICE_MAX_PACKET} bytes of codec {codec} hold at most {fits} "
            "simulated records",
            err=True,
        )
        raise typer.Exit(2)
    started = time.monotonic()
    timed = mode in (Mode.fleet, Mode.throughput)
    if timeout is None:
        timeout = RUN_TIMEOUT_S if timed else load.STORM_TIMEOUT_S
    reach = min(_REACH_S, timeout)
    try:
        socket.create_connection((host, port), timeout=reach).close()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, TimeoutError):
            why = f"no answer in {reach:g} s"
        _no_gateway(host, port, why)
        raise typer.Exit(2) from exc
    if timed:
        timeout -= time.monotonic() - started
    total = {
        Mode.fleet: devices * packets * records,
        Mode.throughput: devices * packets * records,
        Mode.storm: connections,
        Mode.hold: sessions,
    }[mode]

    async def run(advance: Any) -> dict[str, Any]:
        if mode is Mode.hold:
            return await load.hold(
                host,
                port,
                sessions=sessions,
                seconds=seconds,
                progress=advance,
                first_imei=first_imei,
                login_timeout=timeout,
            )
        return await throughput(
            host,
            port,
            devices=devices,
            packets=packets,
            records=records,
            codec=codec_id,
            timeout=timeout,
            progress=advance,
            first_imei=first_imei,
            interval=interval if mode is Mode.fleet else 0.0,
            warmup=warmup,
        )

    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task(mode.value, total=total)
        done = [0]

        def advance(value: int) -> None:
            if mode in (Mode.storm, Mode.hold):
                bar.update(task, completed=value)
            else:
                done[0] += value
                bar.update(task, completed=done[0])

        if mode is Mode.storm:
            # A blocking selector loop: no event loop between the kernel
            # and the connect times it measures.
            try:
                summary = load.storm(
                    host,
                    port,
                    connections=connections,
                    progress=advance,
                    first_imei=first_imei,
                    timeout=timeout,
                )
            except load.LoadError as exc:
                typer.echo(f"{_NAME}: {exc}", err=True)
                raise typer.Exit(2) from exc
        else:
            try:
                import uvloop
            except ImportError:
                summary = asyncio.run(run(advance))
            else:
                summary = uvloop.run(run(advance))
    if summary.get("devices_connected") == 0:
        failures = ", ".join(
            f"{kind} x{count}" for kind, count in summary["connect_failures"].items()
        )
        _no_gateway(
            host, port, f"no device connected in {summary['seconds']} s ({failures})"
        )
        raise typer.Exit(2)
    summary["mode"] = mode.value
    typer.echo(json.dumps(summary, indent=2))
    failed = (
        summary.get("devices_failed")
        or summary.get("refused")
        or summary.get("lost")
        or summary.get("timed_out")
        or summary.get("failures")  # storm: connects or logins that failed
    )
    raise typer.Exit(1 if failed else 0)


def _no_gateway(host: str, port: int, why: str) -> None:
    typer.echo(
        f"{_NAME}: no gateway at {host}:{port} (--host, --port): {why}", err=True
    )
