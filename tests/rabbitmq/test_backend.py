"""`RabbitMQBackend` on a real broker: deliveries, confirmed publishing, copies that cannot
be confirmed, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiormq
import pytest

from foxwork import ConnectionLost, Message, MessageProperties, PublishNotConfirmed
from foxwork.backends import ResilientBackend
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.backends.rabbitmq.consumer import RabbitConsumer

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while, wait_until

pytestmark = pytest.mark.rabbitmq


async def test_a_delivery_reaches_the_worker_with_its_body_properties_and_headers(
    backend: RabbitMQBackend, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a message with every property a publisher can set
    sent = MessageProperties(
        content_type="application/json",
        priority=7,
        message_type="order.created",
        app_id="shop",
        reply_to="replies",
        correlation_id="corr-1",
        message_id="order-1",
        timestamp=datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC),
        headers={"tenant": "acme", "schema": 3, "tags": ["a", "b"]},
    )
    await backend.declare(queue_name)
    await backend.publish(queue_name, b'{"sku": "A-1", "qty": 2}', sent)
    worker = Recorder()

    # When the pool consumes it
    await start_pool(backend, worker)
    await worker.wait_processed("order-1")

    # Then the worker sees it as it was sent, decoded, on its first attempt
    [delivery] = worker.deliveries
    assert delivery.payload == {"sku": "A-1", "qty": 2}
    assert delivery.properties == sent
    assert delivery.attempt == 1 and delivery.retry_attempt is None
    assert delivery.routing_key == queue_name and delivery.exchange == ""
    assert not delivery.redelivered


async def test_publishing_to_a_queue_that_does_not_exist_is_not_confirmed(
    backend: RabbitMQBackend, queue_name: str
) -> None:
    # Given no queue named `queue_name` (nothing declared it)
    # When a message is published to it, Then the mandatory publish is not confirmed
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await backend.publish(queue_name, b"{}", MessageProperties(message_id="lost"))
    # and the backend can publish again afterwards
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", MessageProperties(message_id="kept"))


async def test_declarations_and_publishes_that_arrive_together_share_one_channel_each(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a backend that has not declared or published anything yet
    before = open_channels(backend)

    # When its queue is declared from 5 places at once
    await asyncio.gather(*(backend.declare(queue_name) for _ in range(5)))

    # Then one topology channel was opened for them all
    assert open_channels(backend) == before + 1

    # When 30 publishes arrive at once
    await asyncio.gather(
        *(
            backend.publish(queue_name, b"{}", MessageProperties(message_id=f"m-{n}"))
            for n in range(30)
        )
    )

    # Then they opened one channel between them, not one each (which would stay open,
    # unused, for the life of the connection), and every message is in the queue
    assert open_channels(backend) == before + 2
    assert await probe.ready(queue_name) == 30


def open_channels(backend: RabbitMQBackend) -> int:
    """Channels open on the backend's connection, as the AMQP client counts them."""
    connection: Any = backend._connection
    return len(connection.transport.connection.channels)


