"""Metrics and traces: the only module that imports OpenTelemetry.

Services call the small :class:`Telemetry` facade; instruments are created
once, attribute names are constants, and the exported names are the ones the
Grafana dashboard and ``docs/deploy.md`` list (``trackgate_records_total``,
``trackgate_ack_latency_seconds``, ...). Metrics are exported for Prometheus
through the OpenTelemetry Prometheus reader (which feeds prometheus_client's
registry); traces go over OTLP/HTTP only when an endpoint is configured.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

ATTR_TRANSPORT = "transport"
ATTR_KIND = "kind"
ATTR_REASON = "reason"
ATTR_RESULT = "result"

#: Seconds; ACKs and Redis writes live between a fraction of a millisecond
#: and the device's response timeout (tens of seconds).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

#: Seconds between device time and arrival: live data lags by about a
#: second, a backlog after an outage by hours or days.
LAG_BUCKETS = (
    1,
    2,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    3 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
)

Gauge = Callable[[], Iterable[tuple[float, dict[str, str]]]]


class Telemetry:
    """The instruments of one process."""

    def __init__(
        self,
        service: str,
        *,
        otlp_endpoint: str | None = None,
        trace_ratio: float = 0.01,
    ) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        resource = Resource.create({"service.name": service})
        self._provider = MeterProvider(
            resource=resource, metric_readers=[PrometheusMetricReader()]
        )
        metrics.set_meter_provider(self._provider)
        meter = self._provider.get_meter("trackgate")
        self._meter = meter

        self.connections_active = meter.create_up_down_counter(
            "trackgate.connections.active", description="Open TCP connections"
        )
        self.accepts = meter.create_counter(
            "trackgate.accepts", description="TCP connections accepted"
        )
        self.connections_refused = meter.create_counter(
            "trackgate.connections.refused",
            description="Connections closed at once by a limit, by reason",
        )
        self.handshakes = meter.create_counter(
            "trackgate.handshakes", description="IMEI handshakes, by result"
        )
        # Counted for every packet: plain integers, read at scrape time.
        self.records = Tally()
        self.counter(
            "trackgate.records", "Records stored, by transport", self.records.read
        )
        self.duplicates = Tally()
        self.counter(
            "trackgate.records.duplicate",
            "Resent records recognised and not stored again",
            self.duplicates.read,
        )
        self.packets_refused = meter.create_counter(
            "trackgate.packets.refused",
            description="Packets not ACKed because they could not be stored",
        )
        self.decode_errors = meter.create_counter(
            "trackgate.decode.errors", description="Malformed frames, by kind"
        )
        self.sessions_replaced = meter.create_counter(
            "trackgate.sessions.replaced",
            description="Sessions closed because the device connected again",
        )
        self.sessions_closed = meter.create_counter(
            "trackgate.sessions.closed", description="Sessions ended, by reason"
        )
        self.sessions_released = meter.create_counter(
            "trackgate.sessions.released",
            description="Devices marked disconnected for a worker that is gone",
        )
        self.bursts = meter.create_counter(
            "trackgate.bursts",
            description="Reconnects followed by records older than the threshold",
        )
        # Observed for every packet, so it is a BulkHistogram too.
        self.ack_latency = BulkHistogram(
            "trackgate_ack_latency_seconds",
            "From a packet's last byte read to its ACK written",
            LATENCY_BUCKETS,
        )
        self.redis_latency = meter.create_histogram(
            "trackgate.redis_write_latency",
            unit="s",
            description="One pipelined Redis write of a batch of packets",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        # Observed for every record, so it is fed in bulk (see BulkHistogram).
        self.record_lag = BulkHistogram(
            "trackgate_record_lag_seconds",
            "Server time minus device time of each record",
            LAG_BUCKETS,
        )
        self.loop_lag = meter.create_histogram(
            "trackgate.event_loop_lag",
            unit="s",
            description="How late the event loop ran a timer",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )

        tracer_provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(trace_ratio))
        )
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint))
            )
        self.tracing = bool(otlp_endpoint)
        self._tracer = tracer_provider.get_tracer("trackgate")
        self._tracer_provider = tracer_provider

    def gauge(self, name: str, description: str, read: Gauge) -> None:
        """Export a value read on each scrape (queue lengths, limits)."""
        self._meter.create_observable_gauge(
            name, callbacks=[_callback(read)], description=description
        )

    def counter(self, name: str, description: str, read: Gauge) -> None:
        """Export a cumulative counter read on each scrape (kernel counters)."""
        self._meter.create_observable_counter(
            name, callbacks=[_callback(read)], description=description
        )

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        """A traced step; a no-op unless tracing is exported."""
        if not self.tracing:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        self.record_lag.unregister()
        self.ack_latency.unregister()
        self._tracer_provider.shutdown()
        self._provider.shutdown()


class Tally:
    """A counter by transport that costs one dict update per event.

    An OpenTelemetry counter's ``add`` takes about 7 µs (attribute hashing,
    locks); the tally is exported as an observable counter instead, read on
    each scrape.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, amount: int, transport: str) -> None:
        self.counts[transport] = self.counts.get(transport, 0) + amount

    def read(self) -> list[tuple[float, dict[str, str]]]:
        return [(n, {ATTR_TRANSPORT: t}) for t, n in self.counts.items()]


class BulkHistogram:
    """A Prometheus histogram for per-record or per-packet values.

    An OpenTelemetry histogram costs about 5 µs per observation (attribute
    hashing, exemplars), which at tens of thousands of records a second is a
    large share of a worker. This one only bisects into local bucket counts;
    the Prometheus registry reads them at scrape time.
    """

    def __init__(self, name: str, description: str, bounds: Sequence[float]) -> None:
        from prometheus_client import REGISTRY

        self.name = name
        self.description = description
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        REGISTRY.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self.counts, self.bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.total += total

    def observe_ages(self, now_ms: int, stamps_ms: Sequence[int]) -> None:
        """Observe ``now_ms - t`` in seconds (0 for a future ``t``) for each
        ``t`` of ``stamps_ms``, e.g. the record lags of one packet.

        A packet's records are usually close in time and fall in one bucket:
        then it costs a min, a max and a sum, not a bisect per record.
        """
        if not stamps_ms:
            return
        bounds, count = self.bounds, len(stamps_ms)
        newest, oldest = max(stamps_ms), min(stamps_ms)
        if now_ms >= newest:
            low = bisect_left(bounds, (now_ms - newest) / 1000)
            if low == bisect_left(bounds, (now_ms - oldest) / 1000):
                self.counts[low] += count
                self.total += (now_ms * count - sum(stamps_ms)) / 1000
                return
        self.observe_many([max(now_ms - t, 0) / 1000 for t in stamps_ms])

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            label = "+Inf" if bound == float("inf") else repr(bound)
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(
            self.name.removesuffix("_seconds"),
            self.description,
            buckets=buckets,
            sum_value=self.total,
            unit="seconds",
        )

    def describe(self) -> Iterator[Any]:
        return iter(())

    def unregister(self) -> None:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(self)


def _callback(read: Gauge) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for value, attributes in read()]

    return observe


def prometheus_text() -> bytes:
    """The current metrics in the Prometheus text format."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY)
