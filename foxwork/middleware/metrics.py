"""`MetricsMiddleware`: OpenTelemetry message counts, in-flight gauge and durations."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.metrics import MeterProvider

from .. import telemetry
from ..errors import Drop
from ..message import Message, SettleState
from .base import CallNext

__all__ = ["MetricsMiddleware"]


class MetricsMiddleware:
    """Counts what happens to messages and how long they take, per queue and worker.

    Reports, with the attributes `queue` and `worker` (see `foxwork.telemetry` for the
    full table): `foxwork.messages.received`, `.processed` (the rest of the chain
    returned), `.failed` (it raised anything but `Drop`), `.retried` and `.dead_lettered`
    (the message ended in `SettleState.RETRIED` or `DEAD_LETTERED`), `.dropped` (it raised
    `Drop`), `foxwork.messages.in_flight`, and the histogram `foxwork.message.duration`
    in seconds.

    Retries and dead letters are read from the message's settlement after the rest of the
    chain returns, so only settlements made inside this layer are seen: place it inside
    `AckNackMiddleware` and outside `RetryMiddleware` (right after `TracingMiddleware`).
    Outside `AckNackMiddleware` it would count a `Drop` (which AckNack swallows) as
    processed.

    The counts are plain integers on the hot path, reported by observable instruments when
    a reader collects; only the duration is recorded per message. The instance is
    long-lived and shared by every message (its series table grows with each new queue
    and worker pair, which a pool has few of).

    Inside `TracingMiddleware` the duration is recorded while the message's span is
    current, so the SDK's default exemplar filter (`trace_based`) attaches an exemplar to
    it that links the histogram to the trace of a sampled message. That costs a few
    percent of CPU per message; without a use for exemplars, turn them off with
    `OTEL_METRICS_EXEMPLAR_FILTER=always_off` (or
    `MeterProvider(exemplar_filter=AlwaysOffExemplarFilter())`).

    Args:
        meter_provider: where the metrics go; None for the global provider.

    Example:
        reader = PrometheusReader()
        provider = MeterProvider(metric_readers=[reader])
        pool = WorkerPool(
            workers=[OrderWorker()],
            middleware=[AckNackMiddleware(), MetricsMiddleware(meter_provider=provider),
                        RetryMiddleware()],
        )
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        self._metrics = telemetry.MessageMetrics(meter_provider=meter_provider)
        self._duration = self._metrics.duration

    def __repr__(self) -> str:
        return "MetricsMiddleware()"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        series = self._metrics.series(message.queue, message.worker_id)
        series.received += 1
        series.in_flight += 1
        start = time.perf_counter()
        try:
            await call_next(message)
        except Drop:
            series.dropped += 1
            raise
        except Exception:
            series.failed += 1
            _count_settlement(series, message.state)
            raise
        else:
            series.processed += 1
            _count_settlement(series, message.state)
        finally:
            series.in_flight -= 1
            self._duration.record(time.perf_counter() - start, series.attributes)


def _count_settlement(series: telemetry.MessageSeries, state: SettleState) -> None:
    if state is SettleState.RETRIED:
        series.retried += 1
    elif state is SettleState.DEAD_LETTERED:
        series.dead_lettered += 1
