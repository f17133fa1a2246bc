"""Building a copy's properties: what every retry and dead letter costs before its publish.

Times, with `timeit`, the functions a backend calls per copy on a realistic message (six
headers, as a traced message arrives on a quorum queue):

- `retry_properties`: the retry copy's properties (`foxwork.backends.base`);
- `copy_properties`: a dead letter's properties, from the headers `Message.dead_letter`
  builds;
- `to_amqp_properties`: the RabbitMQ backend's conversion of either to pamqp properties;
- `retry + amqp`: both, the whole per-copy cost on the RabbitMQ backend.

Each is timed outside any span (as under `foxwork_retry`, the failure-storm candidate with
no telemetry) and inside a recording span of an SDK tracer provider (as under
`TracingMiddleware`). Prints the best of `--rounds` runs in µs per call.

Usage:
    python -m benchmarks.copy_properties [--number N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import timeit
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from foxwork import Message, MessageProperties, wire
from foxwork.backends.base import copy_properties, retry_properties
from foxwork.backends.memory import MemoryBackend
from foxwork.backends.rabbitmq.convert import to_amqp_properties

DEFAULT_NUMBER = 20_000
DEFAULT_ROUNDS = 5

#: Six headers, as a traced message arrives on a quorum queue.
HEADERS: dict[str, Any] = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "x-request-id": "6f1c2d7e-3b4a-4f5e-9a8b-1c2d3e4f5a6b",
    "x-tenant": "acme",
    "x-source": "billing-api",
    "x-schema-version": 3,
    "x-delivery-count": 1,
}


def sample_message() -> Message[Any]:
    properties = MessageProperties(
        content_type="application/json",
        message_id="order-42",
        correlation_id="req-6f1c2d7e",
        app_id="billing-api",
        headers=dict(HEADERS),
    )
    return Message(
        b'{"order": 42, "amount": "19.90"}',
        settler=MemoryBackend(),
        properties=properties,
        queue="orders",
        routing_key="order.created",
        exchange="events",
    )


@contextlib.contextmanager
def active_span(traced: bool) -> Iterator[None]:
    if not traced:
        yield
        return
    tracer = TracerProvider().get_tracer("benchmarks.copy_properties")
    with tracer.start_as_current_span("process"):
        yield


def cases(message: Message[Any]) -> dict[str, Callable[[], object]]:
    dead_letter = wire.dead_letter_headers(
        message.headers,
        routing_key=message.routing_key,
        exchange=message.exchange,
        queue=message.queue,
        reason="failed",
        final_attempt=message.attempt,
    )
    retry = retry_properties(message)
    return {
        "retry_properties": lambda: retry_properties(message),
        "copy_properties": lambda: copy_properties(message, dead_letter),
        "to_amqp_properties": lambda: to_amqp_properties(retry),
        "retry + amqp": lambda: to_amqp_properties(retry_properties(message)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=DEFAULT_NUMBER)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args(argv)
    message = sample_message()
    print(f"{'':22}{'no span':>12}{'in a span':>12}   (µs per call, best of {args.rounds})")
    rows: dict[str, list[float]] = {}
    for traced in (False, True):
        with active_span(traced):
            for name, call in cases(message).items():
                best = min(timeit.repeat(call, number=args.number, repeat=args.rounds))
                rows.setdefault(name, []).append(best / args.number * 1e6)
    for name, (plain, traced_us) in rows.items():
        print(f"{name:22}{plain:12.2f}{traced_us:12.2f}")


if __name__ == "__main__":
    main()
