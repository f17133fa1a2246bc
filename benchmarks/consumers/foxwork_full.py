"""foxwork with the full production chain, on a `ResilientBackend` as `foxwork run` uses.

AckNack → Tracing → Metrics → CircuitBreaker → RateLimit → Retry, outermost first, with
settings under which no layer holds a message back: nothing fails (so the breaker stays
CLOSED and Retry only passes through) and the rate limit is far above any throughput.

Telemetry is recorded, not exported: tracing uses an OpenTelemetry SDK `TracerProvider`
with a `BatchSpanProcessor` around an exporter that drops the spans, so every span is
created, filled, ended and queued as in production; metrics use an SDK `MeterProvider`
with a periodic reader (every 10 s) whose exporter drops the data.

Once the pool has started, the start-up heap is frozen, as `foxwork run` does
(`foxwork.cli.heap.freeze_startup_heap`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from foxwork import WorkerPool
from foxwork.backends import RabbitMQBackend, ResilientBackend
from foxwork.cli.heap import freeze_startup_heap
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitBreakerMiddleware,
    MetricsMiddleware,
    RateLimitMiddleware,
    RetryMiddleware,
    TracingMiddleware,
)

from ._common import Stop, main
from .foxwork_bare import DecodeWorker

#: Messages per second the rate limit allows: far above what one process can do.
UNBINDING_RATE = 1_000_000.0
#: How often the metric reader collects (and drops) the metrics, in milliseconds.
METRICS_INTERVAL_MS = 10_000


class DroppingSpanExporter(SpanExporter):
    """Accepts every batch of spans and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class DroppingMetricExporter(MetricExporter):
    """Accepts every collection of metrics and does nothing with it."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def telemetry() -> tuple[TracerProvider, MeterProvider]:
    """SDK providers that record everything and export nowhere."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DroppingSpanExporter()))
    reader = PeriodicExportingMetricReader(
        DroppingMetricExporter(), export_interval_millis=METRICS_INTERVAL_MS
    )
    return tracer_provider, MeterProvider(metric_readers=[reader])


def full_chain(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> list[Any]:
    """The production chain, outermost first."""
    return [
        AckNackMiddleware(),
        TracingMiddleware(tracer_provider=tracer_provider),
        MetricsMiddleware(meter_provider=meter_provider),
        CircuitBreakerMiddleware(),
        RateLimitMiddleware(rate=UNBINDING_RATE, burst=UNBINDING_RATE),
        RetryMiddleware(),
    ]


async def start(args: argparse.Namespace) -> Stop:
    tracer_provider, meter_provider = telemetry()
    backend = ResilientBackend(RabbitMQBackend(url=args.url, queue=args.queue))
    pool = WorkerPool(
        workers=[DecodeWorker()],
        middleware=full_chain(tracer_provider, meter_provider),
        concurrency_limit=args.prefetch,
        prefetch=args.prefetch,
        queues=[args.queue],
    )
    await backend.connect()
    await pool.start(backend)
    freeze_startup_heap()  # as `foxwork run` does once its pool has started

    async def stop() -> None:
        await pool.shutdown(timeout=10)
        await backend.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return stop


if __name__ == "__main__":
    sys.exit(main("foxwork_full", start))
