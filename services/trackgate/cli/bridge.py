"""``trackgate bridge laravel``: feed a Laravel Redis queue from the streams.

Reads ``TRACKGATE_*`` settings (flags override them), runs the bridge until
SIGTERM or SIGINT, and with ``--stop-when-empty`` until every shard has
nothing left (a backfill, a test, a benchmark). The bridge itself lives in
``trackgate.bridge``; this module only wires settings, logging and signals.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

bridge_app = typer.Typer(
    help="Consumers that forward the records streams to other systems.",
    no_args_is_help=True,
)


@bridge_app.command("laravel")
def laravel(
    job: Annotated[
        str | None,
        typer.Option(
            help="PHP handler, App\\Jobs\\Ingest@handle [TRACKGATE_LARAVEL_JOB]"
        ),
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="Laravel queue name [TRACKGATE_LARAVEL_QUEUE]")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="record or packet [TRACKGATE_BRIDGE_MODE]")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group [TRACKGATE_BRIDGE_GROUP]")
    ] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name [TRACKGATE_BRIDGE_CONSUMER]")
    ] = None,
    stop_when_empty: Annotated[
        bool, typer.Option(help="Exit once every shard has been read empty.")
    ] = False,
) -> None:
    """Push one Laravel queue job per record (or packet), then ack the entry.

    Delivery is at least once: after a crash between push and ack the same
    records are pushed again, and the job's data carries the stream entry
    id so the Laravel side can drop duplicates. See docs/laravel-bridge.md.
    """
    import asyncio
    import logging
    import signal

    from trackgate.bridge import BridgeConfigError, BridgeSettings, build_bridge
    from trackgate.cli import _settings

    flags: dict[str, Any] = {
        "laravel_job": job, "laravel_queue": queue, "bridge_mode": mode,
        "bridge_group": group, "bridge_consumer": consumer,
    }  # fmt: skip
    options = {
        "laravel_job": "--job", "laravel_queue": "--queue", "bridge_mode": "--mode",
        "bridge_group": "--group", "bridge_consumer": "--consumer",
    }  # fmt: skip
    settings = _settings.load(BridgeSettings, "bridge laravel", flags, options)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def main() -> int:
        try:
            bridge = build_bridge(settings, stop_when_empty=stop_when_empty)
        except BridgeConfigError as exc:
            typer.echo(f"cannot start the bridge: {exc}", err=True)
            return 2
        if settings.bridge_metrics_port:
            from trackgate.bridge.metrics import export_metrics

            try:
                export_metrics(bridge.stats, settings.bridge_metrics_port)
            except OSError as exc:
                await bridge.aclose()
                typer.echo(
                    f"cannot serve metrics on port {settings.bridge_metrics_port} "
                    f"(TRACKGATE_BRIDGE_METRICS_PORT): {exc.strerror or exc}",
                    err=True,
                )
                return 2
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, bridge.stop)
        try:
            stats = await bridge.run()
        except BridgeConfigError as exc:
            typer.echo(f"bridge stopped: {exc}", err=True)
            return 2
        finally:
            await bridge.aclose()
        typer.echo(
            f"pushed {stats.pushed} jobs, acked {stats.acked} entries, "
            f"dead-lettered {stats.dead_lettered}"
        )
        return 0

    raise typer.Exit(asyncio.run(main()))


def register(app: typer.Typer) -> None:
    app.add_typer(bridge_app, name="bridge")
