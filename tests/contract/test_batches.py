"""Batches, written once and run on every backend: a batch settled by its outcome, a failed
batch retried message by message, a partial failure retrying only the messages it names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from foxwork import Message, MessageProperties
from foxwork.backends import Backend
from foxwork.middleware import AckNackMiddleware, BatchMiddleware, BatchResult, RetryMiddleware
from tests.support.recording import Recorder

from .conftest import Broker, PoolStarter
from .test_semantics import stop

#: Seconds a test waits for the batches it expects.
WAIT = 10.0


class WarehouseDown(Exception):
    """The batch's dependency failed."""


class Handler:
    """Records every batch as (message id, attempt) pairs; `outcome(batch, call)` may raise
    or return a `BatchResult`."""

    def __init__(
        self, outcome: Callable[[Sequence[Message[Any]], int], BatchResult | None]
    ) -> None:
        self.outcome = outcome
        self.batches: list[list[tuple[str, int]]] = []
        self.succeeded: list[str] = []
        self._changed = asyncio.Condition()

    async def process_batch(self, batch: Sequence[Message[Any]]) -> BatchResult | None:
        self.batches.append([(m.id, m.attempt) for m in batch])
        try:
            result = self.outcome(batch, len(self.batches))
        except Exception:
            await self._notify()
            raise
        failed = result.failed if result is not None else {}
        self.succeeded += [m.id for m in batch if m.id not in failed]
        await self._notify()
        return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_succeeded(self, ids: Sequence[str]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: set(self.succeeded) >= set(ids))


def batching(handler: Handler, *, batch_size: int) -> list[Any]:
    return [
        AckNackMiddleware(),
        RetryMiddleware(max_attempts=3, initial_backoff=0.05, jitter=0.0),
        BatchMiddleware(handler, batch_size=batch_size, flush_interval=0.2),
    ]


async def publish(broker: Broker, queue: str, count: int) -> list[str]:
    ids = [f"b{i:02d}" for i in range(count)]
    for message_id in ids:
        properties = MessageProperties(content_type="application/json", message_id=message_id)
        await broker.publish(queue, b"{}", properties)
    return ids


async def test_a_failed_batch_is_retried_message_by_message(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given 30 messages, and a batch handler whose first batch fails
    def outcome(batch: Sequence[Message[Any]], call: int) -> None:
        if call == 1:
            raise WarehouseDown("warehouse unavailable")

    handler = Handler(outcome)
    ids = await publish(broker, queue_name, 30)
    worker = Recorder()

    # When a pool of 10 batches them by 10 behind AckNack and Retry
    pool = await start_pool(
        worker, middleware=batching(handler, batch_size=10), concurrency_limit=10, prefetch=10
    )
    await handler.wait_succeeded(ids)
    await stop(pool, backend)

    # Then the first batch was full, and exactly its 10 messages came back as retries
    first = handler.batches[0]
    assert len(first) == 10 and all(attempt == 1 for _, attempt in first)
    retried = {i for batch in handler.batches[1:] for i, attempt in batch if attempt == 2}
    assert retried == {i for i, _ in first}
    # and every message succeeded exactly once, through the handler, never the worker
    assert sorted(handler.succeeded) == ids
    assert worker.deliveries == []
    # and nothing is left: every delivery was acked, nothing dead-lettered or waiting
    assert await broker.messages(queue_name) == []
    assert await broker.messages(f"{queue_name}-dlq") == []
    assert await broker.waiting_retries(queue_name) == 0


async def test_a_partial_failure_retries_only_the_messages_it_names(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given a batch handler that reports one message of its first batch as failed
    def outcome(batch: Sequence[Message[Any]], call: int) -> BatchResult | None:
        if call == 1:
            return BatchResult(failed={batch[2].id: WarehouseDown("row 2 rejected")})
        return None

    handler = Handler(outcome)
    ids = await publish(broker, queue_name, 5)

    # When a pool batches the five messages
    pool = await start_pool(
        Recorder(), middleware=batching(handler, batch_size=5), concurrency_limit=5, prefetch=5
    )
    await handler.wait_succeeded(ids)
    await stop(pool, backend)

    # Then only that message came back, on its second attempt
    assert [len(batch) for batch in handler.batches] == [5, 1]
    [(again, attempt)] = handler.batches[1]
    assert (again, attempt) == (handler.batches[0][2][0], 2)
    assert sorted(handler.succeeded) == ids
    assert (pool.processed, pool.failed) == (5, 1)
    assert await broker.messages(queue_name) == []
    assert await broker.messages(f"{queue_name}-dlq") == []
