"""A small HTTP server for probes and scraping: `/health`, `/ready` and `/metrics`.

`HealthServer` answers plain HTTP/1.1 on asyncio streams (one request per connection), so
it needs no web framework and runs on the pool's own event loop:

- `GET /health`: liveness. 200 with a JSON body while the event loop answers at all.
- `GET /ready`: readiness. 200 only while the pool is RUNNING, its backend is connected
  and every queue it consumes has an active consumer; 503 otherwise, with the reasons in
  the JSON body. Take a replica out of a load balancer or a rollout on it, not out of the
  cluster: a worker reconnecting to the broker is not ready, but it is alive.
- `GET /metrics`: the OpenTelemetry metrics of a `PrometheusReader`, in the Prometheus
  text format (0.0.4); 404 when the server has no reader. Without the OpenTelemetry SDK
  (`foxwork[otel]`), `PoolCounters` serves the pools' own counters instead.

The server reports one `WorkerPool`, or an `App` of several: then `/health` lists every pool
and `/ready` is 200 only while every pool consumes every one of its queues.

JSON bodies are built from `WorkerPool.health()`, which never holds secrets.

The server holds at most `max_connections` connections at once (a client beyond them is
answered 503 and disconnected at once), and gives each one `timeout` seconds to send its
request and take the answer: idle, slow or stalled clients cannot pile up.

Metrics are read from OpenTelemetry, not from a second metrics library: give the meter
provider a `PrometheusReader` and give the reader to the server. The reader and the
rendering (names, units, the text format) live in `foxwork.telemetry.prometheus`; they
are importable from here too.

Example:
    reader = PrometheusReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = WorkerPool(
        workers=[OrderWorker()],
        middleware=[AckNackMiddleware(), TracingMiddleware(),
                    MetricsMiddleware(meter_provider=provider), RetryMiddleware()],
        queues=["orders"],
    )
    async with HealthServer(pool, host="0.0.0.0", port=8080, metrics=reader):
        await pool.run(backend)

The CLI's `foxwork run --http-port PORT` does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ._checks import is_count, is_int, is_number
from .app import App
from .errors import ConfigurationError
from .pool import WorkerPool

if TYPE_CHECKING:
    from .telemetry.prometheus import PrometheusReader, render_prometheus

# PrometheusReader and render_prometheus are defined in foxwork.telemetry.prometheus, which
# needs the OpenTelemetry SDK: they are imported from there when first asked for.
__all__ = [
    "HealthServer",
    "MetricsSource",
    "PoolCounters",
    "PrometheusReader",
    "readiness",
    "render_prometheus",
]


def __getattr__(name: str) -> Any:
    if name in ("PrometheusReader", "render_prometheus"):
        from .telemetry import prometheus

        return getattr(prometheus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logger = logging.getLogger("foxwork.http")

#: Interface the server listens on: loopback unless asked otherwise.
DEFAULT_HOST = "127.0.0.1"
#: Port the server listens on; 0 picks a free one (read it from `HealthServer.port`).
DEFAULT_PORT = 0
#: Seconds a client has to send its request and read the answer before it is dropped.
REQUEST_TIMEOUT = 5.0
#: Connections held at once; probes and scrapers need a handful.
DEFAULT_MAX_CONNECTIONS = 64
#: Longest request line or header line accepted, in bytes.
MAX_LINE = 8192
#: Most header lines accepted in one request.
MAX_HEADERS = 100
#: Content type of the Prometheus text exposition format (as in `foxwork.telemetry.prometheus`,
#: which needs the SDK).
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    """What `/metrics` serves: a `PrometheusReader`, or `PoolCounters`."""

    def render(self) -> str:
        """The Prometheus text exposition (0.0.4)."""
        ...


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def readiness(health: dict[str, Any]) -> list[str]:
    """Why a pool with this `WorkerPool.health()` snapshot is not ready; empty when ready."""
    reasons = []
    if not health.get("running"):
        reasons.append(f"pool is {health.get('state', 'not running')}, not running")
    backend = health.get("backend")
    if not backend or not backend.get("connected"):
        reasons.append("backend is not connected")
    queues = health.get("queues") or []
    if not queues:
        reasons.append("no queue is being consumed")
    else:
        consuming = set(health.get("consuming") or [])
        idle = [queue for queue in queues if queue not in consuming]
        if idle:
            reasons.append(f"no active consumer on {', '.join(idle)}")
    return reasons


class PoolCounters:
    """`/metrics` without the OpenTelemetry SDK: the counters every pool keeps itself
    (`WorkerPool.health()`), in the Prometheus text format. Install `foxwork[otel]` for
    every foxwork metric (durations, retries, dead letters, circuit states, ...).

    Families (each with a `pool` label): `foxwork_pool_messages_received_total`,
    `foxwork_pool_messages_processed_total`, `foxwork_pool_messages_failed_total`,
    `foxwork_pool_messages_in_flight`, and `foxwork_pool_backend_connected` (1 or 0).
    """

    _FAMILIES = (
        ("messages_received_total", "counter", "received", "messages taken from the broker"),
        ("messages_processed_total", "counter", "processed", "messages processed without error"),
        ("messages_failed_total", "counter", "failed", "messages whose processing failed"),
        ("messages_in_flight", "gauge", "in_flight", "messages being processed now"),
    )

    def __init__(self, target: WorkerPool | App) -> None:
        self.target = target

    def render(self) -> str:
        pools = self.target.pools if isinstance(self.target, App) else (self.target,)
        healths = [pool.health() for pool in pools]
        lines = []
        for suffix, kind, key, help_text in self._FAMILIES:
            name = f"foxwork_pool_{suffix}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{pool="{_label(h["name"])}"}} {h[key]}' for h in healths]
        name = "foxwork_pool_backend_connected"
        lines += [f"# HELP {name} 1 while the backend is connected", f"# TYPE {name} gauge"]
        for health in healths:
            connected = int(bool((health.get("backend") or {}).get("connected")))
            lines.append(f'{name}{{pool="{_label(health["name"])}"}} {connected}')
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class HealthServer:
    """Serves `/health`, `/ready` and `/metrics` for a pool or an `App` (see the module
    docstring).

    Args:
        pool: the pool (or App) whose health it reports.
        host: the interface to listen on; the default is loopback only.
        port: the port; 0 picks a free one.
        metrics: the reader behind `/metrics`; without one `/metrics` answers 404.
        max_connections: connections held at once; one more is answered 503 and closed.
        timeout: seconds a client has to send its request and read the answer.

    Example:
        server = HealthServer(pool, port=8080, metrics=reader)
        await server.start()
        ...
        await server.close()
    """

    def __init__(
        self,
        pool: WorkerPool | App,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        metrics: MetricsSource | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if not isinstance(pool, WorkerPool | App):
            raise ConfigurationError(
                f"HealthServer(pool={pool!r}): pass a foxwork WorkerPool or App"
            )
        if not isinstance(host, str) or not host:
            raise ConfigurationError(
                f"HealthServer(host={host!r}): pass an interface such as '127.0.0.1' "
                "(loopback) or '0.0.0.0' (every interface)"
            )
        if not (is_int(port) and 0 <= port <= 65535):
            raise ConfigurationError(
                f"HealthServer(port={port!r}): pass a port from 1 to 65535, or 0 for any free port"
            )
        if metrics is not None and not callable(getattr(metrics, "render", None)):
            raise ConfigurationError(
                f"HealthServer(metrics={metrics!r}): pass the PrometheusReader given to "
                "the MeterProvider, or None to serve no /metrics"
            )
        if not is_count(max_connections):
            raise ConfigurationError(
                f"HealthServer(max_connections={max_connections!r}): pass how many "
                "connections to hold at once, at least 1"
            )
        if not (is_number(timeout) and 0 < timeout < math.inf):
            raise ConfigurationError(
                f"HealthServer(timeout={timeout!r}): pass the seconds a client has for its "
                "request and answer, more than 0"
            )
        self.pool = pool
        self.host = host
        self.max_connections = max_connections
        self.timeout = float(timeout)
        self._port = port
        self.metrics = metrics
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        kind = "app" if isinstance(self.pool, App) else "pool"
        return f"<HealthServer {state} on {self.host}:{self.port} {kind}={self.pool.name!r}>"

    @property
    def port(self) -> int:
        """The port listened on (the one picked when constructed with 0, once started)."""
        return self._port

    @property
    def open_connections(self) -> int:
        """Connections being served right now."""
        return len(self._connections)

    @property
    def url(self) -> str:
        """`http://host:port` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; returns once the port is bound. Calling it again does nothing.

        Raises:
            OSError: the port cannot be bound (in use, or not allowed).
        """
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._port, limit=MAX_LINE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("health endpoints on %s (/health, /ready, /metrics)", self.url)

    async def close(self) -> None:
        """Stop listening and drop open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        await server.wait_closed()

    # -- one connection, one request ------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._connections) >= self.max_connections:
            # Refused without waiting for the request or for the client to read: a full
            # server spends nothing more on it.
            status, content_type, body = _json(503, {"error": "too many connections"})
            writer.write(_head(status, content_type, len(body)) + body)
            writer.transport.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(self.timeout):
                await self._exchange(reader, writer)
        except (TimeoutError, ConnectionError):
            # Too slow to ask or to read the answer: drop it, unsent data and all.
            writer.transport.abort()
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await _read_request(reader)
        except asyncio.IncompleteReadError:
            return
        except (ValueError, asyncio.LimitOverrunError):
            status, content_type, body = _json(400, {"error": "malformed request"})
            method = "GET"
        else:
            status, content_type, body = self._respond(method, path)
        writer.write(_head(status, content_type, len(body)))
        if method != "HEAD":
            writer.write(body)
        await writer.drain()

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        route = path.split("?", 1)[0]
        if route not in ("/health", "/ready", "/metrics"):
            return _json(404, {"error": f"no route {route}; try /health, /ready or /metrics"})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": f"{method} not allowed; use GET"})
        target = self.pool
        key = "app" if isinstance(target, App) else "pool"
        if route == "/health":
            return _json(200, {"status": "alive", key: target.health()})
        if route == "/ready":
            health = target.health()
            reasons = target.readiness() if isinstance(target, App) else readiness(health)
            if reasons:
                return _json(503, {"status": "not ready", "reasons": reasons, key: health})
            return _json(200, {"status": "ready", "reasons": [], key: health})
        if self.metrics is None:
            return _json(404, {"error": "metrics are not configured on this server"})
        return 200, _PROMETHEUS_TEXT, self.metrics.render().encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    line = await reader.readuntil(b"\r\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("malformed request line")
    # The headers are read and ignored: no route needs them and nothing has a body.
    for _ in range(MAX_HEADERS):
        if await reader.readuntil(b"\r\n") == b"\r\n":
            return parts[0].upper(), parts[1]
    raise ValueError("too many headers")


def _json(status: int, payload: dict[str, Any]) -> tuple[int, str, bytes]:
    body = json.dumps(payload, default=str, separators=(",", ":")).encode()
    return status, "application/json", body


def _head(status: int, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("latin-1")
