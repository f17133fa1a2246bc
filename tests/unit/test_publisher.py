"""`Publisher` and `Message.publish()` on the in-memory backend: encoding and content types,
message ids, refusals, `publish_many` outcomes, and downstream publishes confirmed before
the inbound message is acked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from foxwork import (
    Message,
    MessageProperties,
    OutboundMessage,
    Publisher,
    PublishNotConfirmed,
    SettleState,
    Worker,
    WorkerPool,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware


class Order(BaseModel):
    sku: str
    qty: int


@pytest.fixture
async def backend(queue_name: str) -> MemoryBackend:
    backend = MemoryBackend(queues=[queue_name])
    await backend.connect()
    return backend


@pytest.mark.parametrize(
    ("payload", "body", "content_type"),
    [
        (Order(sku="A-1", qty=2), b'{"sku":"A-1","qty":2}', "application/json"),
        ({"sku": "A-1"}, b'{"sku":"A-1"}', "application/json"),
        ([1, 2], b"[1,2]", "application/json"),
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
        (b"\x00\x01", b"\x00\x01", "application/octet-stream"),
    ],
)
async def test_a_payload_is_encoded_with_the_content_type_of_its_type(
    backend: MemoryBackend, queue_name: str, payload: Any, body: bytes, content_type: str
) -> None:
    await Publisher(backend).publish(payload, routing_key=queue_name)

    [stored] = backend.messages(queue_name)
    assert stored.body == body
    assert stored.properties.content_type == content_type


async def test_a_message_gets_a_fresh_id_unless_it_is_given_one(
    backend: MemoryBackend, queue_name: str
) -> None:
    publisher = Publisher(backend)

    first = await publisher.publish(1, routing_key=queue_name)
    second = await publisher.publish(1, routing_key=queue_name)
    given = await publisher.publish(1, routing_key=queue_name, message_id="order-7")

    assert first != second and given == "order-7"
    assert [m.properties.message_id for m in backend.messages(queue_name)] == [
        first,
        second,
        "order-7",
    ]


async def test_the_properties_are_set_from_the_arguments(
    backend: MemoryBackend, queue_name: str
) -> None:
    await Publisher(backend).publish(
        "x",
        routing_key=queue_name,
        headers={"tenant": "acme"},
        priority=5,
        expiration=1.5,
        persistent=False,
    )

    [stored] = backend.messages(queue_name)
    assert stored.properties.priority == 5
    assert stored.properties.expiration == "1500"
    assert stored.properties.delivery_mode == 1
    assert stored.headers["tenant"] == "acme"
    assert stored.properties.timestamp is not None


async def test_an_unserialisable_payload_raises_type_error_naming_it_and_sends_nothing(
    backend: MemoryBackend, queue_name: str
) -> None:
    with pytest.raises(TypeError, match="type set"):
        await Publisher(backend).publish({1, 2}, routing_key=queue_name)
    assert backend.messages(queue_name) == []


async def test_an_unroutable_message_is_not_confirmed(backend: MemoryBackend) -> None:
    with pytest.raises(PublishNotConfirmed, match="'nowhere'"):
        await Publisher(backend).publish(1, routing_key="nowhere")


async def test_publish_many_reports_each_outcome_without_raising(
    backend: MemoryBackend, queue_name: str
) -> None:
    # Given good messages around an unroutable one and an unserialisable one
    items = [OutboundMessage(i, queue_name) for i in range(5)]
    items.insert(2, OutboundMessage(1, "nowhere", message_id="lost"))
    items.insert(4, OutboundMessage(object(), queue_name, message_id="bad"))

    # When they are published with two in flight at a time
    outcomes = await Publisher(backend).publish_many(items, max_in_flight=2)

    # Then each has its outcome, in order, and the good ones are all in the queue
    assert [o.confirmed for o in outcomes] == [True, True, False, True, False, True, True]
    assert outcomes[2].message_id == "lost"
    assert isinstance(outcomes[2].error, PublishNotConfirmed)
    assert outcomes[4].message_id == "bad" and isinstance(outcomes[4].error, TypeError)
    assert [m.body for m in backend.messages(queue_name)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_publish_many_refuses_a_bound_below_one(backend: MemoryBackend) -> None:
    with pytest.raises(ValueError, match="max_in_flight=0"):
        await Publisher(backend).publish_many([], max_in_flight=0)


# -- downstream publishes ----------------------------------------------------------------


class Journal(MemoryBackend):
    """A memory backend that writes down confirmed publishes and acks, in order, and refuses
    every publish to routing key "refused"."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        await asyncio.sleep(0.01)  # a confirm takes a while
        if routing_key == "refused":
            raise PublishNotConfirmed(f"the broker refused the publish to {routing_key!r}")
        await super().publish(routing_key, body, properties, exchange=exchange)
        assert properties is not None
        self.events.append(f"confirmed {properties.message_id}")

    async def ack_message(self, message: Message[Any]) -> None:
        self.events.append(f"ack {message.id}")
        await super().ack_message(message)


