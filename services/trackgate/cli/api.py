"""``trackgate api``: serve the API sidecar with uvicorn.

Flags override the ``TRACKGATE_*`` environment (docs/api.md lists both).
The application and uvicorn are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("api")(serve_api)


def serve_api(
    host: Annotated[
        str | None, typer.Option(help="Listen address [env TRACKGATE_API_HOST].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port [env TRACKGATE_API_PORT].")
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="Bearer tokens file [env TRACKGATE_API_TOKENS_FILE]."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [env TRACKGATE_REDIS_URL].")
    ] = None,
) -> None:
    """Serve device status, records, commands and diagnostics over HTTP."""
    import uvicorn

    from trackgate.api.main import ApiConfigError, create_app
    from trackgate.api.settings import ApiSettings
    from trackgate.cli import _settings
    from trackgate.core import logs

    settings = _settings.load(
        ApiSettings,
        "api",
        {"api_host": host, "api_port": port, "api_tokens_file": tokens_file,
         "redis_url": redis_url},
        {"api_host": "--host", "api_port": "--port",
         "api_tokens_file": "--tokens-file", "redis_url": "--redis-url"},
    )  # fmt: skip
    logs.configure(settings.log_level, settings.log_format)
    try:
        application = create_app(settings)
    except ApiConfigError as exc:
        _settings.refuse("api", [str(exc)])
    uvicorn.run(
        application,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )
