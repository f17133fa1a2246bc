"""The topology foxwork declares on a real broker: conflicts explained, idempotent
declaration, exchange bindings, and a consumer that comes back after the broker cancels it."""

from __future__ import annotations

import pytest

from foxwork import DeadLetter, Message, MessageProperties, PublishNotConfirmed, TopologyConflict
from foxwork.backends.rabbitmq import RabbitMQBackend

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while, wait_until


async def test_declaring_an_existing_classic_queue_as_quorum_names_the_argument_and_the_fix(
    make_backend: BackendFactory, queue_name: str
) -> None:
    # Given the topology of a queue declared as classic
    classic = await make_backend(queue_type="classic")
    await classic.declare(queue_name)

    # When a backend configured for quorum declares it
    other = f"{queue_name}-other"
    quorum = await make_backend(queue=[queue_name, other], queue_type="quorum")
    with pytest.raises(TopologyConflict) as raised:
        await quorum.declare(queue_name)

    # Then the error names the argument, both values and the fix
    message = str(raised.value)
    assert "x-queue-type" in message
    assert "'classic'" in message and "'quorum'" in message
    assert "set queue_type to match the existing queue" in message
    # and that backend still declares and publishes (the closed channel was replaced)
    await quorum.declare(other)
    await quorum.publish(other, b"{}", MessageProperties(message_id="ok"))


async def test_a_queue_created_without_foxworks_dead_letter_arguments_is_a_conflict(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a queue another application declared, durable, without arguments
    await probe.declare_plain_queue(queue_name)

    # When foxwork declares its topology
    with pytest.raises(TopologyConflict) as raised:
        await backend.declare(queue_name)

    # Then the error names the missing dead-letter argument and says what to do
    message = str(raised.value)
    assert f"queue '{queue_name}'" in message
    assert "x-dead-letter-exchange" in message
    assert "declared without foxwork's dead-letter settings" in message
    assert "delete it" in message


async def test_declaring_the_topology_twice_is_idempotent(
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a queue whose topology was declared, and holds a message
    first = await make_backend()
    await first.declare(queue_name)
    await first.publish(queue_name, b"{}", MessageProperties(message_id="kept"))

    # When it is declared again, by the same backend and by a new one
    await first.declare(queue_name)
    second = await make_backend()
    await second.declare(queue_name)

    # Then nothing changed: the message is still there, and the queue works end to end
    assert await probe.ready(queue_name) == 1
    assert await probe.ready(f"{queue_name}-dlq") == 0
    worker = Recorder(fail_while(lambda m: m.attempt == 1))
    await start_pool(second, worker)
    await worker.wait_processed("kept")
    assert [d.retry_attempt for d in worker.of("kept")] == [None, 1]


async def test_an_exchange_and_binding_keys_route_matching_messages_to_the_worker(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a queue bound to a topic exchange with the key "order.*"
    exchange = f"{queue_name}-events"
    backend = await make_backend(exchange=exchange, exchange_type="topic", binding_keys=["order.*"])

    async def reject_cancelled(message: Message[object]) -> None:
        if message.routing_key == "order.cancelled":
            raise DeadLetter("cancelled orders are not handled here")

    worker = Recorder(reject_cancelled)
    await start_pool(backend, worker)

    # When messages are published to the exchange with matching and other keys
    await backend.publish(
        "order.created", b"{}", MessageProperties(message_id="created"), exchange=exchange
    )
    await backend.publish(
        "order.cancelled", b"{}", MessageProperties(message_id="cancelled"), exchange=exchange
    )
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await backend.publish(
            "invoice.created", b"{}", MessageProperties(message_id="invoice"), exchange=exchange
        )

    # Then the matching ones reach the worker, with their exchange and routing key
    await worker.wait_for(lambda r: len(r.deliveries) == 2, what="both order messages arrive")
    [created] = worker.of("created")
    assert (created.exchange, created.routing_key) == (exchange, "order.created")
    assert worker.processed == ["created"]
    # and a dead letter names the exchange and routing key it came through
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.headers["x-original-exchange"] == exchange
    assert dead.headers["x-original-routing-key"] == "order.cancelled"
    assert dead.headers["x-original-queue"] == queue_name


async def test_a_consumer_cancelled_by_the_broker_is_re_established(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool consuming a queue
    worker = Recorder()
    pool = await start_pool(backend, worker)
    await probe.publish(b"{}", routing_key=queue_name, message_id="before")
    await worker.wait_processed("before")

    # When the queue is deleted under it (the broker cancels the consumer)
    await probe.delete_queues(queue_name)

    # Then the backend declares the queue again and consumes it again
    async def consuming_again() -> bool:
        return await probe.exists(queue_name) and pool.health()["consuming"] == [queue_name]

    await wait_until(consuming_again, what="the consumer is re-established")
    assert pool.health()["backend"]["consumers"] == {queue_name: True}
    # and a new message is processed
    await probe.publish(b"{}", routing_key=queue_name, message_id="after")
    await worker.wait_processed("after")
    assert worker.processed == ["before", "after"]


async def test_a_retried_message_keeps_the_exchange_and_routing_key_it_was_published_with(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a queue bound to an exchange, and a worker that always fails
    exchange = f"{queue_name}-events"
    backend = await make_backend(exchange=exchange, binding_keys=["order.*"])
    worker = Recorder(fail_while(lambda m: True))
    await start_pool(backend, worker)

    # When a message published to the exchange fails all three attempts
    await backend.publish(
        "order.created", b"{}", MessageProperties(message_id="doomed"), exchange=exchange
    )
    await worker.wait_for(lambda r: len(r.deliveries) == 3, what="three attempts")
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)

    # Then every attempt saw where it was published, and so does the dead letter
    assert [(d.exchange, d.routing_key) for d in worker.deliveries] == 3 * [
        (exchange, "order.created")
    ]
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.headers["x-original-exchange"] == exchange
    assert dead.headers["x-original-routing-key"] == "order.created"
