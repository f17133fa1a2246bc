"""Trace context: foxwork's tracer, context in message headers, the message being
processed, and log correlation."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import ConfigurationError
from .names import INSTRUMENTATION_NAME, VERSION

if TYPE_CHECKING:
    from ..message import Message

__all__ = [
    "HEADER_GETTER",
    "HeaderGetter",
    "MessageLogFilter",
    "current_message",
    "enter_message",
    "exit_message",
    "get_tracer",
    "inject_context",
]


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """foxwork's tracer from `tracer_provider`, or from the global provider."""
    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        raise ConfigurationError(
            f"tracer_provider={tracer_provider!r} is not an OpenTelemetry TracerProvider: "
            "pass opentelemetry.sdk.trace.TracerProvider(...), or None for the global one"
        )
    return trace.get_tracer(INSTRUMENTATION_NAME, VERSION, tracer_provider=tracer_provider)


# -- trace context in headers ---------------------------------------------------------------


class HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads W3C trace context from AMQP headers, whose values may arrive as `bytes`."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            return [bytes(value).decode("utf-8", "replace")]
        return [value if isinstance(value, str) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


#: The getter foxwork extracts trace context with.
HEADER_GETTER = HeaderGetter()

# The message being processed in this task and the propagator of the tracing layer that
# processes it; set by TracingMiddleware for the duration of the rest of the chain.
_processing: contextvars.ContextVar[tuple[Message[Any], TextMapPropagator | None] | None] = (
    contextvars.ContextVar("foxwork_processing", default=None)
)


def enter_message(
    message: Message[Any], propagator: TextMapPropagator | None = None
) -> contextvars.Token[Any]:
    """Make `message` the current one in this context (for `current_message`,
    `MessageLogFilter` and `inject_context`); undo with `exit_message(token)`. Used by
    `TracingMiddleware`."""
    return _processing.set((message, propagator))


def exit_message(token: contextvars.Token[Any]) -> None:
    """Undo the `enter_message` that returned `token`."""
    _processing.reset(token)


def current_message() -> Message[Any] | None:
    """The message `TracingMiddleware` is processing in this task (or thread), or None."""
    scope = _processing.get()
    return None if scope is None else scope[0]


def inject_context(headers: dict[str, Any]) -> dict[str, Any]:
    """Write the current trace context (W3C `traceparent`, `tracestate`, baggage) into
    `headers` and return them.

    Call it on the headers of a message you publish from inside a worker, so that the
    consumer of that message continues the trace; foxwork does it itself for retry and
    dead-letter copies. Uses the propagator of the `TracingMiddleware` processing the
    current message, otherwise the global one. Without a current span, `headers` keep any
    trace context they already carry.

    Example:
        await backend.publish("invoices", body, MessageProperties(headers=inject_context({})))
    """
    scope = _processing.get()
    propagator = None if scope is None else scope[1]
    if propagator is None:
        propagator = propagate.get_global_textmap()
    if not context.get_current() and _writes_only_the_context(propagator):
        return headers  # nothing to write: no span, no baggage (a copy outside tracing)
    propagator.inject(headers)
    return headers


#: Propagators that write what the current context holds and nothing else, so nothing at
#: all from an empty context (the default ones).
_CONTEXT_ONLY = (TraceContextTextMapPropagator, W3CBaggagePropagator)
# The last propagator asked about, and the answer.
_last_asked: tuple[TextMapPropagator | None, bool] = (None, False)


def _writes_only_the_context(propagator: TextMapPropagator) -> bool:
    global _last_asked
    asked, answer = _last_asked
    if asked is not propagator:
        answer = _only_context(propagator)
        _last_asked = (propagator, answer)
    return answer


def _only_context(propagator: TextMapPropagator) -> bool:
    if type(propagator) is CompositePropagator:
        return all(_only_context(each) for each in propagator._propagators)
    return type(propagator) in _CONTEXT_ONLY


# -- log correlation ------------------------------------------------------------------------

#: What a log record gets for a field that has no value outside of a message.
_NO_VALUE = "-"


class MessageLogFilter(logging.Filter):
    """Adds `message_id`, `attempt`, `trace_id` and `span_id` to every log record.

    Inside a message processed by `TracingMiddleware` (the worker's code, and every layer
    inside the tracing layer, threads of sync workers included) the fields hold the message
    id, its attempt number and the current span's ids in hex; elsewhere they are "-".
    Values a record already has (from `extra=`) are kept. The filter never drops a record.

    Add it to a *handler*, not a logger: a logger's filters do not see records propagated
    from child loggers.

    Example:
        handler = logging.StreamHandler()
        handler.addFilter(MessageLogFilter())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [msg=%(message_id)s attempt=%(attempt)s "
            "trace=%(trace_id)s] %(message)s"
        ))
        logging.getLogger().addHandler(handler)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        scope = _processing.get()
        if scope is None:
            fields.setdefault("message_id", _NO_VALUE)
            fields.setdefault("attempt", _NO_VALUE)
        else:
            fields.setdefault("message_id", scope[0].id)
            fields.setdefault("attempt", scope[0].attempt)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields.setdefault("trace_id", format(span_context.trace_id, "032x"))
            fields.setdefault("span_id", format(span_context.span_id, "016x"))
        else:
            fields.setdefault("trace_id", _NO_VALUE)
            fields.setdefault("span_id", _NO_VALUE)
        return True
