"""Every test in tests/redis needs a real Redis server: mark it ``redis``.

The marker is added at collection, before ``-m`` selects (``-m "not redis"`` leaves the folder
out), so that no test here can forget it. The fixtures are ``redis_url`` and
``redis_server`` from tests/harness/pytest_plugin.py, and for the backend tests
``make_backend`` (connected `RedisStreamsBackend`s of ``queue_name``), ``redis`` (a plain
client) and `Holder` (an intake that holds deliveries unsettled).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from foxwork import Message
from foxwork.backends.redis import RedisStreamsBackend
from tests.harness.pytest_plugin import mark_folder


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, Path(__file__).parent, pytest.mark.redis)


# -- fixtures of the backend tests -------------------------------------------------------

#: Short waits so that the tests run in well under a second each.
FAST = {"block_ms": 50, "claim_idle": 0.3}


class BackendFactory(Protocol):
    async def __call__(self, **settings: Any) -> RedisStreamsBackend: ...


@pytest.fixture
async def make_backend(redis_url: str, queue_name: str) -> AsyncIterator[BackendFactory]:
    """`await make_backend(consumer="a", ...)`: a connected `RedisStreamsBackend` of
    `queue_name` (short block and claim times), closed at teardown."""
    backends: list[RedisStreamsBackend] = []

    async def make(**settings: Any) -> RedisStreamsBackend:
        backend = RedisStreamsBackend(url=redis_url, queue=queue_name, **{**FAST, **settings})
        backends.append(backend)
        await backend.connect()
        await backend.declare(queue_name)
        return backend

    yield make
    for backend in backends:
        await backend.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client on the test server, to look at keys behind the backend."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Holder:
    """An intake that takes every delivery at once and holds it unsettled (no pool)."""

    def __init__(self) -> None:
        self.messages: list[Message[Any]] = []
        self._changed = asyncio.Event()

    def try_dispatch(self, message: Message[Any]) -> bool:
        self.messages.append(message)
        self._changed.set()
        return True

    async def dispatch(self, message: Message[Any]) -> None:
        self.try_dispatch(message)

    async def wait_for(
        self, predicate: Callable[[list[Message[Any]]], bool], *, what: str, timeout: float = 10
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.messages):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout} s waiting until {what}; held: "
                f"{[m.id for m in self.messages]}"
            ) from None

    async def wait_count(self, count: int) -> None:
        await self.wait_for(lambda held: len(held) >= count, what=f"{count} deliveries held")
