"""OpenTelemetry tracing to the console: one CONSUMER span per message, retries in the
same trace as the first attempt.

The message arrives with a W3C `traceparent` header (as a producer instrumented with
OpenTelemetry sends it); foxwork continues that trace, and the retried copy carries the
failed attempt's context, so every attempt shows up in one trace. Run it with
`python examples/tracing_console.py` (the console exporter is the OpenTelemetry SDK's:
`pip install 'foxwork[otel]'`).
"""

import asyncio
import logging

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from foxwork import Message, MessageProperties, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware, TracingMiddleware
from foxwork.telemetry import MessageLogFilter

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class ShippingWorker(Worker[dict[str, str]]):
    async def process(self, message: Message[dict[str, str]]) -> None:
        logging.getLogger("shipping").info("booking courier for %s", message.payload["order"])
        if message.attempt == 1:
            raise TimeoutError("courier API timed out")


async def main() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(MessageLogFilter())  # adds message_id, attempt, trace_id to records
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)s trace=%(trace_id)s msg=%(message_id)s attempt=%(attempt)s %(message)s"
        )
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("foxwork").setLevel(logging.ERROR)

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))

    backend = MemoryBackend()
    props = MessageProperties(message_id="order-1001").with_header("traceparent", TRACEPARENT)
    await backend.add_message("shipping", {"order": "1001"}, props)
    pool = WorkerPool(
        workers=[ShippingWorker()],
        middleware=[
            AckNackMiddleware(),
            TracingMiddleware(tracer_provider=provider),
            RetryMiddleware(initial_backoff=0.1),
        ],
        queues=["shipping"],
    )
    async with backend:
        await pool.start(backend)
        await backend.join("shipping", timeout=10)
        await pool.shutdown()
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
