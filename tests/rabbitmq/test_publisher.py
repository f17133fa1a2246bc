"""`Publisher` and `Message.publish()` on a real broker: confirms, unroutable messages, a
missing exchange, pipelined confirms, and consume-transform-produce."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foxwork import Message, OutboundMessage, Publisher, PublishNotConfirmed, Worker
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Received, Recorder


async def test_a_published_message_is_confirmed_and_consumed_as_sent(
    backend: RabbitMQBackend, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a declared queue and a publisher over the backend
    await backend.declare(queue_name)
    publisher = Publisher(backend)

    # When a JSON payload is published
    message_id = await publisher.publish(
        {"sku": "A-1"}, routing_key=queue_name, headers={"tenant": "acme"}, priority=3
    )
    worker = Recorder()
    await start_pool(backend, worker)
    await worker.wait_processed(message_id)

    # Then the worker sees it decoded, with its id, headers and properties
    [delivery] = worker.deliveries
    assert delivery.payload == {"sku": "A-1"}
    assert delivery.message_id == message_id
    assert delivery.headers["tenant"] == "acme"
    assert delivery.properties.content_type == "application/json"
    assert delivery.properties.priority == 3
    assert delivery.properties.delivery_mode == 2


async def test_a_publisher_of_its_own_declares_no_queue_and_closes_its_connection(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a queue declared by a consumer
    await backend.declare(queue_name)

    # When a publish-only application publishes through a connection of its own
    async with await Publisher.connect(rabbitmq_url) as publisher:
        await publisher.publish("hello", routing_key=queue_name, message_id="m-1")
        assert publisher.backend.is_connected

    # Then the message is in the queue, and the connection is closed
    assert not publisher.backend.is_connected
    [received] = await probe.take(queue_name)
    assert received.body == b"hello" and received.message_id == "m-1"


async def test_a_missing_exchange_is_not_confirmed_and_names_it_while_other_publishes_succeed(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a declared queue
    await backend.declare(queue_name)
    publisher = Publisher(backend)

    # When one publish goes to a missing exchange among many in flight to the queue
    items = [OutboundMessage(i, queue_name, message_id=f"ok-{i}") for i in range(100)]
    items.insert(50, OutboundMessage("lost", "anything", exchange="no-such-exchange"))
    outcomes = await publisher.publish_many(items)

    # Then that one fails, naming the exchange and routing key; every other is confirmed
    failed = [o for o in outcomes if not o.confirmed]
    assert len(failed) == 1
    assert isinstance(failed[0].error, PublishNotConfirmed)
    assert "no-such-exchange" in str(failed[0].error) and "anything" in str(failed[0].error)
    await probe.wait_for_ready(queue_name, 100)
    with pytest.raises(PublishNotConfirmed, match="no-such-exchange"):
        await publisher.publish("lost", routing_key="k", exchange="no-such-exchange")


async def test_an_unroutable_message_is_not_confirmed(backend: RabbitMQBackend) -> None:
    publisher = Publisher(backend)
    with pytest.raises(PublishNotConfirmed, match=r"unroutable.*'nobody-listens'"):
        await publisher.publish({"a": 1}, routing_key="nobody-listens")


async def test_publish_many_confirms_a_thousand_messages(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a declared queue
    await backend.declare(queue_name)
    publisher = Publisher(backend)

    # When 1,000 messages are published with 100 confirms in flight
    outcomes = await publisher.publish_many(
        (OutboundMessage({"n": i}, queue_name) for i in range(1000)), max_in_flight=100
    )

    # Then every one is confirmed, each with its own id, and all are in the queue
    assert all(o.confirmed for o in outcomes)
    assert len({o.message_id for o in outcomes}) == 1000
    await probe.wait_for_ready(queue_name, 1000)


class Transform(Worker[Any]):
    """Publishes the doubled number downstream to `target` on `exchange`."""

    def __init__(self, target: str, exchange: str = "") -> None:
        super().__init__()
        self.target = target
        self.exchange = exchange
        self.attempts: list[int] = []

    async def process(self, message: Message[Any]) -> None:
        self.attempts.append(message.attempt)
        await message.publish(
            {"n": message.payload["n"] * 2}, routing_key=self.target, exchange=self.exchange
        )


async def dead_letter_after_three_attempts(
    backend: RabbitMQBackend,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
    worker: Transform,
) -> Received:
    """Publish one inbound message `in-1`, consume it with three attempts, and return its
    dead letter once it reached the DLQ."""
    await Publisher(backend).publish({"n": 1}, routing_key=queue_name, message_id="in-1")
    await start_pool(
        backend,
        worker,
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=3, initial_backoff=0.05, jitter=0.0),
        ],
    )
    dlq = f"{queue_name}-dlq"
    await probe.wait_for_ready(dlq, 1)
    [dead] = await probe.take(dlq)
    return dead


async def test_a_handler_publishes_downstream_before_its_message_is_acked(
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a pool that consumes `queue_name` and publishes to a downstream queue
    backend = await make_backend()
    downstream = f"{queue_name}-out"
    await backend.declare(queue_name)
    await probe.declare_plain_queue(downstream)
    try:
        await Publisher(backend).publish({"n": 21}, routing_key=queue_name, message_id="in-1")
        await start_pool(backend, Transform(downstream))

        # Then the downstream message arrives with an id derived from the inbound one
        await probe.wait_for_ready(downstream, 1)
        [received] = await probe.take(downstream)
        assert received.body == b'{"n":42}' and received.message_id == "in-1:0"
    finally:
        await probe.delete_queues(downstream)


async def test_a_refused_downstream_publish_leaves_the_inbound_message_retried_not_acked(
    backend: RabbitMQBackend,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a handler whose downstream publish goes to an exchange that does not exist
    await backend.declare(queue_name)
    worker = Transform("out", exchange="no-such-exchange")

    # When the pool consumes a message, with three attempts
    dead = await dead_letter_after_three_attempts(backend, start_pool, probe, queue_name, worker)

    # Then every attempt failed and was retried, and the message ends in the DLQ, not acked
    assert worker.attempts == [1, 2, 3]
    assert dead.message_id == "in-1"
    assert "no-such-exchange" in dead.headers["x-failure-reason"]
    assert await asyncio.wait_for(probe.ready(queue_name), 5) == 0


async def test_a_downstream_publish_the_broker_nacks_leaves_the_inbound_message_retried(
    backend: RabbitMQBackend,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a downstream queue the broker refuses every publish to (it nacks them: the
    # queue is full at length 0 and rejects publishes), and a handler publishing there
    downstream = f"{queue_name}-full"
    await backend.declare(queue_name)
    await probe.declare_plain_queue(
        downstream, **{"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    worker = Transform(downstream)
    try:
        # When the pool consumes an inbound message, with three attempts
        dead = await dead_letter_after_three_attempts(
            backend, start_pool, probe, queue_name, worker
        )

        # Then no attempt was acked: each was retried after its nacked downstream publish,
        # and the last dead-lettered with the reason; nothing reached the downstream queue
        assert worker.attempts == [1, 2, 3]
        assert dead.message_id == "in-1"
        assert "nack" in dead.headers["x-failure-reason"].lower()
        assert await probe.ready(downstream) == 0
        assert await asyncio.wait_for(probe.ready(queue_name), 5) == 0
    finally:
        await probe.delete_queues(downstream)
