"""Metrics: foxwork's meter, the per-message counts and the observable instruments that
report them, circuit breakers and connections."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from ..errors import ConfigurationError
from .names import (
    ATTR_BACKEND,
    ATTR_CIRCUIT,
    ATTR_QUEUE,
    ATTR_WORKER,
    CIRCUIT_STATE,
    CIRCUIT_STATE_VALUES,
    CIRCUIT_TRANSITIONS,
    CONNECTION_UP,
    DURATION_BUCKETS,
    INSTRUMENTATION_NAME,
    MESSAGE_DURATION,
    MESSAGES_DEAD_LETTERED,
    MESSAGES_DROPPED,
    MESSAGES_FAILED,
    MESSAGES_IN_FLIGHT,
    MESSAGES_PROCESSED,
    MESSAGES_RECEIVED,
    MESSAGES_RETRIED,
    MESSAGING_DESTINATION_NAME,
    QUEUE_DEPTH,
    VERSION,
)

__all__ = [
    "MessageMetrics",
    "MessageSeries",
    "get_meter",
    "observe_circuit",
    "observe_connection",
    "observe_queue_depths",
]


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """foxwork's meter from `meter_provider`, or from the global provider."""
    _check_meter_provider(meter_provider)
    return metrics.get_meter(INSTRUMENTATION_NAME, VERSION, meter_provider=meter_provider)


def _check_meter_provider(meter_provider: object) -> None:
    if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
        raise ConfigurationError(
            f"meter_provider={meter_provider!r} is not an OpenTelemetry MeterProvider: "
            "pass opentelemetry.sdk.metrics.MeterProvider(...), or None for the global one"
        )


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


def observe_queue_depths(
    depths: Callable[[], Mapping[str, int]], *, meter_provider: MeterProvider | None = None
) -> Callable[[], None]:
    """Report `foxwork.queue.depth` for each queue of `depths()` (queue → messages), under
    the attribute `messaging.destination.name`.

    `depths` is called at every collection and must be cheap: it returns depths sampled
    before (see `QueueDepthSampler`), it does not ask the broker. A queue missing from
    it is not reported. Returns a function that stops the reporting.
    """
    registry = _registry(meter_provider)
    registry.depths.add(depths)
    return lambda: registry.depths.discard(depths)


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
        self.depths: set[Callable[[], Mapping[str, int]]] = set()
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
        meter.create_observable_gauge(
            QUEUE_DEPTH,
            [self._queue_depths],
            unit="{message}",
            description="Messages waiting in the queue to be delivered, sampled",
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

    def _queue_depths(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        for depths in list(self.depths):
            try:
                sampled = dict(depths())
            except Exception:
                continue
            # Two sources sampling one queue see the same queue: the last one wins.
            totals.update(sampled)
        return [
            Observation(depth, {MESSAGING_DESTINATION_NAME: queue})
            for queue, depth in totals.items()
        ]


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
