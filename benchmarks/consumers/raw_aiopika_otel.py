"""Raw aio-pika with the telemetry written by hand: what a team without foxwork would run.

Per message, in the `queue.consume` callback (one task per delivery, as `raw_aiopika`):

- extract the W3C trace context from the message's headers (the global propagator: W3C
  trace context and baggage), unconditionally, as hand-written code does;
- one CONSUMER span `"{queue} process"`, current while the message is handled, with the
  attributes foxwork's `TracingMiddleware` sets (messaging semantic conventions: system,
  destination, operation type and the older operation, message id, body size, routing key,
  delivery tag, conversation id when there is a correlation id; and the attempt and worker
  id under `foxwork.`, so that both produce spans of the same size);
- `json.loads(body)`, then one `basic.ack`;
- one record of a duration histogram (seconds, the same bucket boundaries), with the
  attributes `queue` and `worker`.

The OpenTelemetry SDK set-up is `foxwork_full`'s, imported from it so that both export
alike: a `TracerProvider` with a `BatchSpanProcessor` around an exporter that drops the
spans, and a `MeterProvider` with a periodic reader (10 s) whose exporter drops the data.
(Importing that module imports foxwork: only the peak RSS column sees it.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from foxwork.telemetry import DURATION_BUCKETS  # the same buckets, not re-typed

from ._common import Stop, main
from .foxwork_full import telemetry

#: The worker id the spans and metrics carry (foxwork puts its worker's id there).
WORKER_ID = "raw-otel"


async def start(args: argparse.Namespace) -> Stop:
    tracer_provider, meter_provider = telemetry()
    tracer = tracer_provider.get_tracer("orders-consumer")
    duration = meter_provider.get_meter("orders-consumer").create_histogram(
        "messages.duration",
        unit="s",
        description="Time a delivery spent being processed",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    span_name = f"{args.queue} process"
    metric_attributes = {"queue": args.queue, "worker": WORKER_ID}

    connection = await aio_pika.connect(args.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=args.prefetch)
    queue = await channel.declare_queue(args.queue, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        began = time.perf_counter()
        headers: dict[str, Any] = message.headers or {}
        parent = propagate.extract(headers)
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": args.queue,
            "messaging.operation.type": "process",
            "messaging.operation": "process",
            "messaging.message.id": message.message_id or "",
            "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
            "messaging.message.body.size": len(message.body),
            "foxwork.message.attempt": int(headers.get("x-retry-attempt", 0) or 0) + 1,
            "foxwork.worker.id": WORKER_ID,
        }
        if message.delivery_tag:
            attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
        if message.correlation_id:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        with tracer.start_as_current_span(
            span_name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            json.loads(message.body)
            await message.ack()
        duration.record(time.perf_counter() - began, metric_attributes)

    await queue.consume(on_message)

    async def stop() -> None:
        await connection.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return stop


if __name__ == "__main__":
    sys.exit(main("raw_aiopika_otel", start))
