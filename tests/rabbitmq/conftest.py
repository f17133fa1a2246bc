"""Fixtures of the real-broker suite (all on the session's throwaway node, `rabbitmq_url`).

probe          a separate AMQP connection to inspect and tamper with queues
make_backend   factory of connected `RabbitMQBackend`s consuming `queue_name`, named after
               the test; closed at teardown, and their queues and exchanges deleted
backend        one such backend with the default settings
start_pool     factory of started `WorkerPool`s (AckNack + Retry by default); shut down
               at teardown, before the backends close
make_user      factory of extra broker users (own permissions); deleted at teardown
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from foxwork import Worker, WorkerPool
from foxwork.backends.base import Backend
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, Middleware, RetryMiddleware
from tests.harness.pytest_plugin import mark_folder
from tests.harness.rabbitmq import RabbitMQNode

from .support import Queues, RabbitProbe, delete_topology

#: Seconds a pool gets to drain at teardown.
TEARDOWN_SHUTDOWN_TIMEOUT = 5.0

BackendFactory = Callable[..., Awaitable[RabbitMQBackend]]
#: `make_user(configure=".*", write=".*", read=".*") -> (user name, AMQP URL as that user)`
UserFactory = Callable[..., tuple[str, str]]

_user_numbers = itertools.count(1)


class PoolStarter(Protocol):
    async def __call__(
        self,
        backend: Backend,
        *workers: Worker[Any],
        middleware: Sequence[Middleware] | None = None,
        **kwargs: Any,
    ) -> WorkerPool: ...


def default_middleware() -> list[Middleware]:
    """AckNack outermost, then Retry with three attempts and short, exact delays."""
    return [
        AckNackMiddleware(),
        RetryMiddleware(max_attempts=3, initial_backoff=0.05, max_backoff=1.0, jitter=0.0),
    ]


@pytest.fixture
async def probe(rabbitmq_url: str, request: pytest.FixtureRequest) -> AsyncIterator[RabbitProbe]:
    """A connection of its own, for looking at queues behind the backend's back."""
    probe = RabbitProbe(rabbitmq_url, connection_name=request.node.nodeid)
    await probe.connect()
    yield probe
    await probe.close()


@pytest.fixture
async def queues(rabbitmq_url: str, queue_name: str, probe: RabbitProbe) -> AsyncIterator[Queues]:
    """A plain work queue and its DLQ `{queue}-dlq`, deleted afterwards."""
    queues = Queues(rabbitmq_url, queue_name, f"{queue_name}-dlq")
    await probe.declare_plain_queue(queues.queue)
    await probe.declare_plain_queue(queues.dlq)
    yield queues
    await probe.delete_queues(queues.queue, queues.dlq)


@pytest.fixture
async def make_backend(
    rabbitmq_url: str, queue_name: str, probe: RabbitProbe, request: pytest.FixtureRequest
) -> AsyncIterator[BackendFactory]:
    """Factory of connected backends; keyword arguments override the config fields."""
    backends: list[RabbitMQBackend] = []

    async def factory(**overrides: Any) -> RabbitMQBackend:
        fields: dict[str, Any] = {
            "url": rabbitmq_url,
            "queue": queue_name,
            "connection_name": request.node.nodeid,
            **overrides,
        }
        backend = RabbitMQBackend(**fields)
        await backend.connect()
        backends.append(backend)
        return backend

    yield factory
    for backend in backends:
        await backend.close()
    for backend in backends:
        await delete_topology(probe, backend)


@pytest.fixture
async def backend(make_backend: BackendFactory) -> RabbitMQBackend:
    """A connected backend for `queue_name` with the default (classic queue) settings."""
    return await make_backend()


@pytest.fixture
async def start_pool(make_backend: BackendFactory) -> AsyncIterator[PoolStarter]:
    """`await start_pool(backend, worker, ..., middleware=[...], **pool_kwargs)`."""
    pools: list[WorkerPool] = []

    async def start(
        backend: Backend,
        *workers: Worker[Any],
        middleware: Sequence[Middleware] | None = None,
        **kwargs: Any,
    ) -> WorkerPool:
        pool = WorkerPool(
            workers=list(workers),
            middleware=default_middleware() if middleware is None else middleware,
            **kwargs,
        )
        pools.append(pool)
        await pool.start(backend)
        return pool

    yield start
    for pool in pools:
        await pool.shutdown(timeout=TEARDOWN_SHUTDOWN_TIMEOUT)


@pytest.fixture
def make_user(rabbitmq_node: RabbitMQNode, rabbitmq_url: str) -> Iterator[UserFactory]:
    """Factory of broker users on the throwaway node, with the given permission patterns
    on vhost `/`; each is deleted at teardown."""
    users: list[str] = []

    def factory(*, configure: str = ".*", write: str = ".*", read: str = ".*") -> tuple[str, str]:
        user = f"foxwork-test-user-{next(_user_numbers)}"
        password = f"{user}-password"
        rabbitmq_node.ctl("add_user", user, password)
        users.append(user)
        rabbitmq_node.ctl("set_permissions", "-p", "/", user, configure, write, read)
        parts = urlsplit(rabbitmq_url)
        netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
        return user, urlunsplit(parts._replace(netloc=netloc))

    yield factory
    for user in users:
        rabbitmq_node.ctl("delete_user", user)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test here needs the real broker: marked by folder, not file by file.
    mark_folder(items, Path(__file__).parent, pytest.mark.rabbitmq)
