"""Fixtures of the contract suite: each test runs once per backend.

backend     a connected `MemoryBackend`, then a connected `RabbitMQBackend` on the
            session's broker (that parameter carries the `rabbitmq` mark)
broker      publish test messages and read queues back, the same way on either backend
start_pool  factory of started `WorkerPool`s on `backend`, shut down at teardown
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import pytest

from foxwork import MessageProperties, Worker, WorkerPool
from foxwork.backends import Backend, MemoryBackend
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import Middleware
from tests.rabbitmq.support import RabbitProbe, Received, delete_topology

#: Seconds a pool gets to drain at teardown.
TEARDOWN_SHUTDOWN_TIMEOUT = 5.0


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


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def _backend_and_broker(
    request: pytest.FixtureRequest, queue_name: str
) -> AsyncIterator[tuple[MemoryBackend | RabbitMQBackend, Broker]]:
    if request.param == "memory":
        memory = MemoryBackend()
        await memory.connect()
        yield memory, MemoryBroker(memory)
        await memory.close()
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
def backend(
    _backend_and_broker: tuple[MemoryBackend | RabbitMQBackend, Broker],
) -> MemoryBackend | RabbitMQBackend:
    """A connected backend of each kind; closed (and its queues deleted) at teardown."""
    return _backend_and_broker[0]


@pytest.fixture
def broker(_backend_and_broker: tuple[MemoryBackend | RabbitMQBackend, Broker]) -> Broker:
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
