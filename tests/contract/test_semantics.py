"""The behaviours every backend promises, written once and run on each of them.

Each test runs on `MemoryBackend`, `RabbitMQBackend` and `RedisStreamsBackend` (the `backend`
fixture), and looks at the queues only through `broker`, which reads them the same way on
each (where Redis differs, conftest.py says how).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foxwork import Message, MessageProperties, PoolState, ShutdownReport, WorkerPool
from foxwork.backends import Backend
from foxwork.middleware import AckNackMiddleware, Middleware, RetryMiddleware
from tests.support.recording import Recorder, fail_while
from tests.support.waiting import wait_until

from .conftest import Broker, PoolStarter

SENT_AT = datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)


class InventoryUnavailable(Exception):
    """A failure of the user's code, as a worker would raise it."""


def order_properties(message_id: str) -> MessageProperties:
    """A message as a careful publisher sends it: every property set, custom headers."""
    return MessageProperties(
        content_type="application/json",
        priority=5,
        message_type="order.created",
        app_id="shop",
        reply_to="order-replies",
        correlation_id=f"corr-{message_id}",
        message_id=message_id,
        timestamp=SENT_AT,
        headers={"tenant": "acme", "schema": 3},
    )


def retrying(max_attempts: int) -> list[Middleware]:
    return [
        AckNackMiddleware(),
        RetryMiddleware(max_attempts=max_attempts, initial_backoff=0.05, jitter=0.0),
    ]


async def stop(pool: WorkerPool | None, backend: Backend) -> None:
    """Let the pool finish, then close the backend: anything unsettled goes back."""
    if pool is not None:
        await pool.shutdown(timeout=5)
    await backend.close()


