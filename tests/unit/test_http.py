"""HealthServer: /health, /ready and /metrics over real HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from foxwork import ConfigurationError, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.http import HealthServer, PrometheusReader, readiness
from foxwork.middleware import AckNackMiddleware, MetricsMiddleware
from tests.conftest import PoolFactory, run_until_idle

from .helpers import RecordingWorker


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


async def request(server: HealthServer, path: str, method: str = "GET") -> Response:
    """One HTTP/1.1 request over a fresh connection, as a probe or a scraper sends it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if method != "HEAD":  # HEAD announces the length a GET would have, and sends nothing
        assert int(headers["content-length"]) == len(body)
    return Response(int(status_line.split()[1]), headers, body)


@pytest.fixture
def reader() -> PrometheusReader:
    return PrometheusReader()


@pytest.fixture
def meter_provider(reader: PrometheusReader) -> MeterProvider:
    """A private provider: tests never touch the global one."""
    return MeterProvider(metric_readers=[reader])


@pytest.fixture
def pool(make_pool: PoolFactory, meter_provider: MeterProvider) -> WorkerPool:
    return make_pool(
        RecordingWorker("w1"),
        middleware=[AckNackMiddleware(), MetricsMiddleware(meter_provider=meter_provider)],
    )


@pytest.fixture
async def server(pool: WorkerPool, reader: PrometheusReader) -> AsyncIterator[HealthServer]:
    async with HealthServer(pool, metrics=reader) as server:
        yield server


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"port": -1}, "port=-1"),
        ({"port": 70000}, "port=70000"),
        ({"port": "8080"}, "port='8080'"),
        ({"host": ""}, "host=''"),
        ({"metrics": object()}, "metrics=<object"),
        ({"max_connections": 0}, "max_connections=0"),
        ({"max_connections": 2.5}, "max_connections=2.5"),
        ({"timeout": 0}, "timeout=0"),
        ({"timeout": float("nan")}, "timeout=nan"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(
    pool: WorkerPool, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        HealthServer(pool, **kwargs)


def test_a_server_needs_a_pool() -> None:
    with pytest.raises(ConfigurationError, match="WorkerPool"):
        HealthServer(object())  # type: ignore[arg-type]


# -- /health ----------------------------------------------------------------------------


async def test_health_answers_200_with_the_pool_snapshot_even_before_the_pool_runs(
    server: HealthServer, pool: WorkerPool
) -> None:
    # Given a server whose pool has not started
    # When a liveness probe asks
    response = await request(server, "/health")

    # Then the process is alive, and the body says what the pool is doing
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "alive"
    assert body["pool"]["name"] == pool.name
    assert body["pool"]["state"] == "created"


# -- /ready -----------------------------------------------------------------------------


async def test_ready_is_200_while_running_and_503_after_the_backend_disconnects(
    server: HealthServer, pool: WorkerPool, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a running pool consuming its queue
    await pool.start(memory_backend)
    running = await request(server, "/ready")

    # When the backend loses its connection
    await memory_backend.close()
    disconnected = await request(server, "/ready")

    # Then it was ready, and no longer is, saying why
    assert running.status == 200
    assert running.json()["status"] == "ready"
    assert running.json()["pool"]["consuming"] == [queue_name]
    assert disconnected.status == 503
    reasons = disconnected.json()["reasons"]
    assert reasons == ["backend is not connected", f"no active consumer on {queue_name}"]


async def test_ready_is_503_before_the_pool_starts_and_after_it_stops(
    server: HealthServer, pool: WorkerPool, memory_backend: MemoryBackend
) -> None:
    # Given a pool that has not started
    before = await request(server, "/ready")

    # When it runs and then shuts down
    await pool.start(memory_backend)
    await pool.shutdown()
    after = await request(server, "/ready")

    # Then neither is ready
    assert before.status == after.status == 503
    assert "pool is created, not running" in before.json()["reasons"]
    assert "pool is stopped, not running" in after.json()["reasons"]


def test_readiness_names_every_queue_without_an_active_consumer() -> None:
    health = {
        "running": True,
        "state": "running",
        "backend": {"connected": True},
        "queues": ["orders", "refunds", "invoices"],
        "consuming": ["refunds"],
    }

    assert readiness(health) == ["no active consumer on orders, invoices"]


# -- /metrics ---------------------------------------------------------------------------


async def test_metrics_expose_the_processed_count_in_prometheus_format(
    server: HealthServer, pool: WorkerPool, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given three processed messages
    for n in range(3):
        await memory_backend.add_message(queue_name, {"order": n})
    await run_until_idle(pool, memory_backend, queue_name)

    # When Prometheus scrapes
    response = await request(server, "/metrics")

    # Then the count is there under Prometheus naming, with its labels
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = response.text.splitlines()
    assert "# TYPE foxwork_messages_processed_total counter" in lines
    assert f'foxwork_messages_processed_total{{queue="{queue_name}",worker="w1"}} 3' in lines
    assert f'foxwork_messages_failed_total{{queue="{queue_name}",worker="w1"}} 0' in lines
    assert f'foxwork_messages_in_flight{{queue="{queue_name}",worker="w1"}} 0' in lines
    assert "# TYPE foxwork_message_duration_seconds histogram" in lines
    bucket = (
        f'foxwork_message_duration_seconds_bucket{{queue="{queue_name}",worker="w1",le="+Inf"}} 3'
    )
    assert bucket in lines
    assert f'foxwork_message_duration_seconds_count{{queue="{queue_name}",worker="w1"}} 3' in lines


async def test_metrics_answer_404_when_the_server_has_no_reader(pool: WorkerPool) -> None:
    async with HealthServer(pool) as server:
        response = await request(server, "/metrics")

    assert response.status == 404
    assert "not configured" in response.json()["error"]


# -- HTTP details -----------------------------------------------------------------------


async def test_an_unknown_path_is_404_and_another_method_is_405(server: HealthServer) -> None:
    missing = await request(server, "/admin")
    posted = await request(server, "/ready", method="POST")

    assert missing.status == 404
    assert posted.status == 405


async def test_head_answers_the_status_without_a_body(server: HealthServer) -> None:
    response = await request(server, "/health", method="HEAD")

    assert (response.status, response.body) == (200, b"")


async def test_a_query_string_does_not_change_the_route(server: HealthServer) -> None:
    response = await request(server, "/health?verbose=1")

    assert response.status == 200


async def test_a_malformed_request_gets_400(server: HealthServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"HELLO\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()

    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_close_drops_idle_connections_and_frees_the_port(pool: WorkerPool) -> None:
    # Given a started server with a client that connected and sent nothing
    server = HealthServer(pool)
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    # When it closes (twice: close is idempotent)
    await server.close()
    await server.close()

    # Then the idle client is disconnected and nobody listens any more
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert port != 0
    assert server.url == f"http://127.0.0.1:{port}"


async def test_a_client_that_never_finishes_its_request_is_disconnected(
    pool: WorkerPool,
) -> None:
    # Given a short request deadline and a client that sends half a request
    server = HealthServer(pool, timeout=0.05)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: local")
    await writer.drain()

    # When the deadline passes
    raw = await asyncio.wait_for(reader.read(), timeout=5)

    # Then the server hangs up without answering, and keeps serving others
    writer.close()
    assert raw == b""
    assert (await request(server, "/health")).status == 200
    await server.close()


async def wait_for_open_connections(server: HealthServer, count: int) -> None:
    """Wait until the server holds `count` connections; fail after 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while server.open_connections != count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"the server holds {server.open_connections} connections, not {count}"
            )
        await asyncio.sleep(0.01)


async def test_connections_beyond_the_limit_are_answered_503_and_closed_at_once(
    pool: WorkerPool,
) -> None:
    # Given a server that holds at most 4 connections, and 4 clients that connect and say
    # nothing (with a deadline far away)
    server = HealthServer(pool, max_connections=4, timeout=60)
    await server.start()
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await wait_for_open_connections(server, 4)

    # When 6 more connect
    extra = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(6)]

    # Then each of them is told 503 and disconnected at once, instead of being held
    answers = await asyncio.wait_for(
        asyncio.gather(*(reader.read() for reader, _ in extra)), timeout=5
    )
    assert all(raw.startswith(b"HTTP/1.1 503 ") for raw in answers), answers
    assert server.open_connections == 4
    # and once the idle clients go, the server answers again
    for _, writer in [*idle, *extra]:
        writer.close()
    await wait_for_open_connections(server, 0)
    assert (await request(server, "/health")).status == 200
    await server.close()


async def test_a_client_that_does_not_read_its_answer_is_disconnected_after_the_timeout(
    pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an answer far larger than the socket buffers, and a short timeout
    server = HealthServer(pool, timeout=0.2)
    monkeypatch.setattr(
        server, "_respond", lambda method, path: (200, "text/plain", b"x" * (32 << 20))
    )
    await server.start()

    # When a client asks for it and never reads
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await wait_for_open_connections(server, 1)

    # Then the server drops the connection once the timeout has passed
    await wait_for_open_connections(server, 0)
    writer.close()
    await server.close()
