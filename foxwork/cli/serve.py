"""`serve()`: run a pool or an App until SIGINT or SIGTERM, as `foxwork run` does in each
process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

from .. import telemetry
from .._redact import redact
from ..app import App
from ..backends.base import Backend
from ..errors import AccessRefused, BackendError, ConfigurationError
from ..http import HealthServer
from ..middleware.circuit_breaker import CircuitBreakerMiddleware
from ..pool import DEFAULT_SHUTDOWN_TIMEOUT, WorkerPool
from .common import EXIT_OK, CommandLineError
from .heap import freeze_startup_heap

__all__ = ["serve"]

logger = logging.getLogger("foxwork.cli")

#: Loggers of the AMQP client, quiet while the CLI reports connect failures itself.
_CLIENT_LOGGERS = ("aiormq", "aio_pika")


class _Signals:
    """What SIGINT and SIGTERM do while `serve()` runs."""

    def __init__(self, app: App, shutdown_timeout: float) -> None:
        self._app = app
        self._timeout = shutdown_timeout
        self._received = 0
        self._shutdowns: set[asyncio.Task[Any]] = set()
        self.requested = asyncio.Event()
        self.exit_code = EXIT_OK

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.received, signum)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    def received(self, signum: int) -> None:
        self._received += 1
        name = signal.Signals(signum).name
        if self._received == 1:
            logger.info(
                "received %s: graceful shutdown, in-flight messages get %g s to finish "
                "(send it again to force)",
                name,
                self._timeout,
            )
            self._shutdown(self._timeout)
        elif self._received == 2:
            logger.warning(
                "received %s again: forcing shutdown; in-flight messages are nacked back "
                "to the queue",
                name,
            )
            self.exit_code = 128 + signum
            self._shutdown(0)
        else:
            # The broker redelivers whatever is left unsettled when the connection drops.
            logger.error("received %s a third time: exiting at once", name)
            logging.shutdown()
            os._exit(128 + signum)
        self.requested.set()

    def _shutdown(self, timeout: float) -> None:
        # Each pool brings its deadline forward when a shorter timeout follows.
        task = asyncio.ensure_future(self._app.shutdown(timeout))
        self._shutdowns.add(task)
        task.add_done_callback(self._shutdowns.discard)


async def serve(
    pool: WorkerPool | App,
    backend: Backend,
    *,
    queues: Sequence[str] | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    broker: str = "the broker",
    http: tuple[str, int, Any] | None = None,
    freeze_heap: bool = False,
) -> int:
    """Run `pool` (or every pool of an App) on `backend` until SIGINT or SIGTERM, then close
    the backend.

    The first signal shuts the pools down gracefully: intake stops, in-flight messages get
    `shutdown_timeout` seconds, the rest are nacked back to their queue. A second signal
    brings that deadline to now. Handlers are installed for the duration of the call only.

    Args:
        pool: a pool, or an App, that has not run yet.
        backend: the backend to consume from; connected here.
        queues: the queues a pool consumes (default: the pool's, else the backend's); an
            App names its own.
        shutdown_timeout: seconds in-flight messages get after the first signal.
        broker: how logs and errors name the backend (a URL in it is redacted).
        http: (host, port, PrometheusReader or None) to serve /health, /ready and /metrics
            on while the pool runs (from before the first connect, so /health answers while
            the broker is awaited). With a reader, /metrics also has the depth of every
            consumed queue, sampled every `QUEUE_DEPTH_INTERVAL` seconds once the pools run.
        freeze_heap: once the pool has started, freeze the objects alive then, so that
            garbage collections skip them (`foxwork.cli.heap.freeze_startup_heap`); the
            command line does unless `--no-gc-freeze`.

    Returns:
        0 after a graceful shutdown, 128 + N when a second signal N forced it.

    Raises:
        CommandLineError: the first connect failed, or the pool could not start.
    """
    broker = redact(broker)
    if isinstance(pool, App):
        app = pool
    else:
        try:
            app = App.of(pool, queues=queues or pool.queues or backend.queues)
        except ConfigurationError as exc:
            raise CommandLineError(str(exc)) from None
    loop = asyncio.get_running_loop()
    signals = _Signals(app, shutdown_timeout)
    signals.install(loop)
    server = await _start_http(pool, app, backend, http) if http is not None else None
    depths: telemetry.QueueDepthSampler | None = None
    orphan_watch = _watch_supervisor(signals)
    try:
        if not await _connect(backend, broker, stop=signals.requested):
            await app.shutdown(0)
            logger.info("stopped before %s could be reached; nothing was consumed", broker)
            return signals.exit_code
        try:
            await app.start(backend)
        except (BackendError, ConfigurationError) as exc:
            failed = app.failed_pool or app.pools[0]
            raise CommandLineError(f"cannot start pool {failed.name!r} on {broker}: {exc}") from exc
        if freeze_heap:
            logger.info(
                "start-up heap frozen: garbage collections skip its %d objects",
                freeze_startup_heap(),
            )
        _log_running(app, broker)
        if http is not None and http[2] is not None:
            # Sampled from now on, so that the first scrape after start-up has the depths.
            depths = telemetry.QueueDepthSampler(
                backend, (q for b in app.bindings for q in b.queues)
            )
            depths.start()
        await signals.requested.wait()
        report = await app.shutdown(shutdown_timeout)
    finally:
        signals.uninstall(loop)
        if orphan_watch is not None:
            orphan_watch.cancel()
        if depths is not None:
            await depths.stop()
        if server is not None:
            await server.close()
        await backend.close()
    how = "graceful" if signals.exit_code == EXIT_OK else "forced"
    logger.info(
        "%s shutdown complete: %d in-flight message(s) finished, %d nacked back to the queue",
        how,
        report.finished,
        report.requeued,
    )
    return signals.exit_code


#: Seconds between checks that the supervising parent of `--processes` is still alive.
SUPERVISOR_CHECK_INTERVAL = 1.0


def _watch_supervisor(signals: _Signals) -> asyncio.Task[None] | None:
    # A child of `foxwork run --processes` shuts down gracefully if its parent dies.
    parent = os.environ.get("FOXWORK_SUPERVISOR_PID")
    if not parent or not parent.isdigit():
        return None

    async def watch() -> None:
        # Polling: a parent's death sends no event a portable program can wait on.
        while os.getppid() == int(parent):  # noqa: ASYNC110
            await asyncio.sleep(SUPERVISOR_CHECK_INTERVAL)
        logger.warning("the supervising process %s is gone: shutting down", parent)
        signals.received(signal.SIGTERM)

    return asyncio.ensure_future(watch())


def _log_running(app: App, broker: str) -> None:
    stop = "stop it with Ctrl-C or SIGTERM"
    for b in app.bindings:
        logger.info(
            "pool %r running on %s, consuming %s (concurrency %d, prefetch %d)%s",
            b.pool.name,
            broker,
            ", ".join(b.queues),
            b.pool.concurrency_limit,
            b.pool.prefetch,
            f"; {stop}" if len(app.bindings) == 1 else "",
        )
    if len(app.bindings) > 1:
        logger.info("app %r running %d pools on %s; %s", app.name, len(app.bindings), broker, stop)


async def _start_http(
    shown: WorkerPool | App, app: App, backend: Backend, http: tuple[str, int, Any]
) -> Any:
    host, port, reader = http
    if reader is not None:
        telemetry.observe_connection(lambda: backend.is_connected, name=type(backend).__name__)
        for pool in app.pools:
            for index, layer in enumerate(pool.middleware):
                if isinstance(layer, CircuitBreakerMiddleware):
                    telemetry.observe_circuit(layer, f"{pool.name}-{index}")
    server = HealthServer(shown, host=host, port=port, metrics=reader)
    try:
        await server.start()
    except OSError as exc:
        raise CommandLineError(f"cannot serve HTTP on {host}:{port}: {exc}") from exc
    logger.info("serving /health, /ready and /metrics on %s", server.url)
    return server


async def _connect(backend: Backend, broker: str, *, stop: asyncio.Event) -> bool:
    # True once connected; False when a signal came first (a backend that waits for the
    # broker is cancelled then). A failure is one clear line, not a traceback.
    connecting = asyncio.ensure_future(_connect_quietly(backend))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})
    if connecting.cancelled():
        return False
    exc = connecting.exception()
    # ValueError covers ConfigurationError and a URL the client cannot parse.
    if isinstance(exc, BackendError | ValueError | OSError):
        detail = redact(str(exc))
        if broker not in detail:
            detail = f"cannot connect to {broker}: {detail}"
        if isinstance(exc, AccessRefused):
            # The broker runs and refused: the message says what to change.
            raise CommandLineError(detail) from exc
        raise CommandLineError(
            f"{detail} (start the broker, check the URL, or pass --wait-for-broker)"
        ) from exc
    if exc is not None:
        raise exc
    return not stop.is_set()


async def _connect_quietly(backend: Backend) -> None:
    with _quiet(_CLIENT_LOGGERS):
        await backend.connect()


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    # The AMQP client logs its own error for a failed connect; the CLI says it once, better.
    # At DEBUG level everything stays visible.
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)
