"""pytest plugin giving tests a real RabbitMQ broker on loopback.

Registered with ``pytest_plugins = ["tests.harness.pytest_plugin"]`` in ``tests/conftest.py``.

Fixtures:
    rabbitmq_url: Session-scoped AMQP URL. ``$FOXWORK_TEST_RABBITMQ_URL`` when set (it must
        point at a loopback host), otherwise the URL of a throwaway node started once per
        session.
    rabbitmq_node: Session-scoped :class:`~tests.harness.rabbitmq.RabbitMQNode` behind
        ``rabbitmq_url``, for fault tests that kill or restart the broker. Skipped when
        ``$FOXWORK_TEST_RABBITMQ_URL`` is set, since an external broker cannot be killed.
        If a test leaves the node down, it is restarted after that test.

Helper:
    make_cluster: Context manager starting a throwaway N-node cluster for one test.

When RabbitMQ is not installed or does not start, the tests are skipped with a loud
reason, except on CI (``$CI`` is ``true`` or ``1``), where a missing broker is a failure.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from tests.harness.rabbitmq import (
    INSTALL_HINT,
    RabbitMQCluster,
    RabbitMQHarnessError,
    RabbitMQNode,
    RabbitMQNotInstalledError,
)

__all__ = [
    "ENV_URL",
    "in_ci",
    "make_cluster",
    "rabbitmq_node",
    "rabbitmq_url",
    "validate_loopback_url",
]

ENV_URL = "FOXWORK_TEST_RABBITMQ_URL"
"""Environment variable naming an already running loopback broker to test against."""

NODE_START_TIMEOUT = 60.0
"""Seconds allowed for the session node to start."""

_session_node_key = pytest.StashKey[RabbitMQNode]()


def in_ci() -> bool:
    """Return whether we run on CI (``$CI`` is ``true`` or ``1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _broker_unavailable(exc: BaseException) -> NoReturn:
    """Skip the test (locally) or fail it (on CI) because no broker is available."""
    if isinstance(exc, RabbitMQNotInstalledError):
        reason = f"REAL-BROKER TESTS SKIPPED: {exc}"
    else:
        reason = (
            f"REAL-BROKER TESTS SKIPPED: RabbitMQ is installed but could not be started: "
            f"{exc}\n(if it is missing, {INSTALL_HINT})"
        )
    if in_ci():
        pytest.fail(
            reason.replace("REAL-BROKER TESTS SKIPPED", "RabbitMQ is required on CI"),
            pytrace=False,
        )
    pytest.skip(reason)


def validate_loopback_url(url: str) -> str:
    """Check that ``url`` is an AMQP URL of a broker on a loopback address.

    Args:
        url: The URL to check, e.g. ``amqp://guest:guest@127.0.0.1:5672/``.

    Returns:
        The URL, unchanged.

    Raises:
        ValueError: The URL is not ``amqp://``/``amqps://`` or its host is not loopback.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"{url!r} is not an amqp:// or amqps:// URL")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"host {host!r} of {url!r} is not a loopback address; the tests create and "
                "delete queues and kill connections, so they only run against a broker on "
                "127.0.0.1, ::1 or localhost"
            )
    return url


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers used by real-broker tests (harmless if already declared)."""
    config.addinivalue_line("markers", "rabbitmq: needs a real RabbitMQ broker")
    config.addinivalue_line("markers", "faults: injects broker or network faults")


@pytest.fixture(scope="session")
def rabbitmq_node(request: pytest.FixtureRequest) -> Iterator[RabbitMQNode]:
    """Start one throwaway RabbitMQ node for the whole session.

    Yields:
        The running node; it is stopped and its data deleted at the end of the session.
    """
    external = os.environ.get(ENV_URL)
    if external:
        pytest.skip(
            f"{ENV_URL} is set ({external}), so the tests use that external broker, which "
            "they cannot kill or restart; unset it to run this test against a throwaway node"
        )
    node = RabbitMQNode()
    began = time.monotonic()
    try:
        node.start(timeout=NODE_START_TIMEOUT)
    except RabbitMQHarnessError as exc:
        node.stop()
        _broker_unavailable(exc)
    except BaseException:
        node.stop()
        raise
    request.config.stash[_session_node_key] = node
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and request.config.get_verbosity() > 0:
        terminal.write_line(
            f"\nRabbitMQ test node {node.name} at {node.url} "
            f"(started in {time.monotonic() - began:.1f} s, data in {node.base_dir})"
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
    external = os.environ.get(ENV_URL)
    if external:
        try:
            return validate_loopback_url(external)
        except ValueError as exc:
            pytest.fail(f"{ENV_URL} refused: {exc}", pytrace=False)
    node: RabbitMQNode = request.getfixturevalue("rabbitmq_node")
    return node.url


@pytest.fixture(autouse=True)
def _foxwork_rabbitmq_node_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, bring the session node back up if the test left it down."""
    yield
    node = request.config.stash.get(_session_node_key, None)
    if node is not None and not node.is_running:
        node.restart(timeout=NODE_START_TIMEOUT)


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
    try:
        cluster.start(timeout=timeout)
    except RabbitMQHarnessError as exc:
        _broker_unavailable(exc)
    try:
        yield cluster
    finally:
        cluster.stop()
