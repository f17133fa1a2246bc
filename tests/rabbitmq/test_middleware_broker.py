"""Middleware on a real broker: a trace carried through the headers of a retry copy (the
circuit breaker and batches are specified in tests/contract, on every backend)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from foxwork import Message, MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitState,
    RetryMiddleware,
    TracingMiddleware,
)

from .conftest import PoolStarter
from .support import Recorder, wait_until

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def json_message(message_id: str, **headers: Any) -> MessageProperties:
    return MessageProperties(
        content_type="application/json", message_id=message_id, headers=headers
    )


# -- tracing -----------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN_ID = "00f067aa0ba902b7"


async def test_a_retried_message_stays_in_the_producers_trace_through_rabbitmq_headers(
    backend: RabbitMQBackend, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a tracer provider of its own, recording in memory (the global one untouched)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # and a message published inside a producer's trace, that fails on its first attempt
    await backend.declare(queue_name)
    traceparent = f"00-{TRACE_ID}-{PRODUCER_SPAN_ID}-01"
    await backend.publish(queue_name, b"{}", json_message("traced", traceparent=traceparent))

    async def fail_first(message: Message[Any]) -> None:
        if message.attempt == 1:
            raise ConnectionError("flaky dependency")

    worker = Recorder(fail_first)

    # When the pool traces it, and retries it through the retry queue
    await start_pool(
        backend,
        worker,
        middleware=[
            AckNackMiddleware(),
            TracingMiddleware(tracer_provider=provider),
            RetryMiddleware(max_attempts=3, initial_backoff=0.05, jitter=0.0),
        ],
    )
    await worker.wait_processed("traced")

    def consumer_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]

    async def both_ended() -> bool:
        return len(consumer_spans()) == 2

    await wait_until(both_ended, what="two consumer spans ended")

    # Then both attempts are CONSUMER spans of the producer's trace
    first, second = sorted(consumer_spans(), key=lambda s: s.attributes["foxwork.message.attempt"])
    assert [s.context.trace_id for s in (first, second)] == [int(TRACE_ID, 16)] * 2
    # and the first is the producer's child, the second the first's child: the retry copy
    # carried the first attempt's context in its RabbitMQ headers
    assert first.parent is not None and first.parent.span_id == int(PRODUCER_SPAN_ID, 16)
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert first.parent.is_remote and second.parent.is_remote
    _, again = worker.of("traced")
    assert again.retry_attempt == 1
    assert f"{first.context.span_id:016x}" in again.headers["traceparent"]
    provider.shutdown()
