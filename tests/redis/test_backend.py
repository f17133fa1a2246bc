"""`RedisStreamsBackend` on a real redis-server: each promise of the backend, entry by entry.

The keys are looked at with a plain redis-py client (`redis`), never through the backend.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from foxwork import ConfigurationError, MessageProperties, PublishNotConfirmed, TopologyConflict
from foxwork.backends.redis import RedisStreamsConfig
from foxwork.backends.redis import entry as entries
from foxwork.middleware import AckNackMiddleware
from foxwork.pool import WorkerPool
from tests.rabbitmq.support import Recorder, wait_until

from .conftest import BackendFactory, Holder


async def pending(redis: Redis, stream: str) -> int:
    summary: Any = await redis.xpending(stream, "foxwork")
    return int(summary["pending"])


async def stream_entries(redis: Redis, key: str) -> list[entries.Decoded]:
    return [entries.decode(fields) for _id, fields in await redis.xrange(key)]


# -- configuration ------------------------------------------------------------------------


def test_the_config_names_one_hash_tag_per_queue_and_redacts_the_password() -> None:
    config = RedisStreamsConfig(url="redis://:s3cret@127.0.0.1:6379/0", queue="orders")
    keys = config.keys("orders")
    assert (keys.stream, keys.retry, keys.dead_letter) == (
        "foxwork:{orders}",
        "foxwork:{orders}:retry",
        "foxwork:{orders}:dlq",
    )
    assert "s3cret" not in repr(config)
    assert config.group == "foxwork" and config.consumer.endswith(f"-{__import__('os').getpid()}")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"url": "amqp://127.0.0.1/"}, "is not a Redis URL"),
        ({"queue": "a{b}"}, "without braces"),
        ({"claim_idle": 0}, "claim_idle=0"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_a_bad_setting_is_refused_with_what_to_change(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid RedisStreamsConfig") as caught:
        RedisStreamsConfig(**{"url": "redis://:pw@127.0.0.1/0", "queue": "q", **settings})
    assert says in str(caught.value) and "pw" not in str(caught.value)


# -- declare, publish, consume, ack ----------------------------------------------------------


async def test_a_published_message_is_consumed_with_its_properties_and_acked_away(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given a message with every property set, published to a declared queue
    backend = await make_backend()
    sent = MessageProperties(
        content_type="application/json",
        priority=7,
        message_type="order.created",
        app_id="shop",
        correlation_id="corr-1",
        message_id="order-1",
        timestamp=datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC),
        headers={"tenant": "acme", "schema": 3, "tags": ["a", "b"]},
    )
    await backend.publish(queue_name, b'{"sku": "A-1"}', sent)
    worker = Recorder()

    # When a pool consumes it
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware()], queues=[queue_name])
    await pool.start(backend)
    await worker.wait_processed("order-1")
    await pool.shutdown(timeout=5)

    # Then the worker saw it as sent, on its first attempt
    [delivery] = worker.deliveries
    assert delivery.properties == sent
    assert delivery.payload == {"sku": "A-1"}
    assert (delivery.attempt, delivery.redelivered) == (1, False)
    # and the ack removed it from the stream (XACK + XDEL): nothing pending, nothing left
    stream = backend.config.keys(queue_name).stream
    assert await pending(redis, stream) == 0
    assert await redis.xlen(stream) == 0
    assert backend.health()["settle_failures"] == 0


async def test_publishing_to_a_queue_never_declared_is_not_confirmed(
    make_backend: BackendFactory,
) -> None:
    backend = await make_backend()
    with pytest.raises(PublishNotConfirmed, match="declare queue 'nowhere' first"):
        await backend.publish("nowhere", b"{}")
    with pytest.raises(PublishNotConfirmed, match="no exchanges"):
        await backend.publish("nowhere", b"{}", exchange="amq.topic")


async def test_a_key_that_is_not_a_stream_is_refused_by_name(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    backend = await make_backend()
    other = f"{queue_name}-other"
    stream = backend.config.keys(other).stream
    await redis.set(stream, "not a stream")
    with pytest.raises(TopologyConflict, match=r"'foxwork:\{.*-other\}' is a string, not a stream"):
        await backend.declare(other)
    await redis.delete(stream)


async def test_never_more_entries_are_unsettled_than_the_prefetch(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given ten messages and an intake that holds every delivery without settling it
    backend = await make_backend(batch_size=100)
    for n in range(10):
        await backend.publish(queue_name, b"{}", MessageProperties(message_id=f"m{n}"))
    holder = Holder()

    # When it consumes with a prefetch of 3
    await backend.consume(queue_name, holder, prefetch=3)
    await holder.wait_count(3)
    await asyncio.sleep(0.3)  # several block times: room for a wrong extra read

    # Then three are checked out, in order, and Redis agrees
    stream = backend.config.keys(queue_name).stream
    assert [m.id for m in holder.messages] == ["m0", "m1", "m2"]
    assert await pending(redis, stream) == 3
    # and acking one lets exactly one more in
    await holder.messages[0].ack()
    await holder.wait_count(4)
    await asyncio.sleep(0.3)
    assert [m.id for m in holder.messages] == ["m0", "m1", "m2", "m3"]
    assert await pending(redis, stream) == 3


async def test_a_restarted_consumer_first_takes_back_its_own_pending_entries(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given a consumer "a" that checked out two entries and stopped without settling them
    first = await make_backend(consumer="a")
    for n in range(3):
        await first.publish(queue_name, b"{}", MessageProperties(message_id=f"m{n}"))
    held = Holder()
    await first.consume(queue_name, held, prefetch=2)
    await held.wait_count(2)
    await first.close()

    # When a process with the same consumer name starts (claim_idle is long: no reclaim)
    second = await make_backend(consumer="a", claim_idle=60)
    again = Holder()
    await second.consume(queue_name, again, prefetch=10)
    await again.wait_count(3)

    # Then it gets its own two pending entries first, as having come back unsettled
    first_two, new = again.messages[:2], again.messages[2]
    assert [m.id for m in first_two] == ["m0", "m1"]
    assert all(m.redelivered and m.came_back_unsettled for m in first_two)
    assert [m.delivery_count for m in first_two] == [1, 1]
    # then the one nobody had read
    assert (new.id, new.redelivered, new.came_back_unsettled) == ("m2", False, False)


async def test_a_nack_with_requeue_puts_the_message_back_for_another_delivery(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue_name, b"{}", MessageProperties(message_id="m0"))
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=5)
    await holder.wait_count(1)

    await holder.messages[0].nack(requeue=True)
    await holder.wait_count(2)

    again = holder.messages[1]
    assert again.id == "m0"
    assert (again.redelivered, again.came_back_unsettled, again.delivery_count) == (True, False, 0)
    await again.ack()
    stream = backend.config.keys(queue_name).stream
    await wait_until(lambda: _is_empty(redis, stream), what="the stream is empty")


async def _is_empty(redis: Redis, stream: str) -> bool:
    return await redis.xlen(stream) == 0 and await pending(redis, stream) == 0
