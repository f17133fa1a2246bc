"""OpenTelemetry in foxwork: every tracer, meter, metric and attribute name, in one place.

Tracing (`foxwork.middleware.TracingMiddleware`) opens a CONSUMER span per message, a
child of the W3C trace context in the message's headers. Copies foxwork publishes (retries
and dead letters) carry the context of the span current when they are published
(`inject_context`), so every attempt of a message, and its dead letter, sit in one trace.

Metrics (`foxwork.middleware.MetricsMiddleware`), with the attributes `queue` and
`worker`:

| instrument | kind | what it counts |
| --- | --- | --- |
| `foxwork.messages.received` | counter | deliveries that entered the layer |
| `foxwork.messages.processed` | counter | deliveries whose chain returned without an error |
| `foxwork.messages.failed` | counter | deliveries whose chain raised (`Drop` excluded) |
| `foxwork.messages.retried` | counter | deliveries settled by publishing a retry copy |
| `foxwork.messages.dead_lettered` | counter | deliveries settled by publishing a dead letter |
| `foxwork.messages.dropped` | counter | deliveries that raised `Drop` (acked, not processed) |
| `foxwork.messages.in_flight` | up-down counter | deliveries inside the layer right now |
| `foxwork.message.duration` | histogram (s) | time spent in the rest of the chain |

The counts are kept as plain integers on the hot path and reported through observable
instruments when a reader collects: a synchronous OpenTelemetry `Counter.add` costs
microseconds, and a message would need four of them. Only the duration is recorded per
message.

Other sources, registered once:

- `observe_circuit(breaker, name)`: `foxwork.circuit.state` (0 = closed, 1 = half-open,
  2 = open) and `foxwork.circuit.transitions`, with the attribute `circuit` (and `from`,
  `to` on transitions).
- `observe_connection(is_connected, name=...)`: `foxwork.connection.up` (1 connected,
  0 not), with the attribute `backend`.

Log correlation: `MessageLogFilter` adds `message_id`, `attempt`, `trace_id` and `span_id`
to log records emitted while `TracingMiddleware` processes a message.

Nothing here sets a global provider. Every entry point takes an optional `tracer_provider`
or `meter_provider` and otherwise uses the global one (a no-op until the application sets
one).
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .message import Message

__all__ = [
    "CIRCUIT_STATE",
    "CIRCUIT_STATE_VALUES",
    "CIRCUIT_TRANSITIONS",
    "CONNECTION_UP",
    "DURATION_BUCKETS",
    "HEADER_GETTER",
    "INSTRUMENTATION_NAME",
    "MESSAGES_DEAD_LETTERED",
    "MESSAGES_DROPPED",
    "MESSAGES_FAILED",
    "MESSAGES_IN_FLIGHT",
    "MESSAGES_PROCESSED",
    "MESSAGES_RECEIVED",
    "MESSAGES_RETRIED",
    "MESSAGE_DURATION",
    "HeaderGetter",
    "MessageLogFilter",
    "MessageMetrics",
    "MessageSeries",
    "current_message",
    "enter_message",
    "exit_message",
    "get_meter",
    "get_tracer",
    "inject_context",
    "observe_circuit",
    "observe_connection",
]

#: Name of foxwork's tracer and meter (the OpenTelemetry instrumentation scope).
INSTRUMENTATION_NAME = "foxwork"

try:
    _VERSION = importlib.metadata.version("foxwork")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    _VERSION = "0"

# -- metric names ---------------------------------------------------------------------------

#: Counter: deliveries that entered `MetricsMiddleware`.
MESSAGES_RECEIVED = "foxwork.messages.received"
#: Counter: deliveries whose chain returned without an error.
MESSAGES_PROCESSED = "foxwork.messages.processed"
#: Counter: deliveries whose chain raised; `Drop` is not a failure.
MESSAGES_FAILED = "foxwork.messages.failed"
#: Counter: deliveries settled by a retry copy (`SettleState.RETRIED`).
MESSAGES_RETRIED = "foxwork.messages.retried"
#: Counter: deliveries settled by a dead letter (`SettleState.DEAD_LETTERED`).
MESSAGES_DEAD_LETTERED = "foxwork.messages.dead_lettered"
#: Counter: deliveries that raised `Drop`.
MESSAGES_DROPPED = "foxwork.messages.dropped"
#: Up-down counter: deliveries being processed right now.
MESSAGES_IN_FLIGHT = "foxwork.messages.in_flight"
#: Histogram: seconds a delivery spent in the chain behind `MetricsMiddleware`.
MESSAGE_DURATION = "foxwork.message.duration"
#: Gauge: a circuit breaker's state, as `CIRCUIT_STATE_VALUES` maps it.
CIRCUIT_STATE = "foxwork.circuit.state"
#: Counter: a circuit breaker's changes of state.
CIRCUIT_TRANSITIONS = "foxwork.circuit.transitions"
#: Gauge: 1 while a backend is connected, 0 otherwise.
CONNECTION_UP = "foxwork.connection.up"

#: Gauge value of each circuit state (by `CircuitState` member name): worse is higher.
CIRCUIT_STATE_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}

#: Bucket boundaries of `foxwork.message.duration`, in seconds (the SDK's default buckets
#: are meant for milliseconds).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
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
    60.0,
    120.0,
    300.0,
)

# -- metric attribute keys --------------------------------------------------------------

#: The queue a message was consumed from.
ATTR_QUEUE = "queue"
#: The id of the worker that processed it.
ATTR_WORKER = "worker"
#: The name given to `observe_circuit`.
ATTR_CIRCUIT = "circuit"
#: The name given to `observe_connection`.
ATTR_BACKEND = "backend"

# -- span attribute keys (OpenTelemetry messaging semantic conventions) -----------------

MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
#: The attribute `messaging.operation.type` replaced; set too, for older backends.
MESSAGING_OPERATION = "messaging.operation"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONVERSATION_ID = "messaging.message.conversation_id"
MESSAGING_BODY_SIZE = "messaging.message.body.size"
MESSAGING_ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
MESSAGING_DELIVERY_TAG = "messaging.rabbitmq.message.delivery_tag"
ERROR_TYPE = "error.type"
#: foxwork's own span attributes live under `foxwork.`, not under the `messaging.`
#: namespace that the semantic conventions own.
#: Which delivery of the message this is: 1 first, 2 after one failure, ...
FOXWORK_ATTEMPT = "foxwork.message.attempt"
#: The worker the pool picked for the message.
FOXWORK_WORKER = "foxwork.worker.id"
#: Why a message was dropped (on the `message dropped` span event).
FOXWORK_DROP_REASON = "foxwork.drop.reason"


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """foxwork's tracer from `tracer_provider`, or from the global provider."""
    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        raise ConfigurationError(
            f"tracer_provider={tracer_provider!r} is not an OpenTelemetry TracerProvider: "
            "pass opentelemetry.sdk.trace.TracerProvider(...), or None for the global one"
        )
    return trace.get_tracer(INSTRUMENTATION_NAME, _VERSION, tracer_provider=tracer_provider)


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """foxwork's meter from `meter_provider`, or from the global provider."""
    _check_meter_provider(meter_provider)
    return metrics.get_meter(INSTRUMENTATION_NAME, _VERSION, meter_provider=meter_provider)


