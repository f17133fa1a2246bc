"""`TracingMiddleware`: an OpenTelemetry CONSUMER span around the rest of the chain."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import telemetry, wire
from ..errors import ConfigurationError, Drop, RetryLater
from ..message import Message, SettleState
from .base import CallNext

__all__ = ["TracingMiddleware"]

#: The `messaging.system` of every span.
MESSAGING_SYSTEM = "rabbitmq"
#: The operation every span stands for: its `messaging.operation.type` and
#: `messaging.operation.name`.
OPERATION = "process"
#: Status description of a span whose processing was cancelled (a shutdown deadline).
CANCELLED = "cancelled: the message goes back to its queue"


class TracingMiddleware:
    """Processes each message inside a CONSUMER span named `"{queue} process"`.

    The span is a child of the W3C trace context (`traceparent`, `tracestate`, baggage)
    found in the message's headers, so it joins the producer's trace; header values that
    arrive as `bytes` are decoded. The span is current while the rest of the chain runs:
    the worker's own spans nest under it, `MessageLogFilter` puts its trace id on log
    records, and the retry and dead-letter copies published inside it carry its context,
    so every attempt of a message and its dead letter sit in one trace.

    Attributes, after the OpenTelemetry messaging semantic conventions:
    `messaging.system` ("rabbitmq"), `messaging.destination.name` (the queue),
    `messaging.operation.type` and `messaging.operation.name` ("process"),
    `messaging.message.id`, `messaging.message.body.size`,
    `messaging.rabbitmq.destination.routing_key`, `messaging.rabbitmq.message.delivery_tag`,
    `messaging.message.conversation_id` (the correlation id, when set); and foxwork's own
    `foxwork.message.attempt` (1 on the first delivery) and `foxwork.worker.id`.

    A failure is recorded on the span as an exception event, with `error.type` (the
    qualified exception class) and status ERROR; it is re-raised unchanged. `Drop` is not
    a failure: the span gets a `message dropped` event and keeps status UNSET, as does a
    success. Nor is `RetryLater`, the worker asking for a later attempt: the span gets a
    `foxwork.retry_later` event (`foxwork.retry.delay`, the seconds asked for, and
    `foxwork.retry.reason` when given), no exception event (its traceback is not
    formatted) and keeps status UNSET; unless the message was dead-lettered instead (its
    attempts ran out), which is a failure. `DeadLetter` is a failure. A cancelled message
    (shutdown deadline) ends with status ERROR, "cancelled".

    Place it right inside `AckNackMiddleware`, so that the span covers every other layer.

    Args:
        tracer_provider: where spans go; None for the global provider.
        propagator: reads the trace context from headers and writes it into the copies
            foxwork publishes; None for the global propagator (W3C trace context and
            baggage unless configured otherwise).

    Example:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        pool = WorkerPool(
            workers=[OrderWorker()],
            middleware=[AckNackMiddleware(), TracingMiddleware(tracer_provider=provider),
                        RetryMiddleware()],
        )
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        if propagator is not None and not isinstance(propagator, TextMapPropagator):
            raise ConfigurationError(
                f"TracingMiddleware(propagator={propagator!r}): pass an OpenTelemetry "
                "TextMapPropagator (such as TraceContextTextMapPropagator()), or None for "
                "the global one"
            )
        self._tracer = telemetry.get_tracer(tracer_provider)
        self._propagator = propagator
        self._fields_of: TextMapPropagator | None = None
        self._field_names: frozenset[str] = frozenset()
        # Per queue: the span name and the attributes every message of that queue shares.
        self._per_queue: dict[str, tuple[str, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"TracingMiddleware(propagator={self._propagator!r})"

    def _fields(self, propagator: TextMapPropagator | None) -> frozenset[str]:
        # The header names the propagator reads, cached per propagator (the global one can
        # be replaced at any time): a message without any of them needs no extraction.
        active = propagate.get_global_textmap() if propagator is None else propagator
        if active is not self._fields_of:
            self._fields_of = active
            self._field_names = frozenset(active.fields)
        return self._field_names

    def _queue_constants(self, queue: str) -> tuple[str, dict[str, Any]]:
        constants = self._per_queue.get(queue)
        if constants is None:
            constants = self._per_queue[queue] = (
                f"{queue} {OPERATION}",
                {
                    telemetry.MESSAGING_SYSTEM: MESSAGING_SYSTEM,
                    telemetry.MESSAGING_DESTINATION_NAME: queue,
                    telemetry.MESSAGING_OPERATION_TYPE: OPERATION,
                    telemetry.MESSAGING_OPERATION_NAME: OPERATION,
                },
            )
        return constants

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        propagator = self._propagator
        headers = message.headers
        parent: context.Context | None = None
        if headers and not self._fields(propagator).isdisjoint(headers):
            if propagator is None:
                parent = propagate.extract(headers, getter=telemetry.HEADER_GETTER)
            else:
                parent = propagator.extract(headers, getter=telemetry.HEADER_GETTER)
        name, shared = self._queue_constants(message.queue)
        attributes = {
            **shared,
            telemetry.MESSAGING_MESSAGE_ID: message.id,
            telemetry.MESSAGING_ROUTING_KEY: message.routing_key,
            telemetry.MESSAGING_BODY_SIZE: len(message.body),
            telemetry.FOXWORK_ATTEMPT: message.attempt,
        }
        if message.delivery_tag:
            attributes[telemetry.MESSAGING_DELIVERY_TAG] = message.delivery_tag
        correlation_id = message.properties.correlation_id
        if correlation_id:
            attributes[telemetry.MESSAGING_CONVERSATION_ID] = correlation_id
        if message.worker_id is not None:
            attributes[telemetry.FOXWORK_WORKER] = message.worker_id
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        context_token = context.attach(trace.set_span_in_context(span, parent))
        message_token = telemetry.enter_message(message, propagator)
        try:
            await call_next(message)
        except Drop as exc:
            span.add_event("message dropped", {telemetry.FOXWORK_DROP_REASON: exc.reason})
            raise
        except RetryLater as exc:
            if message.state is SettleState.DEAD_LETTERED:
                _record_failure(span, exc)
            else:
                event: dict[str, float | str] = {telemetry.FOXWORK_RETRY_DELAY: exc.delay}
                if exc.reason:
                    event[telemetry.FOXWORK_RETRY_REASON] = exc.reason
                span.add_event(telemetry.FOXWORK_RETRY_LATER, event)
            raise
        except asyncio.CancelledError:
            span.set_status(Status(StatusCode.ERROR, CANCELLED))
            raise
        except Exception as exc:
            _record_failure(span, exc)
            raise
        finally:
            telemetry.exit_message(message_token)
            context.detach(context_token)
            span.end()


def _record_failure(span: trace.Span, exc: Exception) -> None:
    span.set_attribute(telemetry.ERROR_TYPE, wire.exception_type_name(exc))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
