"""``trackgate simulate``: simulated devices against a running gateway."""

from __future__ import annotations

import enum
import json
import sys
from typing import Annotated, Any

import typer


class Mode(enum.StrEnum):
    fleet = "fleet"
    throughput = "throughput"
    storm = "storm"
    hold = "hold"


def register(app: typer.Typer) -> None:
    app.command(name="simulate")(simulate)


def simulate(
    mode: Annotated[
        Mode, typer.Argument(help="fleet, throughput, storm or hold")
    ] = Mode.fleet,
    host: Annotated[str, typer.Option(help="Gateway address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway tracker port")] = 5027,
    devices: Annotated[int, typer.Option(help="Devices (fleet, throughput)")] = 5,
    packets: Annotated[int, typer.Option(help="Packets per device")] = 10,
    records: Annotated[int, typer.Option(help="Records per packet")] = 3,
    interval: Annotated[
        float, typer.Option(help="Seconds between packets (fleet)")
    ] = 2.0,
    codec: Annotated[str, typer.Option(help="8, 8E or 16")] = "8E",
    connections: Annotated[int, typer.Option(help="Connections (storm)")] = 1000,
    sessions: Annotated[int, typer.Option(help="Idle sessions (hold)")] = 1000,
    seconds: Annotated[float, typer.Option(help="How long to hold (hold)")] = 10.0,
    first_imei: Annotated[int, typer.Option(help="Offset of the first IMEI")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Give up after this many seconds")
    ] = 300.0,
    warmup: Annotated[
        float,
        typer.Option(
            help="Seconds at the start whose ACK latencies are also left out "
            "of a separate steady-state figure (fleet, throughput)"
        ),
    ] = 0.0,
) -> None:
    """Send simulated Teltonika devices to a gateway and print a JSON summary.

    fleet: a few devices sending records every INTERVAL seconds (see them with
    `trackgate records`). throughput: N devices x M packets x K records as fast
    as ACKs come. storm: N connections at once, connect times and IMEI reply
    times measured (a connect >= 0.9 s means a SYN was dropped and
    retransmitted). hold: N idle sessions kept open.
    """
    import asyncio
    import socket

    from rich.progress import Progress

    from trackgate.sim import load
    from trackgate.sim.load import throughput

    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        typer.echo(f"no gateway at {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    codec_id = {"8": 0x08, "8E": 0x8E, "8e": 0x8E, "16": 0x10}.get(codec)
    if codec_id is None:
        typer.echo(f"unknown codec {codec!r}: use 8, 8E or 16", err=True)
        raise typer.Exit(2)
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
                )
            except load.LoadError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(2) from exc
        else:
            try:
                import uvloop
            except ImportError:
                summary = asyncio.run(run(advance))
            else:
                summary = uvloop.run(run(advance))
    summary["mode"] = mode.value
    typer.echo(json.dumps(summary, indent=2))
    failed = summary.get("devices_failed") or summary.get("refused")
    raise typer.Exit(1 if failed else 0)
