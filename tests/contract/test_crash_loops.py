"""Crash loops, written once and run on every backend: a message whose consumer dies with it
(its connection lost before it was settled) comes back, each return is counted on the
broker, and at `max_redeliveries` it is dead-lettered unprocessed, saying why.

A crash is played by closing the backend while the worker holds the message: the broker
(or the memory backend) takes it back unsettled, as it does when a process dies. The pool
of the crashed "process" is then abandoned; its settlements go nowhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

from foxwork import Message, MessageProperties, WorkerPool
from foxwork.backends import Backend
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.support.recording import Recorder
from tests.support.waiting import wait_until

from .conftest import CRASH_LOOP_LIMIT, Broker, PoolStarter

#: Crashes a message may cause before it is dead-lettered.
MAX_REDELIVERIES = CRASH_LOOP_LIMIT


def crash_loop_guard() -> list[Any]:
    return [
        AckNackMiddleware(),
        RetryMiddleware(
            max_attempts=3, max_redeliveries=MAX_REDELIVERIES, initial_backoff=0.05, jitter=0.0
        ),
    ]


async def crash(pool: WorkerPool, backend: Backend) -> None:
    """The process dies holding its messages: the connection goes first, then the rest."""
    await backend.close()
    await pool.shutdown(timeout=0.1)


async def test_a_message_that_kills_its_consumer_every_time_is_dead_lettered(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a message on which the worker hangs until its "process" dies
    hang = asyncio.Event()

    async def hangs(message: Message[Any]) -> None:
        async with asyncio.timeout(30):
            await hang.wait()

    properties = MessageProperties(content_type="application/json", message_id="poison")
    await broker.publish(queue_name, b"{}", properties)
    attempts: list[Recorder] = []

    # When the consumer dies holding it, and is started again, as often as it comes back
    for _ in range(MAX_REDELIVERIES):
        worker = Recorder(hangs)
        attempts.append(worker)
        pool = await start_pool(worker, middleware=crash_loop_guard())
        await worker.wait_for(lambda r: len(r.deliveries) == 1, what="the message is held")
        await crash(pool, backend)
        await backend.connect()
    survivor = Recorder()
    pool = await start_pool(survivor, middleware=crash_loop_guard())

    async def dead_lettered() -> bool:
        return len(await broker.messages(f"{queue_name}-dlq")) == 1

    await wait_until(dead_lettered, what="the poison message is dead-lettered")
    await pool.shutdown(timeout=5)

    # Then it reached the worker once per life, never after its last crash
    assert [len(w.deliveries) for w in attempts] == [1] * MAX_REDELIVERIES
    assert survivor.deliveries == []
    # and it is in the DLQ, saying it crash-looped, and nowhere else
    [dead] = await broker.messages(f"{queue_name}-dlq")
    if isinstance(backend, RedisStreamsBackend):
        # Redis counts the deliveries itself (as a quorum queue): its delivery_limit
        # dead-lettered the message, with the broker-style reason and count.
        [death] = dead.headers["x-death"]
        assert death["reason"] == "delivery_limit"
        assert dead.headers["x-delivery-count"] == MAX_REDELIVERIES
    else:
        reason = dead.headers["x-failure-reason"]
        assert f"redelivered {MAX_REDELIVERIES} times without being settled" in reason
    assert dead.message_id == "poison"
    assert await broker.messages(queue_name) == []
