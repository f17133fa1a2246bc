"""Self-tests of the Redis harness (tests/harness/redis.py); independent of the foxwork package.

They speak raw RESP over sockets: no Redis client library is involved.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from tests.harness.pytest_plugin import REDIS_SCHEMES, make_redis_cluster, validate_loopback_url
from tests.harness.rabbitmq import _port_accepts
from tests.harness.redis import RedisServer, execute

KEY = "foxwork-harness-durable"


def test_server_answers_ping_over_a_raw_socket(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(64)
            assert chunk, "the server closed the connection instead of answering PING"
            reply += chunk
    assert reply == b"+PONG\r\n"


def test_url_names_database_0_on_loopback(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    assert parts.scheme == "redis"
    assert parts.hostname == "127.0.0.1"
    assert parts.path == "/0"
    assert validate_loopback_url(redis_url, schemes=REDIS_SCHEMES) == redis_url


def test_server_listens_on_loopback_only_with_protected_mode(redis_server: RedisServer) -> None:
    assert execute(redis_server.port, "CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    assert execute(redis_server.port, "CONFIG", "GET", "protected-mode") == [
        b"protected-mode",
        b"yes",
    ]
    assert execute(redis_server.port, "CONFIG", "GET", "save") == [b"save", b""]


@pytest.mark.faults
def test_kill_and_restart_on_the_same_port_keeps_data_written_to_the_aof(
    redis_server: RedisServer,
) -> None:
    # Given a server with an append-only file that fsyncs every write before answering
    server = redis_server
    port, pid = server.port, server.pid
    assert execute(port, "CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
    assert execute(port, "CONFIG", "SET", "appendfsync", "always") == "OK"
    try:
        # When a key is written and the server is SIGKILLed
        assert execute(port, "SET", KEY, b"survives \x00 a crash") == "OK"
        server.kill()
        assert not server.is_running
        assert server.pid is None
        assert not _port_accepts(port), f"port {port} still accepts after the kill"

        # Then a restart on the same port and directory has the key back
        server.restart()
        assert server.is_running
        assert server.port == port
        assert server.pid not in (None, pid)
        assert execute(port, "GET", KEY) == b"survives \x00 a crash"
        # The restart takes its settings from the command line again.
        assert execute(port, "CONFIG", "GET", "appendfsync") == [b"appendfsync", b"everysec"]
    finally:
        if not server.is_running:
            server.restart()
        execute(port, "DEL", KEY)


def test_stop_deletes_the_temporary_directory(redis_server: RedisServer) -> None:
    # redis_server: skipped (failed on CI) like the other tests when Redis is missing.
    server = RedisServer().start()
    data_dir = server.data_dir
    assert data_dir.is_dir()
    server.stop()
    assert not server.is_running
    assert not data_dir.exists()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://localhost:6380/1", "redis://:pw@[::1]:6379"]
)
def test_loopback_redis_urls_are_accepted(url: str) -> None:
    assert validate_loopback_url(url, schemes=REDIS_SCHEMES) == url


@pytest.mark.parametrize(
    "url", ["redis://10.0.0.5:6379/0", "redis://cache.example.com/0", "amqp://127.0.0.1/"]
)
def test_non_loopback_redis_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        validate_loopback_url(url, schemes=REDIS_SCHEMES)


@pytest.mark.slow
def test_cluster_of_three_masters_covers_every_slot() -> None:
    with make_redis_cluster(3) as cluster:
        assert len({node.port for node in cluster.nodes}) == 3
        for node in cluster.nodes:
            info = execute(node.port, "CLUSTER", "INFO")
            assert isinstance(info, bytes)
            assert b"cluster_slots_assigned:16384" in info
            assert b"cluster_known_nodes:3" in info
        for url in cluster.urls:
            assert urlsplit(url).hostname == "127.0.0.1"
    assert not any(node.is_running for node in cluster.nodes)
    assert not cluster.base_dir.exists()
