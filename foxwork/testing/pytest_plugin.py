"""pytest fixtures for testing foxwork workers; installed with foxwork (entry point
``pytest11``), so they need no import.

Fixtures:
    foxwork_pool: what `foxwork_harness` runs. Override it (in a conftest.py, or a test
        module) to return your `WorkerPool`, a list of pools, or your `App`.
    foxwork_harness: a running `foxwork.testing.TestHarness` of `foxwork_pool`, a new one
        for each test (needs pytest-asyncio, or any plugin that runs async fixtures).
    foxwork_rabbitmq_url: the AMQP URL of a real broker for the session:
        ``$FOXWORK_TEST_RABBITMQ_URL`` when set, else a throwaway node started on
        127.0.0.1 (`foxwork.testing.rabbitmq`); the tests using it are skipped, with the
        reason, when RabbitMQ is not installed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from .harness import TestHarness
from .rabbitmq import RabbitMQNotInstalled, ThrowawayRabbitMQ

__all__ = ["foxwork_harness", "foxwork_pool", "foxwork_rabbitmq_url"]

#: The environment variable naming a broker to use instead of a throwaway node.
ENV_URL = "FOXWORK_TEST_RABBITMQ_URL"


@pytest.fixture
def foxwork_pool() -> Any:
    """Override this fixture to return the pool (or pools, or App) `foxwork_harness` runs."""
    pytest.fail(
        "foxwork_harness runs the pool your `foxwork_pool` fixture returns: define one, e.g. "
        "in conftest.py:\n\n    @pytest.fixture\n    def foxwork_pool():\n"
        "        from myapp.workers import pool\n        return pool\n",
        pytrace=False,
    )


async def _harness(foxwork_pool: Any) -> AsyncIterator[TestHarness]:
    """A running `TestHarness` of the `foxwork_pool` fixture's pool, new for each test."""
    async with TestHarness(foxwork_pool) as harness:
        yield harness


def _no_async_plugin() -> None:
    pytest.fail(
        "foxwork_harness is an async fixture: pip install pytest-asyncio (or use "
        "`async with foxwork.testing.TestHarness(pool)` in the test)",
        pytrace=False,
    )


foxwork_harness: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on what the user installed
    foxwork_harness = pytest.fixture(_no_async_plugin, name="foxwork_harness")
else:
    foxwork_harness = pytest_asyncio.fixture(_harness, name="foxwork_harness")


@pytest.fixture(scope="session")
def foxwork_rabbitmq_url() -> Iterator[str]:
    """The AMQP URL of a real RabbitMQ for the session: ``$FOXWORK_TEST_RABBITMQ_URL``, or
    a throwaway node on 127.0.0.1 (skipped when RabbitMQ is not installed)."""
    url = os.environ.get(ENV_URL)
    if url:
        if urlsplit(url).scheme not in ("amqp", "amqps"):
            pytest.fail(f"${ENV_URL}={url!r} is not an amqp:// or amqps:// URL", pytrace=False)
        yield url
        return
    node = ThrowawayRabbitMQ()
    try:
        node.start()
    except RabbitMQNotInstalled as exc:
        pytest.skip(
            f"needs RabbitMQ: {exc}; install the rabbitmq-server package, or set "
            f"${ENV_URL} to a broker's URL"
        )
    try:
        yield node.url
    finally:
        node.stop()
