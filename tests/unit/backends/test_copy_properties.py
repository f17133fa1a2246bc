"""The exact properties of a retry copy and of a dead letter (`foxwork.backends.base`).

Every backend publishes what these functions build, so they pin the copy's wire format:
every property of the original but `message_id` (made explicit) and `expiration` (none),
and the headers in order, with the trace context written last.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import baggage, context, propagate
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from foxwork import Message, MessageProperties, wire
from foxwork.backends import MemoryBackend
from foxwork.backends.base import copy_properties, retry_properties
from foxwork.message import content_id
from foxwork.telemetry import enter_message, exit_message

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: A value for every property, none of them the default.
ALL_PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "gzip",
    "priority": 7,
    "expiration": "60000",
    "message_type": "order.created",
    "user_id": "guest",
    "app_id": "billing-api",
    "cluster_id": "c1",
    "reply_to": "replies",
    "correlation_id": "req-1",
    "message_id": "order-42",
    "timestamp": datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
    "delivery_mode": 1,
}


def message_with(headers: dict[str, Any], **properties: Any) -> Message[Any]:
    props = MessageProperties(**{**ALL_PROPERTIES, **properties, "headers": headers})
    return Message(
        b'{"order": 42}',
        settler=MemoryBackend(),
        properties=props,
        queue="orders",
        routing_key="order.created",
        exchange="events",
    )


def test_every_property_is_named_here() -> None:
    # A property added to MessageProperties must be added to these tests too.
    names = {field.name for field in dataclasses.fields(MessageProperties)}
    assert names == {*ALL_PROPERTIES, "headers"}


def test_a_retry_copy_keeps_every_property_but_expiration_and_drops_broker_headers() -> None:
    message = message_with(
        {
            "traceparent": TRACEPARENT,
            "x-tenant": "acme",
            "x-delivery-count": 2,
            "x-death": [{"queue": "orders", "count": 1}],
            "x-first-death-queue": "orders",
            "x-schema-version": 3,
        }
    )

    props = retry_properties(message)

    assert props == MessageProperties(
        **{**ALL_PROPERTIES, "expiration": None},
        headers={
            "traceparent": TRACEPARENT,
            "x-tenant": "acme",
            "x-schema-version": 3,
            "x-retry-attempt": 1,
            "x-original-routing-key": "order.created",
            "x-original-exchange": "events",
        },
    )
    assert list(props.headers) == [
        "traceparent",
        "x-tenant",
        "x-schema-version",
        "x-retry-attempt",
        "x-original-routing-key",
        "x-original-exchange",
    ]
    assert type(props.headers) is dict
    # The delivery's own headers are left as they were.
    assert "x-retry-attempt" not in message.headers
    assert message.headers["x-delivery-count"] == 2


def test_a_retry_of_a_retried_copy_counts_in_place_and_keeps_the_first_route() -> None:
    message = message_with(
        {
            "x-retry-attempt": 2,
            "x-original-routing-key": "order.created",
            "x-original-exchange": "events",
            "x-tenant": "acme",
            "x-delivery-count": 1,
        }
    )
    assert message.attempt == 3

    props = retry_properties(message)

    assert list(props.headers.items()) == [
        ("x-retry-attempt", 3),
        ("x-original-routing-key", "order.created"),
        ("x-original-exchange", "events"),
        ("x-tenant", "acme"),
    ]


def test_a_retry_copy_of_a_message_without_id_or_headers_names_its_content_id() -> None:
    message = message_with({}, message_id=None, expiration=None)

    props = retry_properties(message)

    assert props.message_id == content_id(message.body, message.properties) == message.id
    assert list(props.headers.items()) == [
        ("x-retry-attempt", 1),
        ("x-original-routing-key", "order.created"),
        ("x-original-exchange", "events"),
    ]


def test_a_dead_letter_gets_the_headers_given_in_order_and_leaves_them_untouched() -> None:
    message = message_with({"x-tenant": "acme"})
    headers = wire.dead_letter_headers(
        message.headers,
        routing_key=message.routing_key,
        exchange=message.exchange,
        queue=message.queue,
        reason="poison",
        final_attempt=1,
        failed_at=datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
    )
    given = dict(headers)

    props = copy_properties(message, headers)

    assert props == MessageProperties(**{**ALL_PROPERTIES, "expiration": None}, headers=given)
    assert list(props.headers) == list(given)
    assert props.headers is not headers
    assert headers == given


def test_a_copy_made_in_a_span_carries_that_span_in_place_of_the_old_one() -> None:
    message = message_with({"traceparent": TRACEPARENT, "x-tenant": "acme"})
    tracer = TracerProvider().get_tracer("test")
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("process") as span:
            retry = retry_properties(message)
            dead = copy_properties(message, {"traceparent": TRACEPARENT, "x-a": 1})
    finally:
        context.detach(token)

    ctx = span.get_span_context()
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert list(retry.headers.items()) == [
        ("traceparent", traceparent),
        ("x-tenant", "acme"),
        ("x-retry-attempt", 1),
        ("x-original-routing-key", "order.created"),
        ("x-original-exchange", "events"),
        ("baggage", "tenant=acme"),
    ]
    assert list(dead.headers.items()) == [
        ("traceparent", traceparent),
        ("x-a", 1),
        ("baggage", "tenant=acme"),
    ]


def test_a_copy_made_outside_a_span_keeps_the_trace_context_it_carries() -> None:
    message = message_with({"traceparent": TRACEPARENT, "tracestate": "a=b"})

    props = retry_properties(message)

    assert props.headers["traceparent"] == TRACEPARENT
    assert props.headers["tracestate"] == "a=b"


class TagPropagator(TraceContextTextMapPropagator):
    """Writes a header of its own even without a span."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["x-tag"] = "tagged"


@pytest.mark.parametrize("build", ["retry", "dead letter"])
def test_a_copy_made_for_a_message_being_traced_uses_its_propagator(build: str) -> None:
    message = message_with({"x-tenant": "acme"})
    token = enter_message(message, TagPropagator())
    try:
        if build == "retry":
            props = retry_properties(message)
        else:
            props = copy_properties(message, {"x-tenant": "acme"})
    finally:
        exit_message(token)

    assert list(props.headers)[-1] == "x-tag"
    assert props.headers["x-tag"] == "tagged"


def test_a_copy_made_outside_a_span_carries_the_current_baggage() -> None:
    message = message_with({"x-tenant": "acme"})
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        props = copy_properties(message, {"x-tenant": "acme"})
    finally:
        context.detach(token)

    assert list(props.headers.items()) == [("x-tenant", "acme"), ("baggage", "tenant=acme")]


def test_a_copy_made_outside_a_span_gets_what_a_global_propagator_of_its_own_writes() -> None:
    message = message_with({"x-tenant": "acme"})
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TagPropagator()]))
    try:
        props = retry_properties(message)
    finally:
        propagate.set_global_textmap(default)

    assert props.headers["x-tag"] == "tagged"
    assert retry_properties(message).headers.get("x-tag") is None
