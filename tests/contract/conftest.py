"""Fixtures of the contract suite: each test runs once per backend.

backend     a connected `MemoryBackend`, a connected `RabbitMQBackend` on the session's
            broker (that parameter carries the `rabbitmq` mark), then a connected
            `RedisStreamsBackend` on the session's Redis server (the `redis` mark)
broker      publish test messages and read queues back, the same way on every backend
start_pool  factory of started `WorkerPool`s on `backend`, shut down at teardown

Where Redis differs from RabbitMQ, and how the suite reads it:
- A queue `Q` is the stream `foxwork:{Q}`; "ready" messages are its entries the consumer
  group has not delivered yet (after the group's last-delivered id). `Q-dlq` is the stream
  `foxwork:{Q}:dlq`.
- Retry copies wait in the sorted set `foxwork:{Q}:retry` for exactly their delay (no
  tiers, no per-message TTL): `waiting_retries` is its size.
- A message put back (nack with requeue, or a shutdown handing back what the pool never
  started) is a new entry at the end of the stream, not the old one at the head: the suite
  compares what is left as a set, never by position.
- Redis counts the deliveries of a pending entry itself, as a quorum queue does: a message
  whose consumer died comes back with `delivery_count` set, so the backend's
  `delivery_limit` (here `CRASH_LOOP_LIMIT`) caps a crash loop, not `RetryMiddleware`'s
  `max_redeliveries`, and the dead letter carries the broker-style `x-death` reason
  `delivery_limit` instead of foxwork's `x-failure-reason` (test_crash_loops.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from foxwork import MessageProperties, Worker, WorkerPool
from foxwork.backends import Backend, MemoryBackend
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.backends.redis.entry import decode
from foxwork.middleware import Middleware
from tests.rabbitmq.support import RabbitProbe, Received, delete_topology

#: Seconds a pool gets to drain at teardown.
TEARDOWN_SHUTDOWN_TIMEOUT = 5.0
#: Deliveries of a message whose consumer keeps dying before it is dead-lettered: the
#: crash-loop tests' `max_redeliveries`, and the Redis backend's `delivery_limit`.
CRASH_LOOP_LIMIT = 2


class Broker(Protocol):
    """What a contract test needs to see of a broker, whatever the backend."""

    async def publish(self, queue: str, body: bytes, properties: MessageProperties) -> None:
        """Declare `queue`'s topology and publish one message to it (confirmed)."""

    async def messages(self, queue: str) -> list[Received]:
        """The messages ready in `queue`, left in place."""

    async def ready(self, queue: str) -> int:
        """How many messages are ready in `queue` (0 when it does not exist)."""

    async def waiting_retries(self, queue: str) -> int:
        """How many retry copies of `queue`'s messages wait for their delay to pass."""


class MemoryBroker:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    async def publish(self, queue: str, body: bytes, properties: MessageProperties) -> None:
        await self.backend.declare(queue)
        await self.backend.publish(queue, body, properties)

    async def messages(self, queue: str) -> list[Received]:
        return [
            Received(s.body, s.properties, s.routing_key, s.exchange, s.redelivered)
            for s in self.backend.messages(queue)
        ]

    async def ready(self, queue: str) -> int:
        return len(self.backend.messages(queue))

    async def waiting_retries(self, queue: str) -> int:
        # depth = ready + unacked + delayed; with nothing in flight, the rest is delayed.
        return self.backend.depth(queue) - len(self.backend.messages(queue))


class RabbitBroker:
    def __init__(self, backend: RabbitMQBackend, probe: RabbitProbe) -> None:
        self.backend = backend
        self.probe = probe

    async def publish(self, queue: str, body: bytes, properties: MessageProperties) -> None:
        await self.backend.declare(queue)
        await self.backend.publish(queue, body, properties)

    async def messages(self, queue: str) -> list[Received]:
        return await self.probe.peek(queue)

    async def ready(self, queue: str) -> int:
        return await self.probe.ready(queue) or 0

    async def waiting_retries(self, queue: str) -> int:
        names = self.backend.config.names(queue)
        # The tiers the backend declared, from its topology (the only record of them).
        tiers = [names.retry_queue(ms) for q, ms in self.backend.topology._tiers if q == queue]
        return sum([await self.ready(tier) for tier in tiers])


