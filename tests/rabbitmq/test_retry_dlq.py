"""Retries and dead letters on a real broker: the delay schedule, no head-of-line blocking
between delays, and the same behaviour on a quorum queue."""

from __future__ import annotations

from typing import Any

import pytest

from foxwork import Message, MessageProperties, RetryLater, TopologyConflict
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while

#: How far an observed retry may be from its scheduled time, in seconds. The broker expires
#: a queue-level TTL within a few milliseconds; the rest is consumer and event-loop latency.
SCHEDULE_TOLERANCE = 0.3


def json_message(message_id: str) -> MessageProperties:
    return MessageProperties(content_type="application/json", message_id=message_id)


async def test_retries_follow_the_exponential_backoff_schedule(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a retry policy of 0.5 s, then 1 s (multiplier 2, no jitter), three attempts
    backend = await make_backend()
    retry = RetryMiddleware(
        max_attempts=3, initial_backoff=0.5, backoff_multiplier=2.0, max_backoff=10.0, jitter=0.0
    )
    worker = Recorder(fail_while(lambda m: True))
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", json_message("late"))

    # When a message always fails
    pool = await start_pool(backend, worker, middleware=[AckNackMiddleware(), retry])
    await worker.wait_for(lambda r: len(r.deliveries) == 3, what="three attempts")

    # Then the second attempt comes ~0.5 s after the first, the third ~1.5 s after it
    first, second, third = (d.at for d in worker.deliveries)
    assert second - first == pytest.approx(0.5, abs=SCHEDULE_TOLERANCE)
    assert third - first == pytest.approx(1.5, abs=SCHEDULE_TOLERANCE)
    # and after the last attempt it is dead-lettered
    await pool.shutdown(timeout=5)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "late"
    assert dead.headers["x-final-attempt"] == 3


async def test_a_short_retry_delay_does_not_wait_behind_a_long_one(
    backend: RabbitMQBackend, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a message retried in 30 s, and right after it one retried in 1 s
    async def retry_later(message: Message[Any]) -> None:
        if message.attempt == 1:
            raise RetryLater(30.0 if message.id == "slow" else 1.0)

    worker = Recorder(retry_later)
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", json_message("slow"))
    await backend.publish(queue_name, b"{}", json_message("fast"))

    # When both fail once, in that order
    await start_pool(backend, worker, concurrency_limit=1)
    await worker.wait_processed("fast", timeout=5)

    # Then the 1 s retry came back after about 1 s, not after the 30 s one
    assert [d.id for d in worker.deliveries[:2]] == ["slow", "fast"]
    first, again = worker.of("fast")
    assert again.retry_attempt == 1
    assert 0.9 <= again.at - first.at < 3.0
    assert "slow" not in worker.processed


async def test_retry_and_dead_letter_work_the_same_on_a_quorum_queue(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a quorum queue, one message that fails twice and one that always fails
    backend = await make_backend(queue_type="quorum", delivery_limit=5)
    worker = Recorder(fail_while(lambda m: m.id == "broken" or m.attempt <= 2))
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", json_message("flaky"))
    await backend.publish(queue_name, b"{}", json_message("broken"))

    # When the pool runs them with three attempts
    pool = await start_pool(backend, worker)
    await worker.wait_processed("flaky")
    await worker.wait_for(lambda r: len(r.of("broken")) == 3, what="three attempts of 'broken'")
    await pool.shutdown(timeout=5)

    # Then the flaky one succeeded on its third attempt, the broken one is in Q-dlq
    assert [d.retry_attempt for d in worker.of("flaky")] == [None, 1, 2]
    assert worker.processed == ["flaky"]
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "broken"
    assert dead.headers["x-final-attempt"] == 3
    assert dead.headers["x-exception-type"] == "builtins.RuntimeError"
    assert await probe.ready(queue_name) == 0
    # and the queue really is a quorum queue
    classic = await make_backend()
    with pytest.raises(TopologyConflict, match="x-queue-type"):
        await classic.declare(queue_name)
