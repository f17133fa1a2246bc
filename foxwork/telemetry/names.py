"""Every name foxwork's telemetry uses: instrumentation scope, instruments, attributes."""

from __future__ import annotations

import importlib.metadata

__all__ = [
    "ATTR_BACKEND",
    "ATTR_CIRCUIT",
    "ATTR_QUEUE",
    "ATTR_WORKER",
    "CIRCUIT_STATE",
    "CIRCUIT_STATE_VALUES",
    "CIRCUIT_TRANSITIONS",
    "CONNECTION_UP",
    "DURATION_BUCKETS",
    "ERROR_TYPE",
    "FOXWORK_ATTEMPT",
    "FOXWORK_DROP_REASON",
    "FOXWORK_RETRY_DELAY",
    "FOXWORK_RETRY_LATER",
    "FOXWORK_RETRY_REASON",
    "FOXWORK_WORKER",
    "INSTRUMENTATION_NAME",
    "MESSAGES_DEAD_LETTERED",
    "MESSAGES_DROPPED",
    "MESSAGES_FAILED",
    "MESSAGES_IN_FLIGHT",
    "MESSAGES_PROCESSED",
    "MESSAGES_RECEIVED",
    "MESSAGES_RETRIED",
    "MESSAGE_DURATION",
    "MESSAGING_BODY_SIZE",
    "MESSAGING_CONVERSATION_ID",
    "MESSAGING_DELIVERY_TAG",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_ROUTING_KEY",
    "MESSAGING_SYSTEM",
    "QUEUE_DEPTH",
    "VERSION",
]

#: Name of foxwork's tracer and meter (the OpenTelemetry instrumentation scope).
INSTRUMENTATION_NAME = "foxwork"

#: foxwork's version, reported with the instrumentation scope.
try:
    VERSION = importlib.metadata.version("foxwork")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    VERSION = "0"

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
#: Gauge: messages waiting in a queue to be delivered, sampled (`QueueDepthSampler`), with
#: the attribute `messaging.destination.name`.
QUEUE_DEPTH = "foxwork.queue.depth"

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
#: The system-specific name of the operation (the older `messaging.operation` is deprecated
#: and not set).
MESSAGING_OPERATION_NAME = "messaging.operation.name"
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
#: Span event: the worker raised `RetryLater` and the message is tried again later.
FOXWORK_RETRY_LATER = "foxwork.retry_later"
#: The delay `RetryLater` asked for, in seconds (on the `foxwork.retry_later` event).
FOXWORK_RETRY_DELAY = "foxwork.retry.delay"
#: The reason given to `RetryLater`, when one was (on the `foxwork.retry_later` event).
FOXWORK_RETRY_REASON = "foxwork.retry.reason"
