pytest_plugins = ["tests.harness.pytest_plugin"]
# The plugin line comes first, so the imports below it are deliberately not at the top.
# ruff: noqa: E402

# Fixtures shared by every test suite:
#   queue_name           a queue name unique to the test
#   make_memory_backend  factory of connected MemoryBackends, closed at teardown
#   memory_backend       one connected MemoryBackend, closed at teardown
#   make_pool            factory of WorkerPools consuming queue_name by default, shut down
#                        at teardown (before the backends close)
# and the helper run_until_idle(pool, backend, queue): start a pool, wait until the queue is
# drained, and re-raise the first exception a worker raised.

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import pytest

from foxwork import Message, PoolState, Worker, WorkerPool
from foxwork.backends import MemoryBackend

#: Seconds a fixture gives a pool to drain at teardown.
TEARDOWN_SHUTDOWN_TIMEOUT = 5.0


class PoolFactory(Protocol):
    def __call__(self, *workers: Worker[Any], **kwargs: Any) -> WorkerPool: ...


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_memory_backend() -> AsyncIterator[Callable[..., Awaitable[MemoryBackend]]]:
    """Factory of connected `MemoryBackend`s (keyword arguments go to the constructor)."""
    backends: list[MemoryBackend] = []

    async def factory(**kwargs: Any) -> MemoryBackend:
        backend = MemoryBackend(**kwargs)
        await backend.connect()
        backends.append(backend)
        return backend

    yield factory
    for backend in backends:
        await backend.close()


@pytest.fixture
async def memory_backend(
    make_memory_backend: Callable[..., Awaitable[MemoryBackend]],
) -> MemoryBackend:
    """A connected `MemoryBackend`, closed at teardown."""
    return await make_memory_backend()


@pytest.fixture
async def make_pool(
    queue_name: str,
    make_memory_backend: Callable[..., Awaitable[MemoryBackend]],
) -> AsyncIterator[PoolFactory]:
    """Factory of `WorkerPool`s: `make_pool(worker, ..., middleware=[...], ...)`.

    Keyword arguments go to `WorkerPool`; `queues` defaults to `[queue_name]`. Every pool
    is shut down at teardown, before any backend from `make_memory_backend` is closed.
    """
    pools: list[WorkerPool] = []

    def factory(*workers: Worker[Any], **kwargs: Any) -> WorkerPool:
        kwargs.setdefault("queues", [queue_name])
        if workers:
            kwargs["workers"] = list(workers)
        pool = WorkerPool(**kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.shutdown(timeout=TEARDOWN_SHUTDOWN_TIMEOUT)


class WorkerFailures:
    """Exceptions raised by the workers of one pool, in the order they happened."""

    def __init__(self) -> None:
        self.errors: list[tuple[Message[Any], Exception]] = []

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def exceptions(self) -> list[Exception]:
        return [exc for _, exc in self.errors]


_recorders: weakref.WeakKeyDictionary[WorkerPool, WorkerFailures] = weakref.WeakKeyDictionary()


def record_failures(pool: WorkerPool) -> WorkerFailures:
    """Record every exception the pool's workers raise (the innermost layer, so before
    any middleware turns it into a retry or a dead letter). Idempotent per pool."""
    failures = _recorders.get(pool)
    if failures is not None:
        return failures
    failures = _recorders[pool] = WorkerFailures()
    for worker in pool.workers:
        handle = worker.handle

        async def recording(
            message: Message[Any], _handle: Callable[[Message[Any]], Awaitable[None]] = handle
        ) -> None:
            try:
                await _handle(message)
            except Exception as exc:
                failures.errors.append((message, exc))
                raise

        worker.handle = recording  # type: ignore[method-assign]
    return failures


async def run_until_idle(
    pool: WorkerPool,
    backend: MemoryBackend,
    queue: str | Sequence[str],
    timeout: float = 5.0,
    *,
    expect_failures: bool = False,
) -> WorkerFailures:
    """Start `pool` on `backend` (unless it runs already) and wait until `queue` is drained:
    nothing ready, unacked or waiting for a retry.

    Args:
        pool: the pool; started here when it is still CREATED.
        backend: the backend, whose `join()` tells when a queue is drained.
        queue: the queue, or queues, to wait for.
        timeout: seconds to wait for the queues to drain.
        expect_failures: when False, the first exception a worker raised during this call
            is re-raised here, with its own traceback, and a failure raised by a middleware
            fails the test.

    Returns:
        Every worker failure of the pool so far (useful with `expect_failures=True`).
    """
    failures = record_failures(pool)
    seen = len(failures)
    if pool.state is PoolState.CREATED:
        await pool.start(backend)
    queues = [queue] if isinstance(queue, str) else list(queue)
    await asyncio.gather(*(backend.join(name, timeout=timeout) for name in queues))
    if not expect_failures:
        if len(failures) > seen:
            raise failures.errors[seen][1]
        if pool.failed > len(failures):
            pytest.fail(
                f"{pool.failed} message(s) failed in a middleware layer, not in a worker; "
                "see the 'foxwork.pool' log records"
            )
    return failures