async def test_a_retry_copy_that_cannot_be_confirmed_leaves_the_original_in_the_queue(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a running pool whose worker fails every first attempt, and whose retry tier
    # is already in use
    worker = Recorder(fail_while(lambda m: m.attempt == 1))
    await start_pool(backend, worker)
    # (published from another connection, as a producer application does: a channel error
    # on the backend's publisher channel would also fail a publish of the test in flight)
    await probe.publish(b"{}", routing_key=queue_name, message_id="warm-up")
    await worker.wait_processed("warm-up")

    # When the retry exchange is deleted under it, and a message fails once
    await probe.delete_exchanges(f"{queue_name}-retry_exchange")
    await probe.publish(b"{}", routing_key=queue_name, message_id="order-1")
    await worker.wait_processed("order-1")

    # Then the unconfirmed copy sent the original back to the main queue (redelivered),
    # its next failure re-declared the retry topology, and the retry then succeeded
    deliveries = [(d.attempt, d.redelivered) for d in worker.of("order-1")]
    assert deliveries == [(1, False), (1, True), (2, False)]
    assert worker.processed == ["warm-up", "order-1"]
    assert await probe.ready(queue_name) == 0
    assert await probe.ready(f"{queue_name}-dlq") == 0


async def test_health_reports_the_consumer_and_never_the_password(
    backend: RabbitMQBackend, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a pool consuming through the backend
    pool = await start_pool(backend, Recorder())

    # When its health is read
    health = pool.health()

    # Then it shows the connection and the active consumer, and no secret
    assert health["backend"]["connected"] is True
    assert health["backend"]["consumers"] == {queue_name: True}
    assert health["consuming"] == [queue_name]
    assert "guest:guest" not in repr(health) and "guest:guest" not in repr(backend)


async def test_connecting_to_a_port_without_a_broker_fails_fast_without_leaking_the_password(
    make_backend: BackendFactory,
) -> None:
    # Given a URL with a password, on a port where nothing listens
    url = "amqp://user:s3cret@127.0.0.1:1/"

    # When the backend connects, Then it fails with ConnectionLost naming no secret
    with pytest.raises(ConnectionLost) as raised:
        await make_backend(url=url, connect_timeout=2.0)
    assert "s3cret" not in str(raised.value)
    assert "127.0.0.1:1" in str(raised.value)


# -- consumers replaced by the watchdog ------------------------------------------------

#: Seconds between the watchdog's checks in these tests (the default is 5 s).
WATCHDOG_INTERVAL = 0.05


@pytest.fixture
async def resilient(backend: RabbitMQBackend) -> AsyncIterator[ResilientBackend]:
    """`backend` wrapped in a ResilientBackend whose watchdog checks every 50 ms."""
    resilient = ResilientBackend(backend, watchdog_interval=WATCHDOG_INTERVAL)
    yield resilient
    await resilient.close()


async def consumer_count(probe: RabbitProbe, queue: str) -> int:
    """Consumers the broker has subscribed to `queue`."""
    async with probe.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.consumer_count
    assert count is not None
    return count


def rabbit_consumer(resilient: ResilientBackend) -> RabbitConsumer:
    [consumer] = resilient._consumers
    assert isinstance(consumer.inner, RabbitConsumer)
    return consumer.inner


async def test_a_consumer_whose_intake_died_is_inactive_and_the_watchdog_restores_it(
    resilient: ResilientBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool consuming through a ResilientBackend, whose consumer's intake task dies
    # on the next delivery it has to hand over (a bug in the intake, say)
    worker = Recorder()
    await start_pool(resilient, worker)
    dying = rabbit_consumer(resilient)

    class BrokenIntake:
        async def dispatch(self, message: Message[Any]) -> None:
            raise RuntimeError("bug in the hand-over")

        def try_dispatch(self, message: Message[Any]) -> bool:
            return False  # every delivery goes through the hand-over task

    dying._intake = BrokenIntake()

    # When a message arrives and kills the intake
    await probe.publish(b"{}", routing_key=queue_name, message_id="first")

    # Then that consumer reports itself inactive
    async def dead() -> bool:
        return not dying.active

    await wait_until(dead, what="the consumer with a dead intake reports inactive")

    # and the watchdog replaces it with one that works
    async def restored() -> bool:
        return rabbit_consumer(resilient) is not dying and resilient._consumers[0].active

    await wait_until(restored, what="the watchdog re-establishes the consumer")
    # and the message that met the dead intake is not stuck: it is processed, like a new one
    await probe.publish(b"{}", routing_key=queue_name, message_id="second")
    await worker.wait_processed("first", "second")


async def test_consumers_replaced_by_the_watchdog_are_forgotten_and_their_channels_closed(
    resilient: ResilientBackend,
    backend: RabbitMQBackend,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a pool consuming through a ResilientBackend
    worker = Recorder()
    await start_pool(resilient, worker)
    replaced = []

    # When its consumer is cancelled behind its back three times, and the watchdog
    # re-establishes it each time
    for _ in range(3):
        old = rabbit_consumer(resilient)
        assert old._channel is not None and old._tag is not None
        await old._channel.basic_cancel(old._tag)

        async def replaced_by_a_new_one(old: RabbitConsumer = old) -> bool:
            return rabbit_consumer(resilient) is not old and resilient._consumers[0].active

        await wait_until(replaced_by_a_new_one, what="the watchdog re-establishes the consumer")
        replaced.append(old)

    # Then the backend tracks only the live consumer and its channel
    live = rabbit_consumer(resilient)
    assert backend._consumers == [live]
    assert list(backend._acks) == [live._channel]

    # and the channels of the replaced ones are closed
    async def closed() -> bool:
        return all(c._channel is not None and c._channel.is_closed for c in replaced)

    await wait_until(closed, what="the replaced consumers' channels are closed")
    assert await consumer_count(probe, queue_name) == 1
    # and messages still flow
    await probe.publish(b"{}", routing_key=queue_name, message_id="after")
    await worker.wait_processed("after")


async def test_a_replaced_consumer_channel_stays_open_until_its_messages_are_settled(
    resilient: ResilientBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool working on a message
    release = asyncio.Event()

    async def held(message: Message[Any]) -> None:
        await release.wait()

    worker = Recorder(held)
    await start_pool(resilient, worker)
    await probe.publish(b"{}", routing_key=queue_name, message_id="held")
    await worker.wait_for(lambda r: len(r.deliveries) == 1, what="the message is being worked on")

    # When its consumer is cancelled behind its back and the watchdog replaces it
    old = rabbit_consumer(resilient)
    assert old._channel is not None and old._tag is not None
    await old._channel.basic_cancel(old._tag)

    async def replaced() -> bool:
        return rabbit_consumer(resilient) is not old and resilient._consumers[0].active

    await wait_until(replaced, what="the watchdog re-establishes the consumer")

    # Then the old channel stays open while the message is in the worker's hands
    assert not old._channel.is_closed
    # and once the message finishes it is acked there, once, and the channel closes
    release.set()
    await worker.wait_processed("held")

    async def closed() -> bool:
        return old._channel is not None and old._channel.is_closed

    await wait_until(closed, what="the replaced consumer's channel is closed")
    await probe.wait_for_ready(queue_name, 0)
    assert len(worker.of("held")) == 1
    assert resilient.backend.health()["settle_failures"] == 0


async def test_a_consume_cancelled_while_it_starts_leaves_no_consumer_and_no_channel(
    backend: RabbitMQBackend,
    probe: RabbitProbe,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a consume whose subscription reached the broker, and that is cancelled before it
    # returns (the watchdog giving up on a restore in that instant)
    await backend.declare(queue_name)
    subscribed = asyncio.Event()
    real_basic_consume = aiormq.Channel.basic_consume

    async def basic_consume(self: aiormq.Channel, *args: Any, **kwargs: Any) -> Any:
        ok = await real_basic_consume(self, *args, **kwargs)
        subscribed.set()
        await asyncio.Event().wait()  # the cancellation arrives here
        return ok

    monkeypatch.setattr(aiormq.Channel, "basic_consume", basic_consume)
    handled: list[Message[Any]] = []

    class Handled:
        async def dispatch(self, message: Message[Any]) -> None:
            handled.append(message)

        def try_dispatch(self, message: Message[Any]) -> bool:
            handled.append(message)
            return True

    starting = asyncio.create_task(backend.consume(queue_name, Handled(), prefetch=5))
    await subscribed.wait()
    assert await consumer_count(probe, queue_name) == 1

    # When it is cancelled
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    # Then the channel it opened is closed: no consumer is left on the queue to take (and
    # hold) messages, and the backend tracks nothing of it
    assert await consumer_count(probe, queue_name) == 0
    assert backend._consumers == [] and backend._acks == {}
    await probe.publish(b"{}", routing_key=queue_name, message_id="unclaimed")
    await probe.wait_for_ready(queue_name, 1)
    assert handled == []


async def test_a_connection_the_broker_dropped_is_closed_on_the_event_loop(
    make_backend: BackendFactory, rabbitmq_node: Any, request: pytest.FixtureRequest
) -> None:
    # Given a connected backend
    name = f"to drop: {request.node.nodeid}"
    backend = await make_backend(connection_name=name)
    dropped = backend._connection
    assert dropped is not None
    # When the broker closes its connection
    listed = await asyncio.to_thread(
        rabbitmq_node.ctl, "list_connections", "pid", "client_properties"
    )
    [pid] = [line.split("\t")[0] for line in listed.splitlines() if name in line]
    await asyncio.to_thread(rabbitmq_node.ctl, "close_connection", pid, "closed by the test")
    await wait_until(lambda: not backend.is_connected, what="the loss noticed")
    # Then the dropped aio-pika connection is closed, here: left open, it is closed by its
    # finaliser, which creates a close() coroutine that nothing awaits when the collection
    # happens where no event loop runs (a RuntimeWarning, an error under -W error)
    await wait_until(lambda: dropped.is_closed, what="the dropped connection closed")
