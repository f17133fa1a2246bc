"""What `DeadLetterQueue` makes of a dead letter's AMQP properties, field by field: the
`DeadLetterInfo` that list, show and replay see, and the exact properties of the copy a
replay publishes (read raw, as pamqp decodes them), for a dead letter with every property
set and for one with none but its headers."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic

from foxwork import wire
from foxwork.backends.rabbitmq.dlq import DeadLetterQueue
from foxwork.deadletter import DeadLetterInfo

from .support import RabbitProbe

#: A queue name of this module's own.
QUEUE = f"orders-{uuid.uuid4().hex[:8]}"
STAMP = datetime.datetime(2024, 5, 1, 12, 0, 1, tzinfo=datetime.UTC)

#: The failure's headers, dropped from a replayed copy; `x-tenant` stays.
HEADERS: dict[str, Any] = {
    wire.ORIGINAL_QUEUE: QUEUE,
    wire.ORIGINAL_ROUTING_KEY: "orders.created",
    wire.ORIGINAL_EXCHANGE: "shop",
    wire.FAILURE_REASON: "could not price",
    wire.EXCEPTION_TYPE: "shop.PricingError",
    wire.FINAL_ATTEMPT: 3,
    wire.FAILED_AT: "2024-05-01T12:00:00+00:00",
    wire.RETRY_ATTEMPT: 2,
    "x-tenant": "acme",
}

FULL = Basic.Properties(
    content_type="application/json",
    content_encoding="gzip",
    headers=HEADERS,
    delivery_mode=1,
    priority=7,
    correlation_id="corr-1",
    reply_to="replies",
    message_id="full-1",
    timestamp=STAMP,
    message_type="order.created",
    user_id="guest",
    app_id="shop",
)
#: Nothing but the headers and a message id (aiormq makes one up for a message without),
#: and an empty string and a zero, which read as absent.
BARE = Basic.Properties(headers=HEADERS, message_id="bare-1", correlation_id="", priority=0)


def info(message_id: str, properties: dict[str, Any], body: bytes) -> DeadLetterInfo:
    return DeadLetterInfo(
        id=message_id,
        queue=QUEUE,
        routing_key="orders.created",
        exchange="shop",
        reason="could not price",
        exception_type="shop.PricingError",
        final_attempt=3,
        failed_at="2024-05-01T12:00:00+00:00",
        source="foxwork",
        headers=HEADERS,
        body=body,
        properties=properties,
    )


FULL_INFO = info(
    "full-1",
    {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "correlation_id": "corr-1",
        "reply_to": "replies",
        "priority": 7,
        "app_id": "shop",
        "type": "order.created",
        "timestamp": "2024-05-01T12:00:01+00:00",
    },
    b"full body",
)
BARE_INFO = info(
    "bare-1",
    {
        "content_type": None,
        "content_encoding": None,
        "correlation_id": None,
        "reply_to": None,
        "priority": 0,
        "app_id": None,
        "type": None,
        "timestamp": None,
    },
    b"",
)

#: The copies' properties, exactly: persistent, the failure's headers gone, no expiration
#: nor cluster id; priority 0 when the dead letter had none.
KEPT_HEADERS: dict[str, Any] = {"x-tenant": "acme"}
FULL_COPY = Basic.Properties(
    content_type="application/json",
    content_encoding="gzip",
    headers=KEPT_HEADERS,
    delivery_mode=2,
    priority=7,
    correlation_id="corr-1",
    reply_to="replies",
    message_id="full-1",
    timestamp=STAMP,
    message_type="order.created",
    user_id="guest",
    app_id="shop",
)
BARE_COPY = Basic.Properties(headers=KEPT_HEADERS, delivery_mode=2, priority=0, message_id="bare-1")


def attributes(properties: Basic.Properties) -> dict[str, Any]:
    return {name: getattr(properties, name) for name in Basic.Properties.attributes()}


@pytest.fixture
async def orders(rabbitmq_url: str, probe: RabbitProbe) -> AsyncIterator[str]:
    """The `QUEUE` queue and its DLQ, holding the full dead letter, then the bare one."""
    await probe.declare_plain_queue(QUEUE)
    await probe.declare_plain_queue(f"{QUEUE}-dlq")
    async with probe.channel() as channel:
        raw = await channel.get_underlay_channel()
        for body, properties in ((b"full body", FULL), (b"", BARE)):
            await raw.basic_publish(body, routing_key=f"{QUEUE}-dlq", properties=properties)
    yield rabbitmq_url
    await probe.delete_queues(QUEUE, f"{QUEUE}-dlq")


async def test_list_and_show_read_every_property_as_stored(orders: str) -> None:
    async with DeadLetterQueue(orders, QUEUE) as dlq:
        listed = await dlq.list()
        shown = await dlq.show("full-1")
        bare = await dlq.show("bare-1")

    assert listed == [FULL_INFO, BARE_INFO]
    assert (shown, bare) == (FULL_INFO, BARE_INFO)


@pytest.mark.parametrize("rate", [None, 1000.0], ids=["windowed", "rate-limited"])
async def test_a_replayed_copy_has_exactly_the_dead_letters_properties(
    orders: str, probe: RabbitProbe, rate: float | None
) -> None:
    async with DeadLetterQueue(orders, QUEUE) as dlq:
        result = await dlq.replay(rate=rate)

    assert (result.replayed, result.failed, result.stopped) == (["full-1", "bare-1"], [], "")
    copies = []
    async with probe.channel() as channel:
        raw = await channel.get_underlay_channel()
        for _ in range(2):
            got = await raw.basic_get(QUEUE, no_ack=True)
            assert isinstance(got.delivery, aiormq.spec.Basic.GetOk)
            copies.append((got.body, attributes(got.header.properties)))
    assert copies == [(b"full body", attributes(FULL_COPY)), (b"", attributes(BARE_COPY))]
    assert await probe.ready(f"{QUEUE}-dlq") == 0
