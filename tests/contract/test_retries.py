"""Retries, written once and run on every backend: the backoff schedule, no head-of-line
blocking between delays, and the failures that skip the retries (`DeadLetter`, `Drop`)."""

from __future__ import annotations

from typing import Any

from foxwork import DeadLetter, Drop, Message, MessageProperties, RetryLater
from foxwork.backends import Backend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.support.recording import Recorder, fail_while

from .conftest import Broker, PoolStarter
from .test_semantics import retrying, stop

#: How much later than scheduled a retry may come back: the broker's expiry and the
#: consumer's latency, with room for a loaded machine. Never earlier than scheduled.
LATENESS = 2.0


def json_message(message_id: str) -> MessageProperties:
    return MessageProperties(content_type="application/json", message_id=message_id)


async def test_retries_follow_the_exponential_backoff_schedule(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a retry policy of 0.5 s, then 1 s (multiplier 2, no jitter), three attempts
    retry = RetryMiddleware(
        max_attempts=3, initial_backoff=0.5, backoff_multiplier=2.0, max_backoff=10.0, jitter=0.0
    )
    worker = Recorder(fail_while(lambda m: True))
    await broker.publish(queue_name, b"{}", json_message("late"))

    # When a message always fails
    pool = await start_pool(worker, middleware=[AckNackMiddleware(), retry])
    await worker.wait_for(lambda r: len(r.deliveries) == 3, what="three attempts")

    # Then the second attempt comes 0.5 s after the first, the third 1 s after the second
    # (never sooner; a little later is the broker's and the consumer's latency)
    first, second, third = (d.at for d in worker.deliveries)
    assert 0.5 <= second - first < 0.5 + LATENESS
    assert 1.0 <= third - second < 1.0 + LATENESS
    # and after the last attempt it is dead-lettered
    await stop(pool, backend)
    [dead] = await broker.messages(f"{queue_name}-dlq")
    assert dead.message_id == "late"
    assert dead.headers["x-final-attempt"] == 3


async def test_a_short_retry_delay_does_not_wait_behind_a_long_one(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a message retried in 30 s, and right after it one retried in 1 s
    async def retry_later(message: Message[Any]) -> None:
        if message.attempt == 1:
            raise RetryLater(30.0 if message.id == "slow" else 1.0)

    worker = Recorder(retry_later)
    await broker.publish(queue_name, b"{}", json_message("slow"))
    await broker.publish(queue_name, b"{}", json_message("fast"))

    # When both fail once, in that order
    pool = await start_pool(worker, middleware=retrying(max_attempts=3), concurrency_limit=1)
    await worker.wait_processed("fast", timeout=10)

    # Then the 1 s retry came back after its delay while the 30 s one still waits
    assert [d.id for d in worker.deliveries[:2]] == ["slow", "fast"]
    first, again = worker.of("fast")
    assert again.retry_attempt == 1
    assert again.at - first.at >= 1.0
    assert "slow" not in worker.processed
    await stop(pool, backend)
    assert await broker.waiting_retries(queue_name) == 1


async def test_a_dead_letter_skips_the_retries(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a worker that says the message can never succeed
    worker = Recorder(fail_while(lambda m: True, lambda m: DeadLetter("unknown SKU 'X-1'")))
    await broker.publish(queue_name, b'{"sku": "X-1"}', json_message("order-x"))

    # When a pool with five attempts runs it
    pool = await start_pool(worker, middleware=retrying(max_attempts=5))
    await worker.wait_for(lambda r: len(r.deliveries) == 1, what="one attempt")
    await stop(pool, backend)

    # Then it went to the DLQ after that one attempt, saying why
    [dead] = await broker.messages(f"{queue_name}-dlq")
    assert dead.headers["x-failure-reason"] == "unknown SKU 'X-1'"
    assert dead.headers["x-exception-type"] == "foxwork.errors.DeadLetter"
    assert dead.headers["x-final-attempt"] == 1
    assert len(worker.deliveries) == 1
    assert await broker.waiting_retries(queue_name) == 0
    assert await broker.messages(queue_name) == []


async def test_a_dropped_message_is_acked_without_retry_or_dead_letter(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a worker that drops a stale message
    worker = Recorder(fail_while(lambda m: True, lambda m: Drop("stale")))
    await broker.publish(queue_name, b'"old news"', json_message("stale-1"))

    # When a pool runs it
    pool = await start_pool(worker, middleware=retrying(max_attempts=5))
    await worker.wait_for(lambda r: len(r.deliveries) == 1, what="one attempt")
    await stop(pool, backend)

    # Then it is gone: not retried, not dead-lettered, not back in the queue
    assert len(worker.deliveries) == 1
    assert (pool.processed, pool.failed) == (1, 0)
    assert await broker.waiting_retries(queue_name) == 0
    assert await broker.messages(f"{queue_name}-dlq") == []
    assert await broker.messages(queue_name) == []