class RedisBroker:
    def __init__(self, backend: RedisStreamsBackend, client: Redis) -> None:
        self.backend = backend
        self.client = client

    async def publish(self, queue: str, body: bytes, properties: MessageProperties) -> None:
        await self.backend.declare(queue)
        await self.backend.publish(queue, body, properties)

    async def messages(self, queue: str) -> list[Received]:
        if queue.endswith("-dlq"):
            key, after = self.backend.config.keys(queue.removesuffix("-dlq")).dead_letter, "-"
        else:
            key, after = self.backend.config.keys(queue).stream, await self._delivered(queue)
        entries: Any = await self.client.xrange(key, min=after)
        received = []
        for _id, fields in entries:
            entry = decode(fields)
            received.append(Received(entry.body, entry.properties, queue, "", entry.redelivered))
        return received

    async def _delivered(self, queue: str) -> str:
        """The range start of what the group has not delivered yet."""
        keys = self.backend.config.keys(queue)
        if not await self.client.exists(keys.stream):
            return "-"
        groups: Any = await self.client.xinfo_groups(keys.stream)
        for group in groups:
            if group["name"] == self.backend.config.group.encode():
                return "(" + group["last-delivered-id"].decode()
        return "-"

    async def ready(self, queue: str) -> int:
        return len(await self.messages(queue))

    async def waiting_retries(self, queue: str) -> int:
        return int(await self.client.zcard(self.backend.config.keys(queue).retry))

    async def delete(self, queue: str) -> None:
        keys = self.backend.config.keys(queue)
        await self.client.delete(keys.stream, keys.retry, keys.dead_letter)


AnyBackend = MemoryBackend | RabbitMQBackend | RedisStreamsBackend


@pytest.fixture(
    params=[
        "memory",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def _backend_and_broker(
    request: pytest.FixtureRequest, queue_name: str
) -> AsyncIterator[tuple[AnyBackend, Broker]]:
    if request.param == "memory":
        memory = MemoryBackend()
        await memory.connect()
        yield memory, MemoryBroker(memory)
        await memory.close()
        return
    if request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        client = Redis.from_url(redis_url)
        redis = RedisStreamsBackend(
            url=redis_url, queue=queue_name, block_ms=50, delivery_limit=CRASH_LOOP_LIMIT
        )
        broker = RedisBroker(redis, client)
        try:
            await redis.connect()
            yield redis, broker
        finally:
            await redis.close()
            await broker.delete(queue_name)
            await client.aclose()
        return
    url: str = request.getfixturevalue("rabbitmq_url")
    probe = RabbitProbe(url, connection_name=request.node.nodeid)
    await probe.connect()
    rabbit = RabbitMQBackend(url=url, queue=queue_name, connection_name=request.node.nodeid)
    try:
        await rabbit.connect()
        yield rabbit, RabbitBroker(rabbit, probe)
        await rabbit.close()
        await delete_topology(probe, rabbit)
    finally:
        await rabbit.close()
        await probe.close()


@pytest.fixture
def backend(_backend_and_broker: tuple[AnyBackend, Broker]) -> AnyBackend:
    """A connected backend of each kind; closed (and its queues deleted) at teardown."""
    return _backend_and_broker[0]


@pytest.fixture
def broker(_backend_and_broker: tuple[AnyBackend, Broker]) -> Broker:
    """Publish to and read queues of `backend`."""
    return _backend_and_broker[1]


class PoolStarter(Protocol):
    async def __call__(
        self, *workers: Worker[Any], middleware: Sequence[Middleware], **kwargs: Any
    ) -> WorkerPool: ...


@pytest.fixture
async def start_pool(backend: Backend, queue_name: str) -> AsyncIterator[PoolStarter]:
    """`await start_pool(worker, ..., middleware=[...], **pool_kwargs)` on `backend`,
    consuming `queue_name`."""
    pools: list[WorkerPool] = []

    async def start(
        *workers: Worker[Any], middleware: Sequence[Middleware], **kwargs: Any
    ) -> WorkerPool:
        kwargs.setdefault("queues", [queue_name])
        pool = WorkerPool(workers=list(workers), middleware=middleware, **kwargs)
        pools.append(pool)
        await pool.start(backend)
        return pool

    yield start
    for pool in pools:
        await pool.shutdown(timeout=TEARDOWN_SHUTDOWN_TIMEOUT)
