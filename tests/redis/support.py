"""Shared pieces of the Redis fault and command-line tests: numbered entries published
through `RedisStreamsBackend`, a pool on `ResilientBackend(RedisStreamsBackend(...))`
(`RedisRun`), and a look at a queue's keys behind the backend (`StreamProbe`).

The numbered ids, the ledger of what was processed and its worker are the RabbitMQ fault
suite's (tests/faults/conftest.py), so both suites count the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from foxwork import MessageProperties, PoolState, Worker, WorkerPool
from foxwork.backends import ResilientBackend
from foxwork.backends.redis import RedisStreamsBackend, RedisStreamsConfig
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.faults.conftest import (
    FAST_RECONNECT,
    RETRY_SETTINGS,
    SHUTDOWN_TIMEOUT,
    Ledger,
    LedgerWorker,
    StateLog,
    numbered_ids,
    report,
)
from tests.support.waiting import wait_until

__all__ = [
    "Ledger",
    "LedgerWorker",
    "RedisRun",
    "StreamProbe",
    "numbered_ids",
    "numbered_properties",
    "publish_numbered",
    "report",
    "wait_until",
]

#: Short reads, so that a stop or a lost connection is noticed within a tenth of a second.
BLOCK_MS = 100
#: Publishes awaiting their reply at once while seeding a stream.
PUBLISH_CONCURRENCY = 50


def numbered_properties(message_id: str) -> tuple[bytes, MessageProperties]:
    """The body and properties of the numbered entry `message_id`."""
    properties = MessageProperties(content_type="application/json", message_id=message_id)
    return json.dumps({"id": message_id}).encode(), properties


async def publish_numbered(url: str, queue: str, ids: Iterable[str]) -> None:
    """Declare `queue` and XADD one JSON entry per id (each one answered by Redis)."""
    publisher = RedisStreamsBackend(url=url, queue=queue, consumer="publisher")
    async with publisher:
        await publisher.declare(queue)
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def publish(message_id: str) -> None:
            async with slots:
                await publisher.publish(queue, *numbered_properties(message_id))

        await asyncio.gather(*(publish(message_id) for message_id in ids))


class StreamProbe:
    """Looks at one queue's keys with a plain redis-py client of its own (reconnected by
    redis-py on its next command after a fault)."""

    def __init__(self, url: str, queue: str) -> None:
        self.keys = RedisStreamsConfig(url=url, queue=queue).keys(queue)
        self.client = Redis.from_url(url)

    async def counts(self) -> dict[str, int]:
        """Entries in the stream (waiting or pending: acked ones are deleted), pending in
        the group, in the retry set and in the dead-letter stream."""
        stream, retry, dlq = self.keys.stream, self.keys.retry, self.keys.dead_letter
        pending = 0
        with contextlib.suppress(Exception):  # no group (yet): nothing pending
            pending = int((await self.client.xpending(stream, "foxwork"))["pending"])
        return {
            "stream": int(await self.client.xlen(stream)),
            "pending": pending,
            "retry": int(await self.client.zcard(retry)),
            "dlq": int(await self.client.xlen(dlq)),
        }

    async def message_ids(self) -> set[str]:
        """The message ids of every entry the stream holds."""
        entries: Any = await self.client.xrange(self.keys.stream)
        return {fields[b"message_id"].decode() for _, fields in entries}

    async def pending_of(self, consumer: str) -> int:
        rows: Any = await self.client.xpending_range(
            self.keys.stream, "foxwork", min="-", max="+", count=10_000, consumername=consumer
        )
        return len(rows)

    async def __aenter__(self) -> StreamProbe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Delete the queue's keys and close the client."""
        with contextlib.suppress(Exception):
            await self.client.delete(self.keys.stream, self.keys.retry, self.keys.dead_letter)
        with contextlib.suppress(Exception):
            await self.client.aclose()


class RedisRun:
    """A `WorkerPool` with AckNack + Retry middleware consuming one queue through
    `ResilientBackend(RedisStreamsBackend(...))`, run with `pool.run()` in a task.

    Args:
        url: the Redis URL.
        queue: the queue to consume.
        workers: the pool's workers.
        concurrency: the pool's concurrency limit (and prefetch).
        backend_options: more `RedisStreamsConfig` fields (consumer, claim_idle, ...).
    """

    def __init__(
        self,
        *,
        url: str,
        queue: str,
        workers: list[Worker[Any]],
        concurrency: int = 10,
        **backend_options: Any,
    ) -> None:
        self.queue = queue
        self.states = StateLog()
        backend_options.setdefault("block_ms", BLOCK_MS)
        self.redis = RedisStreamsBackend(url=url, queue=queue, **backend_options)
        self.backend = ResilientBackend(
            self.redis, strategy=FAST_RECONNECT, watchdog_interval=1.0, on_state_change=self.states
        )
        self.pool = WorkerPool(
            workers=workers,
            middleware=[AckNackMiddleware(), RetryMiddleware(**RETRY_SETTINGS)],
            concurrency_limit=concurrency,
            queues=[queue],
            name=f"redis-faults-{queue}",
        )
        self.task: asyncio.Task[None] | None = None
        self.stopped = False

    def consuming(self) -> bool:
        return (
            self.backend.is_connected
            and self.pool.state is PoolState.RUNNING
            and bool(self.pool.health()["consuming"])
        )

    async def start(self, timeout: float = 30.0) -> None:
        self.task = asyncio.create_task(self.pool.run(self.backend), name=f"pool-{self.queue}")
        await wait_until(
            lambda: self.task is not None and (self.task.done() or self.consuming()),
            timeout=timeout,
            what="the pool is consuming",
        )
        if self.task.done():
            self.task.result()  # raises what made run() fail
        self.assert_running()

    def assert_running(self) -> None:
        """The pool never exited: still RUNNING, its `run()` task never ended."""
        assert self.task is not None and not self.task.done(), f"pool.run() ended: {self.task}"
        assert self.pool.state is PoolState.RUNNING, self.pool.state

    async def wait_consuming(self, timeout: float) -> float:
        return await wait_until(
            self.consuming, timeout=timeout, what="the backend is connected and consuming"
        )

    async def drain(self, probe: StreamProbe, timeout: float) -> dict[str, int]:
        """Wait until the stream, the group's pending list and the retry set are empty and
        the pool has nothing in flight, twice in a row across a Redis round trip."""
        last: dict[str, Any] = {}

        async def idle() -> bool:
            for _ in range(2):
                counts = await probe.counts()
                last.update(counts, in_flight=self.pool.in_flight)
                if counts["stream"] or counts["pending"] or counts["retry"] or last["in_flight"]:
                    return False
            return True

        await wait_until(idle, timeout=timeout, what=lambda: f"the queue is drained ({last})")
        return await probe.counts()

    async def stop(self) -> None:
        """Shut the pool down (in-flight messages finish), then close the backend."""
        if self.stopped:
            return
        self.stopped = True
        try:
            await self.pool.shutdown(SHUTDOWN_TIMEOUT)
            if self.task is not None:
                await asyncio.wait([self.task])
        finally:
            await self.backend.close()
