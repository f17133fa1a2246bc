"""The `foxwork` command: `foxwork run` serves a pool, `foxwork demo` shows one at work.

The command line owns what a library must not: the signal handlers and the logging setup.
A `WorkerPool` stays embeddable; here SIGINT and SIGTERM turn into `pool.shutdown()`.

Exit codes:
    0: the pool stopped gracefully (or the demo finished).
    1: an unexpected error (with its traceback).
    2: a usage or configuration error, or the first connection to the broker failed.
    128 + N: a second signal N forced the exit (130 for SIGINT, 143 for SIGTERM).

Each subcommand is one function that adds its parser to `COMMANDS`; the parser it adds
sets `handler`, a function from the parsed arguments to the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar

from . import __version__
from ._cli_common import ENV_URL, CommandLineError
from ._cli_dlq import add_dlq_command
from ._redact import RedactingFormatter, redact, redact_url
from .backends.base import Backend
from .backends.memory import MemoryBackend
from .errors import BackendError, ConfigurationError
from .heap import freeze_startup_heap
from .pool import DEFAULT_SHUTDOWN_TIMEOUT, PoolState, WorkerPool

__all__ = [
    "COMMANDS",
    "ENV_URL",
    "EVENT_LOOPS",
    "CommandLineError",
    "build_parser",
    "loop_factory",
    "main",
    "make_backend",
    "run_on_loop",
]

logger = logging.getLogger("foxwork.cli")

#: Every log line: time, level, logger, message (URLs in it redacted).
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The event loops `foxwork run --loop` offers; asyncio's own is the default.
EVENT_LOOPS = ("asyncio", "uvloop")
#: Loggers of the AMQP client, quiet while the CLI reports connect failures itself.
_CLIENT_LOGGERS = ("aiormq", "aio_pika")

EXIT_OK = 0
EXIT_USAGE = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
T = TypeVar("T")


# -- the parser --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more seconds")
    return value


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: {default})",
    )


def add_run_command(subparsers: Subparsers) -> None:
    """`foxwork run MODULE:ATTR`: serve a pool until SIGINT or SIGTERM."""
    parser = subparsers.add_parser(
        "run",
        help="consume with a WorkerPool until SIGINT or SIGTERM",
        description=(
            "Import a WorkerPool (or a function returning one) and run it. The first SIGINT "
            "or SIGTERM shuts it down gracefully; a second one forces the exit."
        ),
    )
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="where the pool is, e.g. myapp.workers:pool or myapp.workers:make_pool",
    )
    parser.add_argument(
        "--url",
        help=(
            f"AMQP URL of the broker (default: ${ENV_URL}; with neither, the pool runs on the "
            "in-memory backend)"
        ),
    )
    parser.add_argument(
        "--queue",
        action="append",
        metavar="Q",
        help="a queue to consume (repeatable; default: the pool's queues)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="messages processed at once (default: the pool's concurrency limit)",
    )
    parser.add_argument(
        "--prefetch",
        type=_positive_int,
        metavar="N",
        help="unsettled deliveries per queue (default: the concurrency)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="S",
        help=(
            "seconds in-flight messages get to finish after a signal before they are nacked "
            f"back to the queue (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help=(
            "run N worker processes, each with its own connection, under a parent that "
            "forwards signals and restarts a crashed one (default: 1; with --http-port P, "
            "process i serves on P+i)"
        ),
    )
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="serve /health, /ready and /metrics (Prometheus) on this port (0: any free port)",
    )
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface for --http-port (default: 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--wait-for-broker",
        action="store_true",
        help="keep retrying the first connection instead of exiting with code 2",
    )
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help=(
            "do not freeze the start-up heap: by default, once the pool has started, the "
            "objects alive then are frozen, so garbage collections skip them"
        ),
    )
    parser.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="asyncio",
        help=(
            "the event loop: asyncio (the default) or uvloop, a faster drop-in loop that "
            "must be installed (pip install 'foxwork[uvloop]')"
        ),
    )
    _add_log_level(parser, "INFO")
    parser.set_defaults(handler=_run_command)


def add_demo_command(subparsers: Subparsers) -> None:
    """`foxwork demo`: the example order pool on the in-memory backend."""
    from . import _demo

    parser = subparsers.add_parser(
        "demo",
        help="watch an example pool process orders, with retries and dead letters",
        description=(
            "Run an example order pool on the in-memory backend: some orders fail for a "
            "while and are retried, one has an unknown SKU and one is malformed; both end "
            "in the dead-letter queue. No broker needed."
        ),
    )
    parser.add_argument(
        "--messages",
        type=_positive_int,
        default=_demo.DEFAULT_MESSAGES,
        metavar="N",
        help=f"orders to process, at least {_demo.MIN_MESSAGES} "
        f"(default: {_demo.DEFAULT_MESSAGES})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=_demo.DEFAULT_WORKERS,
        metavar="K",
        help=f"workers in the pool (default: {_demo.DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="replay the run with this seed (default: a random one, shown in the summary)",
    )
    _add_log_level(parser, "ERROR")
    parser.set_defaults(handler=_demo_command)


#: The subcommands, in the order `foxwork --help` lists them. Adding a subcommand is
#: adding one function here.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    add_run_command,
    add_demo_command,
    add_dlq_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The `foxwork` argument parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="foxwork",
        description="foxwork: asyncio workers for RabbitMQ queues.",
    )
    parser.add_argument("--version", action="version", version=f"foxwork {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `foxwork` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with _logging(args.log_level):
            return handler(args)
    except CommandLineError as exc:
        message = " ".join(redact(str(exc)).split())
        print(f"foxwork {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


@contextlib.contextmanager
def _logging(level: str) -> Iterator[None]:
    # Log lines go to stderr, every URL in them redacted (tracebacks included).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


# -- foxwork run -------------------------------------------------------------------------


def load_pool(target: str) -> WorkerPool:
    """Import `MODULE:ATTR` and return the pool it names (or that calling it returns).

    The current directory is importable, as with `python -m`.

    Raises:
        CommandLineError: the target is malformed, missing or not a pool.
    """
    module_name, colon, attr_path = target.partition(":")
    if not colon or not module_name or not attr_path:
        raise CommandLineError(
            f"{target!r} is not MODULE:ATTR: name the module and the pool in it, "
            "e.g. myapp.workers:pool"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this module does not exist"; an import failing inside it shows its traceback.
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise CommandLineError(
            f"cannot import module {module_name!r} ({exc}): check the spelling, and run "
            "foxwork from the directory that contains it (or install it)"
        ) from None
    found: Any = module
    for part in attr_path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CommandLineError(
                f"module {module_name!r} has no attribute {attr_path!r}: "
                f"name a WorkerPool defined in {module.__file__}"
            ) from None
    if isinstance(found, WorkerPool):
        return found
    if not callable(found):
        raise CommandLineError(
            f"{target} is a {type(found).__name__}: expected a WorkerPool, or a function "
            "without arguments that returns one"
        )
    pool = found()
    if inspect.iscoroutine(pool):
        pool.close()
        raise CommandLineError(
            f"{target} is an async function: make it a plain function that returns the "
            "WorkerPool (the pool connects when it runs)"
        )
    if not isinstance(pool, WorkerPool):
        raise CommandLineError(f"{target}() returned a {type(pool).__name__}, not a WorkerPool")
    return pool


def make_backend(
    url: str, queues: Sequence[str], *, prefetch: int, wait_for_broker: bool
) -> Backend:
    """The backend `foxwork run --url` consumes from: RabbitMQ, reconnected forever once
    connected.

    Args:
        url: the AMQP URL.
        queues: the queues to consume.
        prefetch: unsettled deliveries per queue.
        wait_for_broker: the first connect keeps retrying instead of failing fast.
    """
    from .backends.rabbitmq import RabbitMQBackend, RabbitMQConsumerConfig
    from .backends.resilient import ResilientBackend

    return ResilientBackend(
        RabbitMQBackend(
            RabbitMQConsumerConfig(url=url, queue=list(queues), prefetch_count=prefetch)
        ),
        fail_fast=not wait_for_broker,
    )


def _install_metrics() -> Any:
    # Before the pool is imported, so every meter its middleware asks for reports here.
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    from .http import PrometheusReader

    reader = PrometheusReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory of `--loop NAME`: None for asyncio's own loop.

    Raises:
        CommandLineError: uvloop was asked for but is not installed.
    """
    if name == "asyncio":
        return None
    try:
        # Imported by name: uvloop is an optional extra, absent from most installs.
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        raise CommandLineError(
            "--loop uvloop needs uvloop, which is not installed: pip install "
            "'foxwork[uvloop]' (or pip install uvloop), or leave --loop at asyncio"
        ) from None
    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_event_loop


