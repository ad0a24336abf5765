"""``trackgate ingest``: run the tracker-facing service."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command(name="ingest")(ingest)


def ingest(
    host: Annotated[
        str | None, typer.Option(help="Listen address [TRACKGATE_HOST]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Tracker port, TCP+UDP [TRACKGATE_PORT]")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [TRACKGATE_REDIS_URL]")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes, 0 = CPUs [TRACKGATE_WORKERS]")
    ] = None,
    admin_port: Annotated[
        int | None, typer.Option(help="Admin HTTP port, 0 = off [TRACKGATE_ADMIN_PORT]")
    ] = None,
    backlog: Annotated[
        int | None,
        typer.Option(help="Listen backlog, 0 = somaxconn [TRACKGATE_BACKLOG]"),
    ] = None,
    key_prefix: Annotated[
        str | None, typer.Option(help="Redis key prefix [TRACKGATE_KEY_PREFIX]")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level [TRACKGATE_LOG_LEVEL]")
    ] = None,
) -> None:
    """Serve Teltonika devices on TCP and UDP and store their records in Redis.

    Every setting can also come from the environment (TRACKGATE_*); flags win.
    docs/configuration.md lists all of them.
    """
    import asyncio

    from trackgate.cli import _settings
    from trackgate.core import logs
    from trackgate.ingest.settings import IngestSettings
    from trackgate.ingest.supervisor import Supervisor

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "redis_url": redis_url,
        "workers": workers,
        "admin_port": admin_port,
        "backlog": backlog,
        "key_prefix": key_prefix,
        "log_level": log_level,
    }
    options = {name: "--" + name.replace("_", "-") for name in given}
    settings = _settings.load(IngestSettings, "ingest", given, options)
    logs.configure(settings.log_level, settings.log_format)
    code = asyncio.run(Supervisor(settings).run())
    raise typer.Exit(code)
