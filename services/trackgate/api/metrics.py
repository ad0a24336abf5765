"""The API's own metrics and the middleware that measures every request.

Instruments live in prometheus_client's default registry, so ``/metrics``
also shows whatever else the process registered there (the OpenTelemetry
Prometheus reader of ``trackgate.core.telemetry`` among them). Labels are
route templates (``/v1/devices/{imei}``), never raw paths, so that the
number of series stays bounded whatever clients request.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds; API calls are one or a few Redis round trips (sub-millisecond to
#: a few ms), records scans and diagnostics take up to seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip

REQUESTS = Counter(
    "trackgate_api_requests",
    "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "trackgate_api_request_seconds",
    "Time to answer an HTTP request (live streams excluded)",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter(
    "trackgate_api_errors", "Error responses, by stable error code", ["code"]
)
AUTH_FAILURES = Counter(
    "trackgate_api_auth_failures",
    "Requests refused by authentication, by reason",
    ["reason"],
)
COMMANDS_QUEUED = Counter(
    "trackgate_api_commands_queued", "Commands queued for devices, by codec", ["codec"]
)
RATE_LIMITED = Counter(
    "trackgate_api_commands_rate_limited",
    "Command submissions refused by the per-device rate limit",
)
LIVE_STREAMS = Gauge("trackgate_api_live_streams", "Live event streams open now")

#: Routes whose responses are streams: their duration is not a latency.
STREAMING_ROUTES = frozenset({"/v1/devices/{imei}/events"})


class MetricsMiddleware:
    """Counts and times each HTTP request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            REQUESTS.labels(method, template, str(status)).inc()
            if template not in STREAMING_ROUTES:
                LATENCY.labels(method, template).observe(time.perf_counter() - started)
