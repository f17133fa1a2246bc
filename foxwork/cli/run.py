"""`foxwork run MODULE:ATTR`: load a pool, pick its backend and event loop, and serve it
(in this process, or in N supervised ones)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider

from .._redact import redact_url
from ..backends.base import Backend
from ..backends.memory import MemoryBackend
from ..backends.rabbitmq import RabbitMQBackend, RabbitMQConsumerConfig
from ..backends.resilient import ResilientBackend
from ..errors import ConfigurationError
from ..http import PrometheusReader
from ..pool import DEFAULT_SHUTDOWN_TIMEOUT, PoolState, WorkerPool
from . import supervisor
from .common import (
    ENV_URL,
    CommandLineError,
    Subparsers,
    add_log_level,
    non_negative_float,
    positive_int,
)
from .serve import serve

__all__ = [
    "EVENT_LOOPS",
    "URL_SCHEMES",
    "add_run_command",
    "load_pool",
    "loop_factory",
    "make_backend",
    "run_on_loop",
]

logger = logging.getLogger("foxwork.cli")

#: The event loops `foxwork run --loop` offers; asyncio's own is the default.
EVENT_LOOPS = ("asyncio", "uvloop")

T = TypeVar("T")


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
            "URL of the broker: amqp:// or amqps:// for RabbitMQ, redis:// or rediss:// for "
            f"Redis Streams (default: ${ENV_URL}; with neither, the pool runs on the in-memory "
            "backend)"
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
        type=positive_int,
        metavar="N",
        help="messages processed at once (default: the pool's concurrency limit)",
    )
    parser.add_argument(
        "--prefetch",
        type=positive_int,
        metavar="N",
        help="unsettled deliveries per queue (default: the concurrency)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=non_negative_float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="S",
        help=(
            "seconds in-flight messages get to finish after a signal before they are nacked "
            f"back to the queue (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--processes",
        type=positive_int,
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
    add_log_level(parser, "INFO")
    parser.set_defaults(handler=_run_command)


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


def make_backend(url: str, queues: Sequence[str], *, wait_for_broker: bool) -> Backend:
    """The backend `foxwork run --url` consumes from, picked by the URL's scheme (see
    `URL_SCHEMES`), and reconnected forever once connected.

    Args:
        url: `amqp://` or `amqps://` for RabbitMQ, `redis://` or `rediss://` for Redis
            Streams.
        queues: the queues to consume (the pool's `prefetch` sets the deliveries each
            one has checked out).
        wait_for_broker: the first connect keeps retrying instead of failing fast.

    Raises:
        ConfigurationError: the scheme is none of those, the settings are invalid, or the
            Redis client is not installed.
    """
    backend = _backend_of(url)(url, list(queues))
    return ResilientBackend(backend, fail_fast=not wait_for_broker)


def _backend_of(url: str) -> Callable[[str, list[str]], Backend]:
    scheme, separator, _ = url.partition("://")
    backend = URL_SCHEMES.get(scheme) if separator else None
    if backend is None:
        shown = f"URL scheme {scheme!r}" if separator else "a URL without a scheme"
        raise ConfigurationError(f"{shown} is not supported: use {_SUPPORTED}")
    return backend


def _rabbitmq(url: str, queues: list[str]) -> Backend:
    return RabbitMQBackend(RabbitMQConsumerConfig(url=url, queue=queues))


def _redis_streams(url: str, queues: list[str]) -> Backend:
    try:
        # Imported on use: redis-py is an optional extra.
        from ..backends.redis import RedisStreamsBackend, RedisStreamsConfig
    except ImportError as exc:
        raise ConfigurationError(
            f"redis:// needs redis-py, which is not installed ({exc}): pip install 'foxwork[redis]'"
        ) from None
    return RedisStreamsBackend(RedisStreamsConfig(url=url, queue=queues))


#: The URL schemes `foxwork run --url` understands, and the backend each one picks.
URL_SCHEMES: dict[str, Callable[[str, list[str]], Backend]] = {
    "amqp": _rabbitmq,
    "amqps": _rabbitmq,
    "redis": _redis_streams,
    "rediss": _redis_streams,
}
_SUPPORTED = "amqp:// or amqps:// (RabbitMQ), redis:// or rediss:// (Redis Streams)"


def _install_metrics() -> Any:
    # Before the pool is imported, so every meter its middleware asks for reports here.
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
    pool = _with_limits(pool, concurrency=args.concurrency, prefetch=args.prefetch)
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
            backend = make_backend(url, queues, wait_for_broker=args.wait_for_broker)
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


def _with_limits(pool: WorkerPool, *, concurrency: int | None, prefetch: int | None) -> WorkerPool:
    # `--concurrency` and `--prefetch` give a new pool with the same workers and middleware,
    # validated by the constructor; the loaded pool itself is never changed. `--concurrency`
    # alone sets the prefetch too, as it does for a pool built with only a concurrency limit.
    if concurrency is None and prefetch is None:
        return pool
    return WorkerPool(
        workers=pool.workers,
        middleware=pool.middleware,
        strategy=pool.strategy,
        concurrency_limit=concurrency or pool.concurrency_limit,
        queues=pool.queues,
        prefetch=prefetch or concurrency or pool.prefetch,
        name=pool.name,
        on_unsettled_failure=pool.on_unsettled_failure,
    )


def _supervise(args: argparse.Namespace) -> int:
    load_pool(args.target)  # fail here, once, rather than in N children
    url: str | None = args.url or os.environ.get(ENV_URL) or None
    if url is None:
        raise CommandLineError(
            "--processes needs a broker (--url or $FOXWORK_URL): in-memory queues cannot be "
            "shared between processes"
        )
    try:
        _backend_of(url)  # an unknown scheme fails here, once, rather than in N children
    except ConfigurationError as exc:
        raise CommandLineError(f"invalid broker settings for {redact_url(url)}: {exc}") from None
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
    return asyncio.run(supervisor.supervise(child, args.processes, env={ENV_URL: url}))
