"""`RedisStreamsBackend` on a real redis-server: each promise of the backend, entry by entry.

The keys are looked at with a plain redis-py client (`redis`), never through the backend.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from foxwork import ConfigurationError, MessageProperties, PublishNotConfirmed, TopologyConflict
from foxwork.backends import ReconnectStrategy, ResilientBackend
from foxwork.backends.redis import RedisStreamsConfig
from foxwork.backends.redis import entry as entries
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
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


# -- retries -------------------------------------------------------------------------------


async def test_a_short_retry_comes_back_while_a_long_one_still_waits(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given two deliveries
    backend = await make_backend()
    for message_id in ("slow", "fast"):
        await backend.publish(queue_name, b"{}", MessageProperties(message_id=message_id))
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=10)
    await holder.wait_count(2)
    slow, fast = holder.messages

    # When the first is retried after 3 s and the second, later, after 0.3 s
    assert await slow.retry(3.0)
    assert await fast.retry(0.3)

    # Then the short one comes back first, while the long one still waits in the retry set
    await holder.wait_count(3)
    again = holder.messages[2]
    assert (again.id, again.attempt, again.headers["x-retry-attempt"]) == ("fast", 2, 1)
    assert again.redelivered is False
    keys = backend.config.keys(queue_name)
    assert await redis.zcard(keys.retry) == 1
    # and the originals were acked away: only the redelivered copy is pending
    assert await pending(redis, keys.stream) == 1
    # and the long one arrives in its turn
    await holder.wait_count(4)
    assert holder.messages[3].id == "slow" and await redis.zcard(keys.retry) == 0


async def test_a_retry_waits_in_redis_not_in_the_process(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given a retry copy published by a backend that then stops
    first = await make_backend(consumer="a")
    await first.publish(queue_name, b"{}", MessageProperties(message_id="m0"))
    holder = Holder()
    await first.consume(queue_name, holder, prefetch=1)
    await holder.wait_count(1)
    assert await holder.messages[0].retry(0.2)
    await first.close()

    # When another process consumes the queue
    second = await make_backend(consumer="b")
    later = Holder()
    await second.consume(queue_name, later, prefetch=1)

    # Then its mover brings the copy back
    await later.wait_count(1)
    assert (later.messages[0].id, later.messages[0].attempt) == ("m0", 2)


# -- dead letters --------------------------------------------------------------------------


async def test_a_dead_letter_carries_the_diagnostic_fields_and_the_original(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    backend = await make_backend()
    sent = MessageProperties(
        content_type="application/json", message_id="m0", headers={"tenant": "acme"}
    )
    await backend.publish(queue_name, b'{"sku": "A-1"}', sent)
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=1)
    await holder.wait_count(1)

    assert await holder.messages[0].dead_letter(ValueError("SKU A-1 is gone"))
    assert await backend.flush(timeout=5)  # acks are coalesced: sent a moment later

    keys = backend.config.keys(queue_name)
    [dead] = await stream_entries(redis, keys.dead_letter)
    assert dead.body == b'{"sku": "A-1"}' and dead.poison is None
    headers = dead.properties.headers
    assert headers["tenant"] == "acme"
    assert headers["x-original-queue"] == queue_name
    assert headers["x-original-routing-key"] == queue_name
    assert headers["x-original-exchange"] == ""
    assert headers["x-failure-reason"] == "SKU A-1 is gone"
    assert headers["x-exception-type"] == "builtins.ValueError"
    assert headers["x-final-attempt"] == 1
    assert datetime.fromisoformat(headers["x-failed-at"]).tzinfo is not None
    assert dead.properties.message_id == "m0"
    assert dead.properties.content_type == "application/json"
    assert await _is_empty(redis, keys.stream)


async def test_a_reject_dead_letters_with_the_broker_style_reason(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue_name, b"{}", MessageProperties(message_id="m0"))
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=1)
    await holder.wait_count(1)

    await holder.messages[0].reject()
    assert await backend.flush(timeout=5)

    keys = backend.config.keys(queue_name)
    [dead] = await stream_entries(redis, keys.dead_letter)
    [death] = dead.properties.headers["x-death"]
    assert (death["reason"], death["queue"]) == ("rejected", queue_name)
    assert dead.properties.headers["x-first-death-reason"] == "rejected"
    assert await _is_empty(redis, keys.stream)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"message_id": b"m0", b"note": b"no body here"}, "the entry has no 'body' field"),
        ({b"body": b"{}", b"message_id": b"m0", b"content_type": b"\xff\xfe"}, "is not UTF-8"),
        ({b"body": b"{}", b"message_id": b"m0", b"headers": b"[1, 2]"}, "not a JSON object"),
    ],
    ids=["no-body", "non-utf8-field", "headers-not-an-object"],
)
async def test_an_entry_that_is_no_message_is_dead_lettered_with_the_reason(
    make_backend: BackendFactory,
    redis: Redis,
    queue_name: str,
    fields: dict[bytes, bytes],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an entry another tool wrote that foxwork cannot read as a message
    backend = await make_backend()
    keys = backend.config.keys(queue_name)
    await redis.xadd(keys.stream, fields)  # type: ignore[arg-type]
    worker = Recorder()

    # When a pool with the usual middleware consumes it
    pool = WorkerPool(
        workers=[worker],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=3)],
        queues=[queue_name],
    )
    await pool.start(backend)
    await wait_until(
        lambda: _has_entries(redis, keys.dead_letter), what="the entry is dead-lettered"
    )
    await pool.shutdown(timeout=5)

    # Then it never reached the worker, is in the dead-letter stream with the reason, was
    # logged, and is gone from the stream
    assert worker.deliveries == []
    [dead] = await stream_entries(redis, keys.dead_letter)
    assert reason in dead.properties.headers["x-failure-reason"]
    assert any(reason in r.getMessage() for r in caplog.records)
    assert await _is_empty(redis, keys.stream)


async def test_a_body_that_is_not_utf8_is_delivered_as_it_is(
    make_backend: BackendFactory, queue_name: str
) -> None:
    backend = await make_backend()
    body = bytes(range(256))
    await backend.publish(
        queue_name, body, MessageProperties(content_type="application/octet-stream")
    )
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=1)
    await holder.wait_count(1)
    assert holder.messages[0].body == body and holder.messages[0].poison is None


async def _has_entries(redis: Redis, key: str) -> bool:
    return await redis.exists(key) == 1 and await redis.xlen(key) > 0


# -- reclaim and crash loops ---------------------------------------------------------------


async def test_another_consumer_takes_over_the_pending_entries_of_a_dead_one(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given consumer "a" with two entries checked out, which then dies without settling
    dying = await make_backend(consumer="a")
    for n in range(2):
        await dying.publish(queue_name, b"{}", MessageProperties(message_id=f"m{n}"))
    held = Holder()
    await dying.consume(queue_name, held, prefetch=2)
    await held.wait_count(2)
    await dying.close()

    # When consumer "b" runs, after claim_idle (0.3 s)
    survivor = await make_backend(consumer="b")
    taken = Holder()
    await survivor.consume(queue_name, taken, prefetch=10)
    await taken.wait_count(2)

    # Then it has both, as having come back unsettled, with their delivery count
    assert sorted(m.id for m in taken.messages) == ["m0", "m1"]
    assert all(m.came_back_unsettled and m.delivery_count == 1 for m in taken.messages)
    rows: Any = await redis.xpending_range(
        backend_stream(survivor, queue_name), "foxwork", "-", "+", 10
    )
    assert {r["consumer"] for r in rows} == {b"b"}


async def test_an_entry_merely_slow_is_not_taken_over(
    make_backend: BackendFactory, queue_name: str
) -> None:
    # Given consumer "a" holding an entry for well over claim_idle
    slow = await make_backend(consumer="a")
    await slow.publish(queue_name, b"{}", MessageProperties(message_id="m0"))
    held = Holder()
    await slow.consume(queue_name, held, prefetch=1)
    await held.wait_count(1)
    other = await make_backend(consumer="b")
    watching = Holder()
    await other.consume(queue_name, watching, prefetch=10)

    await asyncio.sleep(1.2)  # four claim_idle periods

    # Then consumer "b" took nothing: "a" keeps its entry fresh while it lives
    assert watching.messages == []
    await held.messages[0].ack()


async def test_an_entry_that_kills_its_consumer_every_time_ends_in_the_dead_letter_stream(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given a delivery limit of 2, and two consumers that each die holding the entry
    await (await make_backend(consumer="setup")).publish(
        queue_name, b"{}", MessageProperties(message_id="m0")
    )
    for name in ("a", "b"):
        dying = await make_backend(consumer=name, delivery_limit=2)
        held = Holder()
        await dying.consume(queue_name, held, prefetch=1)
        await held.wait_count(1)
        await dying.close()

    # When a third consumer would take it over for a third delivery
    third = await make_backend(consumer="c", delivery_limit=2)
    await third.consume(queue_name, Holder(), prefetch=1)
    keys = third.config.keys(queue_name)
    await wait_until(lambda: _has_entries(redis, keys.dead_letter), what="it is dead-lettered")

    # Then it is dead-lettered as a quorum queue would, and gone from the stream
    [dead] = await stream_entries(redis, keys.dead_letter)
    assert dead.properties.message_id == "m0"
    [death] = dead.properties.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert dead.properties.headers["x-delivery-count"] == 2
    assert await _is_empty(redis, keys.stream)


def backend_stream(backend: Any, queue: str) -> str:
    return str(backend.config.keys(queue).stream)


# -- the group vanishing -------------------------------------------------------------------


async def test_after_flushall_the_group_is_created_again_with_a_loud_log_line(
    make_backend: BackendFactory, redis: Redis, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a running consumer
    backend = await make_backend()
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=5)
    await asyncio.sleep(0.1)

    # When Redis loses everything
    await redis.flushall()

    # Then the consumer creates its group again, says so, and consumes what comes next
    async def recreated() -> bool:
        return any("is gone (FLUSHALL" in r.getMessage() for r in caplog.records)

    await wait_until(recreated, what="the group is created again")
    [record] = [r for r in caplog.records if "is gone (FLUSHALL" in r.getMessage()]
    assert record.levelno == logging.ERROR
    await backend.publish(queue_name, b"{}", MessageProperties(message_id="after"))
    await holder.wait_count(1)
    assert holder.messages[0].id == "after"


# -- connections ---------------------------------------------------------------------------


async def test_killed_connections_lose_nothing_under_a_resilient_backend(
    make_backend: BackendFactory, redis: Redis, queue_name: str
) -> None:
    # Given a pool consuming through a ResilientBackend
    inner = await make_backend()
    backend = ResilientBackend(inner, strategy=ReconnectStrategy.Fixed(0.05))
    worker = Recorder()
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware()], queues=[queue_name])
    await pool.start(backend)
    await inner.publish(queue_name, b"{}", MessageProperties(message_id="before"))
    await worker.wait_processed("before")

    # When Redis kills every client connection but ours, three times, with a message each
    keys = inner.config.keys(queue_name)
    for n in range(3):
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 1
        fields = entries.encode(b"{}", MessageProperties(message_id=f"after-{n}"))
        await redis.xadd(keys.stream, fields)  # type: ignore[arg-type]
        await worker.wait_processed(f"after-{n}")

    # Then every message was processed and acked away
    await pool.shutdown(timeout=5)
    assert sorted(worker.processed) == ["after-0", "after-1", "after-2", "before"]
    assert await _is_empty(redis, keys.stream)
    await backend.close()
