"""TracingMiddleware: a CONSUMER span per message, joined to the producer's trace."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from foxwork import (
    ConfigurationError,
    DeadLetter,
    Drop,
    Message,
    MessageProperties,
    RetryLater,
    Worker,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware, TracingMiddleware
from foxwork.telemetry import MessageLogFilter, current_message, inject_context
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import FailingWorker, RecordingWorker

#: Tiny delays keep the MemoryBackend's real retry timers in the milliseconds.
FAST: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}

PRODUCER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PRODUCER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{PRODUCER_TRACE_ID:032x}-{PRODUCER_SPAN_ID:016x}-01"


class Boom(Exception):
    pass


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A private provider: tests never touch the global one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class TraceOne(Protocol):
    async def __call__(
        self,
        worker: Worker[Any],
        properties: MessageProperties | None = None,
        *,
        expect_failures: bool = False,
    ) -> None: ...


@pytest.fixture
def trace_one(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
) -> TraceOne:
    """Process one message, `{"order": 1}` with `properties`, through AckNack → Tracing →
    `worker`, until the queue is idle."""

    async def process(
        worker: Worker[Any],
        properties: MessageProperties | None = None,
        *,
        expect_failures: bool = False,
    ) -> None:
        pool = make_pool(
            worker,
            middleware=[AckNackMiddleware(), TracingMiddleware(tracer_provider=tracer_provider)],
        )
        await memory_backend.add_message(queue_name, {"order": 1}, properties)
        await run_until_idle(pool, memory_backend, queue_name, expect_failures=expect_failures)

    return process


def consumer_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CONSUMER]


# -- configuration ----------------------------------------------------------------------


def test_a_tracer_provider_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tracer_provider='jaeger'"):
        TracingMiddleware(tracer_provider="jaeger")  # type: ignore[arg-type]


def test_a_propagator_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="propagator='w3c'"):
        TracingMiddleware(propagator="w3c")  # type: ignore[arg-type]


# -- the span ---------------------------------------------------------------------------


async def test_a_message_with_a_traceparent_header_is_processed_in_a_child_span(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a message published inside a producer's trace
    properties = MessageProperties(headers={"traceparent": TRACEPARENT})

    # When it is processed
    await trace_one(RecordingWorker(), properties)

    # Then its span continues the producer's trace, as a child of the producer's span
    (span,) = consumer_spans(exporter)
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == PRODUCER_TRACE_ID
    assert span.parent.span_id == PRODUCER_SPAN_ID
    assert span.parent.is_remote


async def test_a_traceparent_header_that_arrives_as_bytes_is_understood(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a traceparent header as AMQP may deliver it: bytes
    properties = MessageProperties(headers={"traceparent": TRACEPARENT.encode()})

    # When it is processed
    await trace_one(RecordingWorker(), properties)

    # Then the span still joins the producer's trace
    (span,) = consumer_spans(exporter)
    assert span.context is not None and span.context.trace_id == PRODUCER_TRACE_ID


async def test_a_message_without_trace_context_starts_a_new_trace(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a message with no trace headers, when it is processed
    await trace_one(RecordingWorker())

    # Then its span is a root span
    (span,) = consumer_spans(exporter)
    assert span.parent is None


async def test_the_span_carries_the_messaging_semantic_convention_attributes(
    queue_name: str,
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a message with an id and a correlation id
    worker = RecordingWorker("orders-1")
    properties = MessageProperties(message_id="m-42", correlation_id="conv-7")

    # When it is processed
    await trace_one(worker, properties)

    # Then the span describes a RabbitMQ process operation on that queue
    (span,) = consumer_spans(exporter)
    assert span.name == f"{queue_name} process"
    assert span.kind is SpanKind.CONSUMER
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": queue_name,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": "m-42",
        "messaging.message.conversation_id": "conv-7",
        "messaging.message.body.size": len(worker.messages[0].body),
        "messaging.rabbitmq.destination.routing_key": queue_name,
        "messaging.rabbitmq.message.delivery_tag": worker.messages[0].delivery_tag,
        "foxwork.message.attempt": 1,
        "foxwork.worker.id": "orders-1",
    }
    # and not the deprecated `messaging.operation`, which `messaging.operation.type` replaced
    assert "messaging.operation" not in attributes


@pytest.mark.parametrize(
    ("error", "type_name"),
    [
        (Boom("inventory service down"), f"{__name__}.Boom"),
        # a dead letter the worker asks for is a failure too
        (DeadLetter("unknown SKU"), "foxwork.errors.DeadLetter"),
    ],
)
async def test_a_failure_is_recorded_on_the_span_with_status_error(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
    error: Exception,
    type_name: str,
) -> None:
    # Given a worker that fails, when the message is processed
    await trace_one(FailingWorker(error), expect_failures=True)

    # Then the span records the exception and ends in ERROR
    (span,) = consumer_spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"{type(error).__name__}: {error}"
    assert (span.attributes or {})["error.type"] == type_name
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == type_name
    assert (event.attributes or {})["exception.message"] == str(error)


async def test_a_dropped_message_does_not_mark_the_span_as_an_error(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a worker that drops the message, when it is processed
    await trace_one(FailingWorker(Drop("stale order")), expect_failures=True)

    # Then the span is not an error, and says why the message was dropped
    (span,) = consumer_spans(exporter)
    assert span.status.status_code is StatusCode.UNSET
    (event,) = span.events
    assert event.name == "message dropped"
    assert dict(event.attributes or {}) == {"foxwork.drop.reason": "stale order"}


def retrying_chain(tracer_provider: TracerProvider, *, max_attempts: int) -> list[Any]:
    return [
        AckNackMiddleware(),
        TracingMiddleware(tracer_provider=tracer_provider),
        RetryMiddleware(max_attempts=max_attempts, **FAST),
    ]


async def test_retry_later_is_an_event_on_the_span_not_an_error(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # Given a worker that asks once for a later attempt, behind tracing and retries
    worker = FailingWorker(RetryLater(0.01, "inventory busy"), times=1)
    pool = make_pool(worker, middleware=retrying_chain(tracer_provider, max_attempts=3))
    await memory_backend.add_message(queue_name, {"order": 1})

    # When it is retried later and then succeeds
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the first attempt's span says a later attempt was asked for, with the delay and
    # the reason, and is neither an error nor carries an exception
    first, second = sorted(
        consumer_spans(exporter),
        key=lambda s: int((s.attributes or {})["foxwork.message.attempt"]),  # type: ignore[arg-type]
    )
    assert worker.attempts == [1, 2]
    assert first.status.status_code is StatusCode.UNSET
    assert "error.type" not in (first.attributes or {})
    (event,) = first.events
    assert event.name == "foxwork.retry_later"
    assert dict(event.attributes or {}) == {
        "foxwork.retry.delay": 0.01,
        "foxwork.retry.reason": "inventory busy",
    }
    assert second.status.status_code is StatusCode.UNSET
    assert not second.events


async def test_retry_later_without_a_reason_and_without_retry_middleware_is_an_event(
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a worker that asks for a later attempt with no reason, and no RetryMiddleware
    # (AckNackMiddleware requeues the message)
    worker = FailingWorker(RetryLater(2.5), times=1)

    # When it is processed, requeued and processed again
    await trace_one(worker, expect_failures=True)

    # Then the requeued attempt's span carries only the delay asked for, and no error
    spans = consumer_spans(exporter)
    assert worker.attempts == [1, 1] and len(spans) == 2
    requeued = next(span for span in spans if span.events)
    assert requeued.status.status_code is StatusCode.UNSET
    (event,) = requeued.events
    assert event.name == "foxwork.retry_later"
    assert dict(event.attributes or {}) == {"foxwork.retry.delay": 2.5}


async def test_retry_later_on_the_last_attempt_is_a_failure(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # Given a worker that asks for a later attempt when it has none left
    pool = make_pool(
        FailingWorker(RetryLater(0.01, "still busy")),
        middleware=retrying_chain(tracer_provider, max_attempts=1),
    )
    await memory_backend.add_message(queue_name, {"order": 1})

    # When the message is dead-lettered instead
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then its span is an error that records the exception
    (span,) = consumer_spans(exporter)
    assert len(memory_backend.dead_letters(queue_name)) == 1
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "foxwork.errors.RetryLater"
    assert [event.name for event in span.events] == ["exception"]


async def test_the_span_is_current_while_the_worker_runs(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    trace_one: TraceOne,
) -> None:
    # Given a worker that opens its own span
    tracer = tracer_provider.get_tracer("the worker")

    class SpanningWorker(Worker[Any]):
        async def process(self, message: Message[Any]) -> None:
            with tracer.start_as_current_span("reserve stock"):
                pass

    # When the message is processed
    await trace_one(SpanningWorker())

    # Then the worker's span is a child of the message's span
    (consumer,) = consumer_spans(exporter)
    (inner,) = [span for span in exporter.get_finished_spans() if span.name == "reserve stock"]
    assert consumer.context is not None and inner.parent is not None
    assert inner.parent.span_id == consumer.context.span_id


# -- retries and dead letters stay in the trace -------------------------------------------


async def test_a_retried_message_is_processed_again_in_the_same_trace(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # Given a worker that fails once, behind tracing and retries
    pool = make_pool(
        FailingWorker(Boom("flaky"), times=1),
        middleware=retrying_chain(tracer_provider, max_attempts=3),
    )
    properties = MessageProperties(headers={"traceparent": TRACEPARENT})
    await memory_backend.add_message(queue_name, {"order": 1}, properties)

    # When it fails, is retried and succeeds
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then both attempts are in the producer's trace; the second follows from the first
    first, second = sorted(
        consumer_spans(exporter),
        key=lambda s: int((s.attributes or {})["foxwork.message.attempt"]),  # type: ignore[arg-type]
    )
    assert first.context is not None and second.context is not None
    assert first.context.trace_id == second.context.trace_id == PRODUCER_TRACE_ID
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})["foxwork.message.attempt"] == 2


async def test_a_dead_letter_carries_the_context_of_the_attempt_that_failed(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # Given a worker that always fails and a single attempt
    pool = make_pool(
        FailingWorker(Boom("broken")),
        middleware=retrying_chain(tracer_provider, max_attempts=1),
    )
    properties = MessageProperties(headers={"traceparent": TRACEPARENT})
    await memory_backend.add_message(queue_name, {"order": 1}, properties)

    # When it is dead-lettered
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the dead letter's traceparent names the failed attempt's span
    (span,) = consumer_spans(exporter)
    assert span.context is not None
    (dead,) = memory_backend.dead_letters(queue_name)
    ctx = span.context
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert dead.headers["traceparent"] == expected


async def test_a_custom_propagator_reads_and_writes_the_trace_context(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    # Given a tracing layer with an explicit W3C propagator
    pool = make_pool(
        FailingWorker(Boom("broken")),
        middleware=[
            AckNackMiddleware(),
            TracingMiddleware(
                tracer_provider=tracer_provider, propagator=TraceContextTextMapPropagator()
            ),
            RetryMiddleware(max_attempts=1, **FAST),
        ],
    )
    properties = MessageProperties(headers={"traceparent": TRACEPARENT})
    await memory_backend.add_message(queue_name, {"order": 1}, properties)

    # When the message is processed and dead-lettered
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then it joined the producer's trace, and the dead letter carries it on
    (span,) = consumer_spans(exporter)
    assert span.context is not None and span.context.trace_id == PRODUCER_TRACE_ID
    (dead,) = memory_backend.dead_letters(queue_name)
    assert dead.headers["traceparent"].split("-")[1] == f"{PRODUCER_TRACE_ID:032x}"


async def test_inject_context_writes_the_current_span_into_headers(
    tracer_provider: TracerProvider,
) -> None:
    # Given a current span
    tracer = tracer_provider.get_tracer("a publisher")
    with tracer.start_as_current_span("publish invoice") as span:
        # When a worker injects the context into the headers it publishes
        headers = inject_context({"kind": "invoice"})

    # Then the headers name that span, and keep what they had
    ctx = span.get_span_context()
    assert headers == {
        "kind": "invoice",
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}",
    }


def test_inject_context_without_a_current_span_keeps_existing_trace_context() -> None:
    # Given headers that carry the producer's context and no current span
    headers = {"traceparent": TRACEPARENT}

    # When they are injected into
    inject_context(headers)

    # Then the producer's context stays
    assert headers == {"traceparent": TRACEPARENT}


# -- log correlation --------------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(MessageLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records() -> Any:
    handler = ListHandler()
    logger = logging.getLogger("tests.orders")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)


async def test_log_records_emitted_while_processing_carry_the_message_id_attempt_and_trace_id(
    exporter: InMemorySpanExporter,
    log_records: list[logging.LogRecord],
    trace_one: TraceOne,
) -> None:
    # Given a worker that logs, behind tracing
    class LoggingWorker(Worker[Any]):
        async def process(self, message: Message[Any]) -> None:
            assert current_message() is message
            logging.getLogger("tests.orders").info("reserving stock")

    properties = MessageProperties(message_id="m-1", headers={"traceparent": TRACEPARENT})

    # When it processes a message
    await trace_one(LoggingWorker(), properties)

    # Then the record names the message, its attempt and the trace, ready for a format string
    (record,) = log_records
    (span,) = consumer_spans(exporter)
    assert span.context is not None
    assert (record.message_id, record.attempt) == ("m-1", 1)  # type: ignore[attr-defined]
    assert record.trace_id == f"{PRODUCER_TRACE_ID:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{span.context.span_id:016x}"  # type: ignore[attr-defined]
    formatter = logging.Formatter("[%(message_id)s #%(attempt)s %(trace_id)s] %(message)s")
    assert formatter.format(record) == f"[m-1 #1 {PRODUCER_TRACE_ID:032x}] reserving stock"


def test_log_records_outside_a_message_get_placeholders(
    log_records: list[logging.LogRecord],
) -> None:
    # Given no message being processed
    # When something logs
    logging.getLogger("tests.orders").info("starting up")

    # Then the fields exist, so a format string that uses them never fails
    (record,) = log_records
    fields = (record.message_id, record.attempt, record.trace_id)  # type: ignore[attr-defined]
    assert fields == ("-", "-", "-")
    assert current_message() is None
    assert not trace.get_current_span().get_span_context().is_valid
