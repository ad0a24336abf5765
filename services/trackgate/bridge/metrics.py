"""Prometheus metrics of the bridge, read from its counters at scrape time.

``export_metrics`` registers observable instruments on the shared telemetry
facade (``trackgate.core.telemetry``) that read ``BridgeStats`` when scraped,
and serves them on ``/metrics``. The worker only counts; it never touches
an instrument.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from trackgate.bridge.worker import BridgeStats
from trackgate.core.telemetry import Gauge, Telemetry

log = logging.getLogger("trackgate.bridge")

ATTR_STREAM = "stream"

#: Counters exported, as (attribute of BridgeStats, metric name, description).
_COUNTERS = (
    ("pushed", "trackgate.bridge.jobs_pushed", "Laravel jobs pushed"),
    ("acked", "trackgate.bridge.entries_acked", "Stream entries acknowledged"),
    ("dead_lettered", "trackgate.bridge.entries_dead_lettered",
     "Entries moved to the dead-letter stream"),
    ("claimed", "trackgate.bridge.entries_claimed",
     "Entries taken over from consumers idle too long"),
    ("vanished", "trackgate.bridge.entries_vanished",
     "Pending entries trimmed from the stream before delivery"),
    ("push_failures", "trackgate.bridge.push_failures",
     "Pushes to the Laravel queue that failed and were retried"),
    ("redis_errors", "trackgate.bridge.redis_errors",
     "Errors talking to the records streams' Redis"),
)  # fmt: skip


def export_metrics(stats: BridgeStats, port: int, host: str = "0.0.0.0") -> Telemetry:
    """Serve ``stats`` as Prometheus metrics on ``host:port``."""
    from prometheus_client import start_http_server

    telemetry = Telemetry("trackgate-bridge")
    for attribute, name, description in _COUNTERS:
        telemetry.counter(name, description, _reader(stats, attribute))
    telemetry.gauge(
        "trackgate.bridge.lag",
        "Entries of a stream not yet delivered to the group (XINFO GROUPS lag)",
        lambda: _per_stream(stats.lag),
    )
    telemetry.gauge(
        "trackgate.bridge.pending",
        "Entries delivered to the group but not yet acknowledged",
        lambda: _per_stream(stats.pending),
    )
    start_http_server(port, addr=host)
    log.info("bridge metrics on http://%s:%d/metrics", host, port)
    return telemetry


def _reader(stats: BridgeStats, attribute: str) -> Gauge:
    def read() -> Iterable[tuple[float, dict[str, str]]]:
        return [(float(getattr(stats, attribute)), {})]

    return read


def _per_stream(
    values: Mapping[str, int | None],
) -> list[tuple[float, dict[str, str]]]:
    return [
        (float(value), {ATTR_STREAM: stream})
        for stream, value in values.items()
        if value is not None
    ]
