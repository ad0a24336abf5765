"""The FastAPI application: built from settings, wired at start-up.

``create_app`` validates what can be checked before serving (the token
file above all: a missing or malformed file stops the process with a clear
message) and registers routers, error handlers, the request body limit and
the metrics middleware; the lifespan opens the Redis client on the serving
event loop and closes it at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from trackgate.api import errors
from trackgate.api.auth import TokenBook, TokenFileError
from trackgate.api.bodylimit import BodyLimitMiddleware
from trackgate.api.metrics import MetricsMiddleware
from trackgate.api.routes import api_routers, health
from trackgate.api.settings import ApiSettings, load_settings
from trackgate.core.commands import CommandStore
from trackgate.core.redisconn import async_client

log = logging.getLogger("trackgate.api")

#: Seconds a Redis call may take before the request fails with 503; longer
#: than a blocking XREAD of a live stream (1 s), far shorter than a client's
#: patience.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0


class ApiConfigError(Exception):
    """The settings do not allow the API to start."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The application for ``settings`` (read from the environment if None)."""
    settings = settings or load_settings()
    if settings.api_tokens_file is None:
        raise ApiConfigError(
            "TRACKGATE_API_TOKENS_FILE is not set: the API serves nothing without "
            "tokens (see docs/api.md)"
        )
    try:
        tokens = TokenBook(settings.api_tokens_file)
    except TokenFileError as exc:
        raise ApiConfigError(str(exc)) from exc
    keys = settings.keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        )
        app.state.redis = client
        app.state.commands = CommandStore(
            client, keys, retention_s=settings.api_command_retention_s
        )
        log.info("api ready, redis %s, pod %s", _redacted(settings.redis_url),
                 settings.pod_name)  # fmt: skip
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(
        title="trackgate API",
        version="1",
        summary="Device status, records and commands of a trackgate gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.keys = keys
    app.state.live_streams = 0
    errors.install(app)
    # Added first, so it runs inside the metrics middleware: a refused body
    # is counted and timed like any other answer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    for router in api_routers():
        app.include_router(router)
    return app


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"