def _check_meter_provider(meter_provider: object) -> None:
    if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
        raise ConfigurationError(
            f"meter_provider={meter_provider!r} is not an OpenTelemetry MeterProvider: "
            "pass opentelemetry.sdk.metrics.MeterProvider(...), or None for the global one"
        )


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
        propagate.inject(headers)
    else:
        propagator.inject(headers)
    return headers


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


# -- metrics ----------------------------------------------------------------------------


class MessageSeries:
    """The message counts of one (queue, worker) pair, as one `MetricsMiddleware` saw them.

    Plain integers, incremented on the event loop and read when a metric reader collects.
    """

    __slots__ = (
        "attributes",
        "dead_lettered",
        "dropped",
        "failed",
        "in_flight",
        "processed",
        "received",
        "retried",
    )

    def __init__(self, attributes: dict[str, str]) -> None:
        #: The metric attributes (`queue`, `worker`); shared, never mutate it.
        self.attributes = attributes
        self.received = 0
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.in_flight = 0


class MessageMetrics:
    """The per-message instruments of one meter provider, for one `MetricsMiddleware`.

    Counts live in `MessageSeries` objects (one per queue and worker); the provider's
    observable instruments report the sum over every `MessageMetrics` on it, so two pools
    sharing a provider and a queue add up instead of overwriting each other.

    Args:
        meter_provider: the provider to report to; None for the global one.
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None) -> None:
        registry = _registry(meter_provider)
        #: Histogram of `foxwork.message.duration`, in seconds.
        self.duration = registry.duration
        self._series: dict[tuple[str, str | None], MessageSeries] = {}
        registry.add_messages(self)

    def series(self, queue: str, worker: str | None) -> MessageSeries:
        """The counts for one queue and worker, created on first use."""
        key = (queue, worker)
        series = self._series.get(key)
        if series is None:
            series = MessageSeries({ATTR_QUEUE: queue, ATTR_WORKER: worker or ""})
            self._series[key] = series
        return series

    def all_series(self) -> list[MessageSeries]:
        """Every series so far (a copy: safe to iterate from a collecting thread)."""
        return list(self._series.values())


def observe_circuit(
    breaker: Any, name: str, *, meter_provider: MeterProvider | None = None
) -> Callable[[], None]:
    """Report a circuit breaker's state and transitions under the attribute `circuit=name`.

    `foxwork.circuit.state` reads `breaker.state` at every collection (0 closed, 1
    half-open, 2 open); `foxwork.circuit.transitions` counts changes of state seen through
    `breaker.add_listener`, with `from` and `to` attributes (lower-case state names).

    Args:
        breaker: a `CircuitBreakerMiddleware` (anything with a `state` enum whose member
            names are CLOSED, HALF_OPEN and OPEN, and optionally `add_listener`).
        name: tells breakers apart: usually the dependency it protects.
        meter_provider: the provider to report to; None for the global one.

    Returns:
        A function that stops the reporting.

    Example:
        breaker = CircuitBreakerMiddleware(failure_threshold=5)
        observe_circuit(breaker, "payments-api")
    """
    if not hasattr(breaker, "state"):
        raise ConfigurationError(
            f"observe_circuit({breaker!r}): pass a CircuitBreakerMiddleware (an object "
            "with a `state` attribute)"
        )
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"observe_circuit(name={name!r}): pass a non-empty name")
    circuit = _Circuit(breaker, name)
    registry = _registry(meter_provider)
    add_listener = getattr(breaker, "add_listener", None)
    if add_listener is not None:
        add_listener(circuit.on_change)
    registry.circuits.add(circuit)

    def stop() -> None:
        registry.circuits.discard(circuit)
        remove_listener = getattr(breaker, "remove_listener", None)
        if remove_listener is not None:
            remove_listener(circuit.on_change)

    return stop


def observe_connection(
    is_connected: Callable[[], bool],
    *,
    name: str = "default",
    meter_provider: MeterProvider | None = None,
) -> Callable[[], None]:
    """Report `foxwork.connection.up` (1 or 0) under the attribute `backend=name`.

    Args:
        is_connected: called at every collection; an exception counts as not connected.
        name: tells backends apart.
        meter_provider: the provider to report to; None for the global one.

    Returns:
        A function that stops the reporting.

    Example:
        observe_connection(lambda: backend.is_connected, name="rabbitmq")
    """
    if not callable(is_connected):
        raise ConfigurationError(
            f"observe_connection({is_connected!r}): pass a callable returning a bool, "
            "such as `lambda: backend.is_connected`"
        )
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"observe_connection(name={name!r}): pass a non-empty name")
    registry = _registry(meter_provider)
    entry = _Connection(is_connected, {ATTR_BACKEND: name})
    registry.connections.add(entry)
    return lambda: registry.connections.discard(entry)


class _Circuit:
    __slots__ = ("attributes", "breaker", "transitions")

    def __init__(self, breaker: Any, name: str) -> None:
        self.breaker = breaker
        self.attributes = {ATTR_CIRCUIT: name}
        self.transitions: dict[tuple[str, str], int] = {}

    def on_change(self, old: Any, new: Any) -> None:
        key = (_state_name(old), _state_name(new))
        self.transitions[key] = self.transitions.get(key, 0) + 1


def _state_name(state: Any) -> str:
    return str(getattr(state, "name", state)).lower()


class _Connection:
    __slots__ = ("attributes", "is_connected")

    def __init__(self, is_connected: Callable[[], bool], attributes: dict[str, str]) -> None:
        self.is_connected = is_connected
        self.attributes = attributes


class _Registry:
    """The instruments of one meter provider and the sources its observable ones read."""

    def __init__(self, meter: Meter) -> None:
        self.messages: list[MessageMetrics] = []
        self.circuits: set[_Circuit] = set()
        self.connections: set[_Connection] = set()
        for name, field, description in (
            (MESSAGES_RECEIVED, "received", "Deliveries received"),
            (MESSAGES_PROCESSED, "processed", "Deliveries processed without an error"),
            (MESSAGES_FAILED, "failed", "Deliveries whose processing raised an error"),
            (MESSAGES_RETRIED, "retried", "Deliveries settled by publishing a retry copy"),
            (
                MESSAGES_DEAD_LETTERED,
                "dead_lettered",
                "Deliveries settled by publishing a dead letter",
            ),
            (MESSAGES_DROPPED, "dropped", "Deliveries dropped (acked without processing)"),
        ):
            meter.create_observable_counter(
                name, [self._message_callback(field)], unit="{message}", description=description
            )
        meter.create_observable_up_down_counter(
            MESSAGES_IN_FLIGHT,
            [self._message_callback("in_flight")],
            unit="{message}",
            description="Deliveries being processed",
        )
        self.duration = meter.create_histogram(
            MESSAGE_DURATION,
            unit="s",
            description="Time a delivery spent being processed",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            CIRCUIT_STATE,
            [self._circuit_states],
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_counter(
            CIRCUIT_TRANSITIONS,
            [self._circuit_transitions],
            unit="{transition}",
            description="Circuit breaker changes of state",
        )
        meter.create_observable_gauge(
            CONNECTION_UP,
            [self._connections],
            description="1 while the backend is connected, 0 otherwise",
        )

    def add_messages(self, table: MessageMetrics) -> None:
        self.messages.append(table)

    def _message_callback(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[tuple[tuple[str, str], ...], list[Any]] = {}
            for table in list(self.messages):
                for series in table.all_series():
                    key = tuple(series.attributes.items())
                    entry = totals.get(key)
                    if entry is None:
                        totals[key] = [getattr(series, field), series.attributes]
                    else:
                        entry[0] += getattr(series, field)
            return [Observation(value, attributes) for value, attributes in totals.values()]

        return observe

    def _circuit_states(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for circuit in list(self.circuits):
            value = CIRCUIT_STATE_VALUES.get(getattr(circuit.breaker.state, "name", ""))
            if value is not None:
                observations.append(Observation(value, circuit.attributes))
        return observations

    def _circuit_transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {**circuit.attributes, "from": old, "to": new})
            for circuit in list(self.circuits)
            for (old, new), count in list(circuit.transitions.items())
        ]

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for connection in list(self.connections):
            try:
                up = 1 if connection.is_connected() else 0
            except Exception:
                up = 0
            observations.append(Observation(up, connection.attributes))
        return observations


# One registry per meter provider, so that instruments are created once per provider (the
# SDK warns about, and drops the callbacks of, a second observable instrument of one name).
_registries: weakref.WeakKeyDictionary[MeterProvider, _Registry] = weakref.WeakKeyDictionary()
_global_registry: _Registry | None = None
_registries_lock = threading.Lock()


def _registry(meter_provider: MeterProvider | None) -> _Registry:
    global _global_registry
    _check_meter_provider(meter_provider)
    with _registries_lock:
        if meter_provider is None:
            # The global provider's meter is a proxy until the application sets a provider,
            # and then forwards to it: one registry serves both.
            if _global_registry is None:
                _global_registry = _Registry(get_meter())
            return _global_registry
        registry = _registries.get(meter_provider)
        if registry is None:
            registry = _registries[meter_provider] = _Registry(get_meter(meter_provider))
        return registry