def run_on_loop(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run `main` to completion on a fresh event loop of the kind `--loop` names, as
    `asyncio.run` does.

    Raises:
        CommandLineError: the loop is not available (`main` is closed, never started).
    """
    try:
        factory = loop_factory(loop)
    except CommandLineError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _run_command(args: argparse.Namespace) -> int:
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        raise CommandLineError(f"--http-port {args.http_port}: use a port from 0 to 65535")
    loop_factory(args.loop)  # an unavailable loop fails here, before anything is imported
    if args.loop != "asyncio":
        logger.info("event loop: %s", args.loop)
    if args.processes > 1:
        return _supervise(args)
    index = int(os.environ.get("FOXWORK_PROCESS_INDEX", "0"))
    if args.http_port and index:
        args.http_port += index
    reader = _install_metrics() if args.http_port is not None else None
    pool = load_pool(args.target)
    if pool.state is not PoolState.CREATED:
        raise CommandLineError(f"{args.target} is {pool.state.value}: a pool runs only once")
    # The pool is not running yet, so its limits can still change (argparse checked them).
    if args.concurrency is not None:
        pool.concurrency_limit = args.concurrency
        pool.prefetch = args.concurrency
    if args.prefetch is not None:
        pool.prefetch = args.prefetch
    queues = tuple(args.queue or pool.queues)
    if not queues:
        raise CommandLineError(
            f"no queue to consume: pass --queue NAME, or queues=[...] to the pool in {args.target}"
        )
    url: str | None = args.url or os.environ.get(ENV_URL) or None
    if url is None:
        logger.warning(
            "no broker URL (--url or $%s): running on the in-memory backend; messages live "
            "only in this process",
            ENV_URL,
        )
        backend: Backend = MemoryBackend(queues=queues)
        broker = "the in-memory backend"
    else:
        broker = redact_url(url)
        try:
            backend = make_backend(
                url, queues, prefetch=pool.prefetch, wait_for_broker=args.wait_for_broker
            )
        except ImportError as exc:
            raise CommandLineError(
                f"cannot use {broker}: the RabbitMQ backend cannot be loaded: {exc}"
            ) from None
        except ConfigurationError as exc:
            raise CommandLineError(f"invalid broker settings for {broker}: {exc}") from None
    return run_on_loop(
        serve(
            pool,
            backend,
            queues=queues,
            shutdown_timeout=args.shutdown_timeout,
            broker=broker,
            http=(args.http_host, args.http_port, reader) if args.http_port is not None else None,
            freeze_heap=args.gc_freeze,
        ),
        args.loop,
    )


def _supervise(args: argparse.Namespace) -> int:
    from .supervisor import supervise

    load_pool(args.target)  # fail here, once, rather than in N children
    url: str | None = args.url or os.environ.get(ENV_URL) or None
    if url is None:
        raise CommandLineError(
            "--processes needs a broker (--url or $FOXWORK_URL): in-memory queues cannot be "
            "shared between processes"
        )
    child = [
        "run",
        args.target,
        "--shutdown-timeout",
        str(args.shutdown_timeout),
        "--log-level",
        args.log_level,
        "--http-host",
        args.http_host,
        "--loop",
        args.loop,
    ]
    for queue in args.queue or ():
        child += ["--queue", queue]
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--prefetch", args.prefetch),
        ("--http-port", args.http_port),
    ):
        if value is not None:
            child += [flag, str(value)]
    if args.wait_for_broker:
        child.append("--wait-for-broker")
    if not args.gc_freeze:
        child.append("--no-gc-freeze")
    # The URL travels in the environment: a command line is visible to every local user.
    return asyncio.run(supervise(child, args.processes, env={ENV_URL: url}))


class _Signals:
    """What SIGINT and SIGTERM do while `serve()` runs."""

    def __init__(self, pool: WorkerPool, shutdown_timeout: float) -> None:
        self._pool = pool
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
        # The pool brings its deadline forward when a shorter timeout follows.
        task = asyncio.ensure_future(self._pool.shutdown(timeout))
        self._shutdowns.add(task)
        task.add_done_callback(self._shutdowns.discard)


async def serve(
    pool: WorkerPool,
    backend: Backend,
    *,
    queues: Sequence[str] | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    broker: str = "the broker",
    http: tuple[str, int, Any] | None = None,
    freeze_heap: bool = False,
) -> int:
    """Run `pool` on `backend` until SIGINT or SIGTERM, then close the backend.

    The first signal shuts the pool down gracefully: intake stops, in-flight messages get
    `shutdown_timeout` seconds, the rest are nacked back to their queue. A second signal
    brings that deadline to now. Handlers are installed for the duration of the call only.

    Args:
        pool: a pool that has not run yet.
        backend: the backend to consume from; connected here.
        queues: the queues to consume (default: the pool's, else the backend's).
        shutdown_timeout: seconds in-flight messages get after the first signal.
        broker: how logs and errors name the backend (a URL in it is redacted).
        http: (host, port, PrometheusReader or None) to serve /health, /ready and /metrics
            on while the pool runs (from before the first connect, so /health answers while
            the broker is awaited).
        freeze_heap: once the pool has started, freeze the objects alive then, so that
            garbage collections skip them (`foxwork.heap.freeze_startup_heap`); the
            command line does unless `--no-gc-freeze`.

    Returns:
        0 after a graceful shutdown, 128 + N when a second signal N forced it.

    Raises:
        CommandLineError: the first connect failed, or the pool could not start.
    """
    broker = redact(broker)
    loop = asyncio.get_running_loop()
    signals = _Signals(pool, shutdown_timeout)
    signals.install(loop)
    server = await _start_http(pool, backend, http) if http is not None else None
    orphan_watch = _watch_supervisor(signals)
    try:
        if not await _connect(backend, broker, stop=signals.requested):
            await pool.shutdown(0)
            logger.info("stopped before %s could be reached; nothing was consumed", broker)
            return signals.exit_code
        try:
            await pool.start(backend, queues=queues)
        except (BackendError, ConfigurationError) as exc:
            raise CommandLineError(f"cannot start pool {pool.name!r} on {broker}: {exc}") from exc
        if freeze_heap:
            logger.info(
                "start-up heap frozen: garbage collections skip its %d objects",
                freeze_startup_heap(),
            )
        logger.info(
            "pool %r running on %s, consuming %s (concurrency %d, prefetch %d); stop it "
            "with Ctrl-C or SIGTERM",
            pool.name,
            broker,
            ", ".join(queues or pool.queues or backend.queues),
            pool.concurrency_limit,
            pool.prefetch,
        )
        await signals.requested.wait()
        report = await pool.shutdown(shutdown_timeout)
    finally:
        signals.uninstall(loop)
        if orphan_watch is not None:
            orphan_watch.cancel()
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


async def _start_http(pool: WorkerPool, backend: Backend, http: tuple[str, int, Any]) -> Any:
    from . import telemetry
    from .http import HealthServer
    from .middleware.circuit_breaker import CircuitBreakerMiddleware

    host, port, reader = http
    if reader is not None:
        telemetry.observe_connection(lambda: backend.is_connected, name=type(backend).__name__)
        for index, layer in enumerate(pool.middleware):
            if isinstance(layer, CircuitBreakerMiddleware):
                telemetry.observe_circuit(layer, f"{pool.name}-{index}")
    server = HealthServer(pool, host=host, port=port, metrics=reader)
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


# -- foxwork demo ------------------------------------------------------------------------


def _demo_command(args: argparse.Namespace) -> int:
    from . import _demo

    try:
        result = asyncio.run(
            _demo.run_demo(
                messages=args.messages, workers=args.workers, seed=args.seed, out=sys.stdout
            )
        )
    except ConfigurationError as exc:
        raise CommandLineError(str(exc)) from None
    print(_demo.format_summary(result), flush=True)
    return EXIT_OK
