"""Middleware on a real broker: the circuit breaker holding messages through an outage, and a
trace carried through the headers of a retry copy (batches are in tests/contract)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from foxwork import Message, MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitBreakerMiddleware,
    CircuitState,
    RetryMiddleware,
    TracingMiddleware,
)

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, wait_until

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def json_message(message_id: str, **headers: Any) -> MessageProperties:
    return MessageProperties(
        content_type="application/json", message_id=message_id, headers=headers
    )


def retry_tiers(backend: RabbitMQBackend, queue: str) -> list[str]:
    """The retry queues the backend declared for `queue` (read before it closes)."""
    names = backend.config.names(queue)
    return [names.retry_queue(ms) for q, ms in backend.topology._tiers if q == queue]


async def assert_drained(probe: RabbitProbe, queue: str, tiers: Sequence[str]) -> None:
    """Nothing ready in the queue, its DLQ and its retry tiers (an expired tier is empty)."""
    assert tiers, "a retry happened, so a retry tier was declared"
    assert await probe.ready(queue) == 0
    assert await probe.ready(f"{queue}-dlq") == 0
    for tier in tiers:
        assert await probe.ready(tier) in (0, None), tier


# -- circuit breaker ---------------------------------------------------------------------

#: Seconds the stubbed dependency is down once the pool starts.
OUTAGE = 3.0
MESSAGES = 40
CONCURRENCY = 4
FAILURE_THRESHOLD = 3


async def test_an_open_circuit_holds_messages_through_an_outage_and_loses_or_dead_letters_none(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given 40 messages waiting, and a dependency that is down for 3 s once the pool starts
    backend = await make_backend()
    await backend.declare(queue_name)
    ids = [f"m{i:02d}" for i in range(MESSAGES)]
    for message_id in ids:
        await backend.publish(queue_name, b"{}", json_message(message_id))
    loop = asyncio.get_running_loop()
    changes: list[tuple[float, CircuitState, CircuitState]] = []
    breaker = CircuitBreakerMiddleware(
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=0.5,
        on_state_change=lambda old, new: changes.append((loop.time(), old, new)),
    )
    outage_ends = time.monotonic() + OUTAGE

    async def dependency(message: Message[Any]) -> None:
        if time.monotonic() < outage_ends:
            raise ConnectionError("dependency down")

    worker = Recorder(dependency)

    # When a pool of 4 consumes them behind AckNack, the breaker and Retry
    pool = await start_pool(
        backend,
        worker,
        middleware=[
            AckNackMiddleware(),
            breaker,
            RetryMiddleware(max_attempts=3, initial_backoff=0.2, jitter=0.0),
        ],
        concurrency_limit=CONCURRENCY,
    )
    await worker.wait_for(
        lambda r: set(r.processed) == set(ids), what="all 40 processed", timeout=OUTAGE + 8
    )
    await pool.shutdown(timeout=5)
    tiers = retry_tiers(backend, queue_name)
    await backend.close()

    # Then the circuit opened, probed (reopening while the dependency was still down), and
    # closed once a probe succeeded
    path = [(old, new) for _, old, new in changes]
    assert path[0] == (CLOSED, OPEN)
    assert path[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    reopened = path.count((HALF_OPEN, OPEN))
    assert path[1:-2] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)] * reopened
    assert list(breaker.transitions)[-1][1:] == (HALF_OPEN, CLOSED)
    assert breaker.state is CLOSED
    # and every message succeeded exactly once, after the last probe began
    assert sorted(worker.processed) == ids
    last_half_open = changes[-2][0]
    assert all(worker.of(i)[-1].at >= last_half_open for i in ids)
    # and the failed calls are bounded: in CLOSED, the threshold plus the calls already in
    # flight when the circuit opened (at most concurrency - 1); then one probe per HALF_OPEN
    # that reopened. Held messages are not called, not retried and not redelivered.
    failed_calls = len(worker.deliveries) - len(worker.processed)
    bound = FAILURE_THRESHOLD + (CONCURRENCY - 1) + reopened
    redelivered = sum(d.redelivered for d in worker.deliveries)
    retried = [d for d in worker.deliveries if d.retry_attempt is not None]
    counts = (
        f"calls={len(worker.deliveries)} failed={failed_calls} bound={bound} "
        f"reopened={reopened} redelivered={redelivered} retry_copies={len(retried)}"
    )
    assert len(worker.deliveries) <= MESSAGES + bound, counts
    assert redelivered == 0, counts
    # only the failures in CLOSED consumed an attempt (a failed probe consumes none)
    assert all(d.retry_attempt == 1 for d in retried)
    assert len({d.id for d in retried}) <= FAILURE_THRESHOLD + CONCURRENCY - 1
    # and nothing was dead-lettered, nothing is left in the queue or a retry tier
    await assert_drained(probe, queue_name, tiers)


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
