"""OpenTelemetry in foxwork: every tracer, meter, metric and attribute name in one place
(`foxwork.telemetry.names`), and the tools around them.

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
- `QueueDepthSampler(backend, queues)`: `foxwork.queue.depth`, the messages waiting in
  each queue to be delivered (`Backend.queue_depth`), sampled every 15 s
  (`QUEUE_DEPTH_INTERVAL`), with the attribute `messaging.destination.name`; a queue whose
  last sample failed is not reported. `foxwork run --http-port` runs one for every queue
  it consumes.

Log correlation: `MessageLogFilter` adds `message_id`, `attempt`, `trace_id` and `span_id`
to log records emitted while `TracingMiddleware` processes a message.

Prometheus: `foxwork.telemetry.prometheus` holds `PrometheusReader`, a metric reader that
renders the Prometheus text format (served by `foxwork.http.HealthServer` on `/metrics`).
It is imported on its own, not from here, because it loads the OpenTelemetry SDK.

Nothing here sets a global provider. Every entry point takes an optional `tracer_provider`
or `meter_provider` and otherwise uses the global one (a no-op until the application sets
one).
"""

from __future__ import annotations

from . import names
from ._context import (
    HEADER_GETTER,
    HeaderGetter,
    MessageLogFilter,
    current_message,
    enter_message,
    exit_message,
    get_tracer,
    inject_context,
)
from ._depth import QUEUE_DEPTH_INTERVAL, QueueDepthSampler
from ._metrics import (
    MessageMetrics,
    MessageSeries,
    get_meter,
    observe_circuit,
    observe_connection,
    observe_queue_depths,
)
from .names import *  # noqa: F403  (every name; see `names.__all__`)

__all__ = [
    "HEADER_GETTER",
    "QUEUE_DEPTH_INTERVAL",
    "HeaderGetter",
    "MessageLogFilter",
    "MessageMetrics",
    "MessageSeries",
    "QueueDepthSampler",
    "current_message",
    "enter_message",
    "exit_message",
    "get_meter",
    "get_tracer",
    "inject_context",
    "observe_circuit",
    "observe_connection",
    "observe_queue_depths",
]
__all__ += names.__all__