async def test_a_message_failing_twice_then_succeeding_is_processed_on_its_third_attempt(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a worker that fails the first two attempts of a message
    worker = Recorder(fail_while(lambda m: m.attempt <= 2))
    await broker.publish(queue_name, b'{"sku": "A-1"}', order_properties("order-1"))

    # When a pool with five attempts runs it
    pool = await start_pool(worker, middleware=retrying(max_attempts=5))
    await worker.wait_processed("order-1")

    # Then it was delivered three times, the copies counting the failed attempts
    deliveries = worker.of("order-1")
    assert [d.attempt for d in deliveries] == [1, 2, 3]
    assert [d.retry_attempt for d in deliveries] == [None, 1, 2]
    assert worker.processed == ["order-1"]
    # and nothing is left anywhere
    await stop(pool, backend)
    assert await broker.messages(queue_name) == []
    assert await broker.messages(f"{queue_name}-dlq") == []
    assert await broker.waiting_retries(queue_name) == 0


async def test_a_message_that_always_fails_is_dead_lettered_with_every_diagnostic_header(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a worker that always fails, and a message with every property set
    worker = Recorder(fail_while(lambda m: True, lambda m: InventoryUnavailable("SKU A-1 is gone")))
    sent = order_properties("order-2")
    await broker.publish(queue_name, b'{"sku": "A-1"}', sent)
    before = datetime.now(UTC)

    # When a pool with three attempts has run it three times
    pool = await start_pool(worker, middleware=retrying(max_attempts=3))
    await worker.wait_for(lambda r: len(r.of("order-2")) == 3, what="three attempts")
    await stop(pool, backend)
    after = datetime.now(UTC)

    # Then it is in Q-dlq, and only there
    assert await broker.messages(queue_name) == []
    assert await broker.waiting_retries(queue_name) == 0
    [dead] = await broker.messages(f"{queue_name}-dlq")
    assert [d.attempt for d in worker.of("order-2")] == [1, 2, 3]
    # with the diagnostic headers
    headers = dead.headers
    assert headers["x-original-routing-key"] == queue_name
    assert headers["x-original-exchange"] == ""
    assert headers["x-original-queue"] == queue_name
    assert headers["x-failure-reason"] == "SKU A-1 is gone"
    assert headers["x-exception-type"] == f"{__name__}.InventoryUnavailable"
    assert headers["x-final-attempt"] == 3
    failed_at = datetime.fromisoformat(headers["x-failed-at"])
    assert failed_at.utcoffset() == timedelta(0)
    assert before <= failed_at <= after
    # and the original body, headers and properties
    assert dead.body == b'{"sku": "A-1"}'
    assert headers["tenant"] == "acme" and headers["schema"] == 3
    assert headers["x-retry-attempt"] == 2
    assert dataclasses.replace(dead.properties, headers={}) == dataclasses.replace(sent, headers={})


async def test_a_second_ack_is_a_logged_no_op_and_the_consumer_keeps_working(
    backend: Backend,
    broker: Broker,
    start_pool: PoolStarter,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker that acks its first message twice
    async def ack_twice(message: Message[object]) -> None:
        if message.id == "first":
            await message.ack()
            await message.ack()

    worker = Recorder(ack_twice)
    caplog.set_level(logging.WARNING, logger="foxwork.message")
    await broker.publish(queue_name, b"{}", MessageProperties(message_id="first"))

    # When the pool processes it, then a second message on the same consumer
    pool = await start_pool(worker, middleware=retrying(max_attempts=3))
    await worker.wait_processed("first")
    await broker.publish(queue_name, b"{}", MessageProperties(message_id="second"))
    await worker.wait_processed("second")

    # Then the second ack was only logged
    ignored = [r.getMessage() for r in caplog.records if "ignoring ack" in r.getMessage()]
    assert ignored == ["ignoring ack of message first: already settled (acked)"]
    # and the channel survived: the consumer is still active, and both messages are acked
    assert pool.health()["consuming"] == [queue_name]
    backend_health = backend.health()
    if "consumers" in backend_health:  # RabbitMQ: the consumer's channel is open
        assert backend_health["consumers"] == {queue_name: True}
        assert backend_health["settle_failures"] == 0
    await stop(pool, backend)
    assert await broker.messages(queue_name) == []
    assert await broker.messages(f"{queue_name}-dlq") == []


async def test_shutdown_finishes_in_flight_messages_and_returns_unstarted_ones_to_the_queue(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given six messages, and a pool processing two at a time with four prefetched
    release = asyncio.Event()

    async def slow(message: Message[Any]) -> None:
        async with asyncio.timeout(10):
            await release.wait()

    worker = Recorder(slow)
    sent = [f"m{i}" for i in range(6)]
    for message_id in sent:
        await broker.publish(queue_name, b"{}", MessageProperties(message_id=message_id))
    pool = await start_pool(
        worker, middleware=retrying(max_attempts=3), concurrency_limit=2, prefetch=4
    )
    await worker.wait_for(lambda r: len(r.deliveries) == 2, what="two messages are in flight")

    async def taken_beyond_in_flight() -> bool:
        return await broker.ready(queue_name) <= 3

    await wait_until(taken_beyond_in_flight, what="more than the in-flight messages are taken")

    # When the pool shuts down while the two are still running, and they then finish
    stopping = asyncio.ensure_future(pool.shutdown(timeout=10))

    async def draining() -> bool:
        return pool.state is PoolState.DRAINING

    await wait_until(draining, what="the pool is draining", interval=0.01)
    release.set()
    report = await stopping

    # Then the in-flight messages finished and were acked
    in_flight = {d.id for d in worker.deliveries}
    assert len(in_flight) == 2
    assert report == ShutdownReport(finished=2, requeued=0)
    assert sorted(worker.processed) == sorted(in_flight)
    # and every unstarted message went back to the queue, even before the connection closed
    await wait_until(
        lambda: _ready_is(broker, queue_name, 4), what="the four unstarted messages are back"
    )
    await stop(None, backend)
    remaining = [str(m.message_id) for m in await broker.messages(queue_name)]
    assert sorted(remaining) == sorted(set(sent) - in_flight)
    assert await broker.messages(f"{queue_name}-dlq") == []


async def _ready_is(broker: Broker, queue: str, count: int) -> bool:
    return await broker.ready(queue) == count


@pytest.mark.parametrize("concurrency_limit", [1, 3])
async def test_the_concurrency_limit_holds_and_messages_start_in_queue_order(
    backend: Backend,
    broker: Broker,
    start_pool: PoolStarter,
    queue_name: str,
    concurrency_limit: int,
) -> None:
    # Given 30 messages in the queue, and a pool whose prefetch (10) exceeds its limit, so
    # that deliveries arrive while every slot is taken and must wait their turn
    ids = [f"m-{n:02d}" for n in range(30)]
    for message_id in ids:
        await broker.publish(queue_name, b"{}", MessageProperties(message_id=message_id))
    live = 0
    most = 0

    async def slow(message: Message[Any]) -> None:
        nonlocal live, most
        live += 1
        most = max(most, live)
        await asyncio.sleep(0.005)
        live -= 1

    worker = Recorder(slow)

    # When the pool drains the queue
    await start_pool(
        worker,
        middleware=[AckNackMiddleware()],
        concurrency_limit=concurrency_limit,
        prefetch=10,
    )
    await worker.wait_processed(*ids)

    # Then never more than the limit ran at once, every message started in queue order
    # exactly once, and the queue is empty
    assert 1 <= most <= concurrency_limit
    assert [d.id for d in worker.deliveries] == ids

    async def drained() -> bool:
        return await broker.ready(queue_name) == 0

    await wait_until(drained, what="the queue is empty")
