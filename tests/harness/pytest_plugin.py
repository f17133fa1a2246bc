"""pytest plugin giving tests a real RabbitMQ broker, and a real Redis server, on loopback.

Registered with ``pytest_plugins = ["tests.harness.pytest_plugin"]`` in ``tests/conftest.py``.

Fixtures:
    rabbitmq_url: Session-scoped AMQP URL. ``$FOXWORK_TEST_RABBITMQ_URL`` when set (it must
        point at a loopback host), otherwise the URL of a throwaway node started once per
        session.
    rabbitmq_node: Session-scoped :class:`~tests.harness.rabbitmq.RabbitMQNode` behind
        ``rabbitmq_url``, for fault tests that kill or restart the broker. Skipped when
        ``$FOXWORK_TEST_RABBITMQ_URL`` is set, since an external broker cannot be killed.
        If a test leaves the node down, it is restarted after that test.

    redis_url: Session-scoped Redis URL. ``$FOXWORK_TEST_REDIS_URL`` when set (it must point
        at a loopback host), otherwise the URL of a throwaway server started once per session.
    redis_server: Session-scoped :class:`~tests.harness.redis.RedisServer` behind
        ``redis_url``, with an append-only file, for tests that kill or restart it. Skipped
        when ``$FOXWORK_TEST_REDIS_URL`` is set. If a test leaves it down, it is restarted
        after that test.

Helpers:
    make_cluster: Context manager starting a throwaway N-node RabbitMQ cluster for one test.
    make_redis_cluster: Context manager starting a throwaway Redis Cluster for one test.

Markers: ``rabbitmq``, ``faults`` and ``redis``.

When RabbitMQ or Redis is not installed or does not start, the tests needing it are skipped
with a loud reason, except on CI (``$CI`` is ``true`` or ``1``), where it is a failure.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import urlsplit

import pytest

from tests.harness.rabbitmq import (
    INSTALL_HINT,
    RabbitMQCluster,
    RabbitMQHarnessError,
    RabbitMQNode,
    RabbitMQNotInstalledError,
)
from tests.harness.redis import INSTALL_HINT as REDIS_INSTALL_HINT
from tests.harness.redis import (
    RedisCluster,
    RedisHarnessError,
    RedisNotInstalledError,
    RedisServer,
)

__all__ = [
    "AMQP_SCHEMES",
    "ENV_REDIS_URL",
    "ENV_URL",
    "REDIS_SCHEMES",
    "in_ci",
    "make_cluster",
    "make_redis_cluster",
    "rabbitmq_node",
    "rabbitmq_url",
    "redis_server",
    "redis_url",
    "validate_loopback_url",
]

ENV_URL = "FOXWORK_TEST_RABBITMQ_URL"
"""Environment variable naming an already running loopback broker to test against."""

NODE_START_TIMEOUT = 60.0
"""Seconds allowed for the session node to start."""

ENV_REDIS_URL = "FOXWORK_TEST_REDIS_URL"
"""Environment variable naming an already running loopback Redis to test against."""

REDIS_START_TIMEOUT = 15.0
"""Seconds allowed for the session Redis server to start (or restart and load its AOF)."""

AMQP_SCHEMES = ("amqp", "amqps")
"""URL schemes :func:`validate_loopback_url` accepts by default."""

REDIS_SCHEMES = ("redis", "rediss")
"""URL schemes of a Redis server, for :func:`validate_loopback_url`."""

_session_node_key = pytest.StashKey[RabbitMQNode]()
_session_redis_key = pytest.StashKey[RedisServer]()


def mark_folder(items: list[pytest.Item], folder: Path, *marks: pytest.MarkDecorator) -> None:
    """Give every collected test under `folder` the `marks`: a folder's conftest calls it
    from `pytest_collection_modifyitems` (with `tryfirst=True`, so the marks are there
    before `-m` selects), and no test file there can forget them."""
    for item in items:
        if item.path.is_relative_to(folder):
            for mark in marks:
                item.add_marker(mark)


def in_ci() -> bool:
    """Return whether we run on CI (``$CI`` is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _server_unavailable(
    exc: BaseException, *, product: str, label: str, missing: bool, hint: str
) -> NoReturn:
    """Skip the test (locally) or fail it (on CI) because ``product`` is not available."""
    if missing:
        reason = f"{label} TESTS SKIPPED: {exc}"
    else:
        reason = (
            f"{label} TESTS SKIPPED: {product} is installed but could not be started: "
            f"{exc}\n(if it is missing, {hint})"
        )
    if in_ci():
        pytest.fail(
            reason.replace(f"{label} TESTS SKIPPED", f"{product} is required on CI"),
            pytrace=False,
        )
    pytest.skip(reason)


def _broker_unavailable(exc: BaseException) -> NoReturn:
    """Skip the test (locally) or fail it (on CI) because no broker is available."""
    missing = isinstance(exc, RabbitMQNotInstalledError)
    _server_unavailable(
        exc, product="RabbitMQ", label="REAL-BROKER", missing=missing, hint=INSTALL_HINT
    )


def _redis_unavailable(exc: BaseException) -> NoReturn:
    """Skip the test (locally) or fail it (on CI) because no Redis server is available."""
    missing = isinstance(exc, RedisNotInstalledError)
    _server_unavailable(
        exc, product="Redis", label="REDIS", missing=missing, hint=REDIS_INSTALL_HINT
    )


def validate_loopback_url(url: str, *, schemes: tuple[str, ...] = AMQP_SCHEMES) -> str:
    """Check that ``url`` has one of ``schemes`` and names a server on a loopback address.

    Args:
        url: The URL to check, e.g. ``amqp://guest:guest@127.0.0.1:5672/``.
        schemes: The accepted schemes; AMQP by default, ``REDIS_SCHEMES`` for Redis.

    Returns:
        The URL, unchanged.

    Raises:
        ValueError: The URL's scheme is not one of ``schemes`` or its host is not loopback.
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r} is not a {' or '.join(f'{s}://' for s in schemes)} URL")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"host {host!r} of {url!r} is not a loopback address; the tests create and "
                "delete data and kill connections, so they only run against a server on "
                "127.0.0.1, ::1 or localhost"
            )
    return url


def _external_url(env: str, schemes: tuple[str, ...]) -> str | None:
    """Return the URL in ``$env``, or None when unset; fail the test if it is not loopback."""
    external = os.environ.get(env)
    if not external:
        return None
    try:
        return validate_loopback_url(external, schemes=schemes)
    except ValueError as exc:
        pytest.fail(f"{env} refused: {exc}", pytrace=False)


def _skip_if_external(env: str, server: str, throwaway: str) -> None:
    """Skip a test that kills or restarts the throwaway server when ``$env`` names another."""
    external = os.environ.get(env)
    if external:
        pytest.skip(
            f"{env} is set ({external}), so the tests use that external {server}, which "
            f"they cannot kill or restart; unset it to run this test against a throwaway "
            f"{throwaway}"
        )


class _Server(Protocol):
    def start(self, timeout: float) -> object: ...
    def stop(self) -> None: ...


def _start_or_give_up(
    server: _Server,
    timeout: float,
    errors: type[Exception],
    unavailable: Callable[[BaseException], NoReturn],
) -> None:
    """Start ``server``; on ``errors`` stop it and skip (or, on CI, fail) the test."""
    try:
        server.start(timeout=timeout)
    except errors as exc:
        server.stop()
        unavailable(exc)
    except BaseException:
        server.stop()
        raise


def _announce(request: pytest.FixtureRequest, line: str) -> None:
    """Write ``line`` to the terminal when pytest runs verbosely."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and request.config.get_verbosity() > 0:
        terminal.write_line(f"\n{line}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers used by real-broker tests (harmless if already declared)."""
    config.addinivalue_line("markers", "rabbitmq: needs a real RabbitMQ broker")
    config.addinivalue_line("markers", "faults: injects broker or network faults")
    config.addinivalue_line(
        "markers", "redis: needs a real Redis server (started by the test harness)"
    )


@pytest.fixture(scope="session")
def rabbitmq_node(request: pytest.FixtureRequest) -> Iterator[RabbitMQNode]:
    """Start one throwaway RabbitMQ node for the whole session.

    Yields:
        The running node; it is stopped and its data deleted at the end of the session.
    """
    _skip_if_external(ENV_URL, "broker", "node")
    node = RabbitMQNode()
    began = time.monotonic()
    _start_or_give_up(node, NODE_START_TIMEOUT, RabbitMQHarnessError, _broker_unavailable)
    request.config.stash[_session_node_key] = node
    _announce(
        request,
        f"RabbitMQ test node {node.name} at {node.url} "
        f"(started in {time.monotonic() - began:.1f} s, data in {node.base_dir})",
    )
    try:
        yield node
    finally:
        del request.config.stash[_session_node_key]
        node.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    """Return the AMQP URL of the broker the tests use.

    ``$FOXWORK_TEST_RABBITMQ_URL`` when set (it must be a loopback URL), otherwise the
    URL of the session's throwaway node (see ``rabbitmq_node``).
    """
    external = _external_url(ENV_URL, AMQP_SCHEMES)
    if external is not None:
        return external
    node: RabbitMQNode = request.getfixturevalue("rabbitmq_node")
    return node.url


@pytest.fixture(autouse=True)
def _foxwork_session_servers_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, bring the session's RabbitMQ node and Redis server back up if the
    test left one of them down."""
    yield
    node = request.config.stash.get(_session_node_key, None)
    if node is not None and not node.is_running:
        node.restart(timeout=NODE_START_TIMEOUT)
    server = request.config.stash.get(_session_redis_key, None)
    if server is not None and not server.is_running:
        server.restart(timeout=REDIS_START_TIMEOUT)


@contextmanager
def make_cluster(size: int = 3, *, timeout: float = 180.0) -> Iterator[RabbitMQCluster]:
    """Start a throwaway ``size``-node cluster for the duration of a ``with`` block.

    Skips the calling test (fails it on CI) when RabbitMQ is missing or cannot start.
    Give such tests a generous ``@pytest.mark.timeout``: nodes start in parallel but
    each join takes a few seconds.

    Args:
        size: Number of nodes.
        timeout: Seconds allowed for the nodes to start.

    Yields:
        The started cluster; stopped and deleted on exit.

    Example:
        >>> with make_cluster(3) as cluster:  # doctest: +SKIP
        ...     urls = cluster.urls
    """
    cluster = RabbitMQCluster(size)
    _start_or_give_up(cluster, timeout, RabbitMQHarnessError, _broker_unavailable)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """Start one throwaway Redis server, with an append-only file, for the whole session.

    Yields:
        The running server; it is stopped and its directory deleted at the end of the session.
    """
    _skip_if_external(ENV_REDIS_URL, "Redis", "server")
    server = RedisServer(appendonly=True)
    _start_or_give_up(server, REDIS_START_TIMEOUT, RedisHarnessError, _redis_unavailable)
    request.config.stash[_session_redis_key] = server
    _announce(request, f"Redis test server at {server.url} (data in {server.data_dir})")
    try:
        yield server
    finally:
        del request.config.stash[_session_redis_key]
        server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """Return the URL of the Redis server the tests use.

    ``$FOXWORK_TEST_REDIS_URL`` when set (it must be a loopback URL), otherwise the URL of
    the session's throwaway server (see ``redis_server``).
    """
    external = _external_url(ENV_REDIS_URL, REDIS_SCHEMES)
    if external is not None:
        return external
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@contextmanager
def make_redis_cluster(size: int = 3, *, timeout: float = 60.0) -> Iterator[RedisCluster]:
    """Start a throwaway Redis Cluster of ``size`` masters for the duration of a ``with`` block.

    Skips the calling test (fails it on CI) when Redis is missing or cannot start.

    Args:
        size: Number of masters (at least 3).
        timeout: Seconds allowed for the cluster to start.

    Yields:
        The started cluster; stopped and deleted on exit.
    """
    cluster = RedisCluster(size)
    _start_or_give_up(cluster, timeout, RedisHarnessError, _redis_unavailable)
    try:
        yield cluster
    finally:
        cluster.stop()