class Fanout(Worker[Any]):
    """Publishes each number of the payload downstream to `target`."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.attempts: list[int] = []

    async def process(self, message: Message[Any]) -> None:
        self.attempts.append(message.attempt)
        for n in message.payload:
            await message.publish(n, routing_key=self.target)


async def _run_pool(backend: MemoryBackend, worker: Worker[Any], queue: str) -> None:
    pool = WorkerPool(
        workers=[worker],
        queues=[queue],
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=3, initial_backoff=0.001, jitter=0.0),
        ],
    )
    await pool.start(backend)
    try:
        await backend.join(queue, timeout=10)
    finally:
        await pool.shutdown(timeout=5)


async def test_downstream_publishes_are_confirmed_before_the_inbound_message_is_acked(
    queue_name: str,
) -> None:
    # Given a handler that publishes three messages downstream
    backend = Journal(queues=[queue_name, "out"])
    await backend.connect()
    await backend.add_message(queue_name, [1, 2, 3], MessageProperties(message_id="in-1"))

    # When the pool processes the inbound message
    await _run_pool(backend, Fanout("out"), queue_name)

    # Then each downstream message has an id derived from the inbound one and its index,
    # and all were confirmed before the inbound message was acked
    assert backend.events == [
        "confirmed in-1:0",
        "confirmed in-1:1",
        "confirmed in-1:2",
        "ack in-1",
    ]
    assert [m.body for m in backend.messages("out")] == [b"1", b"2", b"3"]


async def test_a_refused_downstream_publish_retries_the_inbound_message_and_never_acks_it(
    queue_name: str,
) -> None:
    # Given a handler whose downstream publish the broker refuses
    backend = Journal(queues=[queue_name])
    await backend.connect()
    await backend.add_message(queue_name, [1], MessageProperties(message_id="in-1"))
    worker = Fanout("refused")

    # When the pool processes it with three attempts
    await _run_pool(backend, worker, queue_name)

    # Then every attempt failed and was retried, then dead-lettered; never acked as processed
    assert worker.attempts == [1, 2, 3]
    assert not any(event.startswith("confirmed") for event in backend.events)
    [dead] = backend.dead_letters(queue_name)
    assert "refused" in dead.headers["x-failure-reason"]


async def test_a_retried_message_republishes_the_same_downstream_ids(queue_name: str) -> None:
    # Given a handler that publishes downstream, then fails on its first attempt
    backend = Journal(queues=[queue_name, "out"])
    await backend.connect()
    await backend.add_message(queue_name, [1], MessageProperties(message_id="in-1"))

    class FailOnce(Fanout):
        async def process(self, message: Message[Any]) -> None:
            await super().process(message)
            if message.attempt == 1:
                raise RuntimeError("after publishing")

    # When the pool processes it
    await _run_pool(backend, FailOnce("out"), queue_name)

    # Then the retry published the same id again (at-least-once; deduplicated downstream)
    assert [m.properties.message_id for m in backend.messages("out")] == ["in-1:0", "in-1:0"]


async def _take(backend: MemoryBackend, queue: str) -> list[Message[Any]]:
    """The deliveries of `queue`, taken from a consumer and left unsettled."""
    received: list[Message[Any]] = []

    class Collect:
        async def dispatch(self, message: Message[Any]) -> None:
            received.append(message)

        def try_dispatch(self, message: Message[Any]) -> bool:
            received.append(message)
            return True

    consumer = await backend.consume(queue, Collect(), prefetch=10)
    await asyncio.sleep(0)
    await consumer.cancel()
    return received


async def test_ack_waits_for_downstream_publishes_still_in_flight(queue_name: str) -> None:
    # Given two messages, each with a downstream publish run as a task nobody awaits: one
    # confirmed late, one refused late
    backend = Journal(queues=[queue_name, "out"])
    await backend.connect()
    for inbound in ("in-ok", "in-refused"):
        await backend.add_message(queue_name, 0, MessageProperties(message_id=inbound))
    ok, refused = await _take(backend, queue_name)
    tasks = [
        asyncio.create_task(ok.publish(1, routing_key="out")),
        asyncio.create_task(refused.publish(1, routing_key="refused")),
    ]
    await asyncio.sleep(0)

    # When both are acked while their publishes are in flight
    await ok.ack()
    await refused.ack()
    await asyncio.gather(*tasks, return_exceptions=True)

    # Then the ack came after the confirm, and the refused one went back to its queue
    assert backend.events == ["confirmed in-ok:0", "ack in-ok"]
    assert ok.state is SettleState.ACKED
    assert refused.state is SettleState.REQUEUED
    assert [m.properties.message_id for m in backend.messages(queue_name)] == ["in-refused"]


async def test_publishing_downstream_of_a_settled_message_is_refused(
    backend: MemoryBackend, queue_name: str
) -> None:
    await backend.add_message(queue_name, 0)
    [message] = await _take(backend, queue_name)
    await message.ack()

    with pytest.raises(RuntimeError, match="settled already"):
        await message.publish(1, routing_key=queue_name)
