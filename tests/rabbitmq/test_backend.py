"""`RabbitMQBackend` on a real broker: deliveries, confirmed publishing, copies that cannot
be confirmed, health."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from foxwork import ConnectionLost, MessageProperties, PublishNotConfirmed
from foxwork.backends.rabbitmq import RabbitMQBackend

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while

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
