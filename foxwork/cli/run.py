"""`foxwork run MODULE:ATTR`: load a pool or an App, settle its settings (flags over
`$FOXWORK_*` over code), pick its backend and event loop, and serve it (in this process, or
in N supervised ones)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import metrics

from ..app import URL_SCHEMES, App, describe_broker
from ..app import make_backend as app_backend
from ..backends.base import Backend
from ..backends.rabbitmq.config import QueueType, TopologyMode
from ..errors import ConfigurationError
from ..http import MetricsSource, PoolCounters
from ..pool import PoolState, WorkerPool
from ..settings import Settings, env_var, resolve_settings
from . import supervisor
from .common import (
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
    "load_target",
    "loop_factory",
    "make_backend",
    "run_on_loop",
]

logger = logging.getLogger("foxwork.cli")

#: The event loops `foxwork run --loop` offers; asyncio's own is the default.
EVENT_LOOPS = ("asyncio", "uvloop")

T = TypeVar("T")


class _DefaultLevel(int):
    """The `--log-level` default: told apart from a level given on the command line (a
    name), so that `$FOXWORK_LOG_LEVEL` (or the App's) applies when the flag is absent. An
    int, because argparse passes a default that is a string through the flag's type."""


def add_run_command(subparsers: Subparsers) -> None:
    """`foxwork run MODULE:ATTR`: serve a pool or an App until SIGINT or SIGTERM."""
    parser = subparsers.add_parser(
        "run",
        help="consume with a WorkerPool or an App until SIGINT or SIGTERM",
        description=(
            "Import a WorkerPool or an App (or a function returning one) and run it. The "
            "first SIGINT or SIGTERM shuts it down gracefully; a second one forces the exit. "
            "Every setting can also come from a FOXWORK_* environment variable or from the "
            "code (App(settings=...)); a flag wins over the environment, which wins over "
            "the code."
        ),
    )
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="where the pool or App is, e.g. myapp.workers:pool or myapp.workers:make_app",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings (passwords hidden) and where each came from, "
        "then exit without connecting",
    )
    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help=(
            "URL of the broker: amqp:// or amqps:// for RabbitMQ, redis:// or rediss:// for "
            "Redis Streams; repeat it for the nodes of a RabbitMQ cluster "
            f"(${env_var('url')}: URLs separated by spaces or commas)"
        ),
    )
    broker.add_argument(
        "--redis-cluster",
        action="store_const",
        const=True,
        help="the redis:// URLs are startup nodes of a Redis Cluster (repeat --url to give "
        "several; any one that answers is enough)",
    )
    broker.add_argument(
        "--memory",
        action="store_const",
        const=True,
        help="run on the in-memory backend instead of a broker (messages live only in this "
        "process); without a URL and without --memory, foxwork run refuses to start",
    )
    broker.add_argument(
        "--queue-type",
        choices=[t.value for t in QueueType],
        help="type of the queues foxwork declares (default: classic)",
    )
    broker.add_argument(
        "--topology",
        choices=[m.value for m in TopologyMode],
        help=(
            "declare the queues (the default), or attach to queues that must exist as they "
            "are (passive; see foxwork topology plan)"
        ),
    )
    broker.add_argument("--exchange", metavar="NAME", help="exchange to bind the queues to")
    broker.add_argument(
        "--exchange-type",
        choices=["direct", "topic", "fanout", "headers"],
        help="type of --exchange (default: topic)",
    )
    broker.add_argument(
        "--binding-key",
        dest="binding_keys",
        action="append",
        metavar="KEY",
        help="routing key binding the queues to --exchange (repeatable; default: the queue name)",
    )
    broker.add_argument(
        "--heartbeat", type=int, metavar="S", help="AMQP heartbeat in seconds (default: 10)"
    )
    broker.add_argument(
        "--connection-name", metavar="NAME", help="connection name the broker shows"
    )
    broker.add_argument(
        "--connect-timeout",
        type=non_negative_float,
        metavar="S",
        help="seconds one connect attempt may take (default: 10)",
    )
    broker.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificates (PEM)")
    broker.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM)")
    broker.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the client certificate's key (PEM)"
    )
    broker.add_argument(
        "--wait-for-broker",
        action="store_true",
        help="keep retrying the first connection instead of exiting with code 2",
    )
    parser.add_argument(
        "--queue",
        action="append",
        metavar="Q",
        help="a queue to consume (repeatable; default: the pool's queues; not for an App)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help="messages each pool processes at once (default: the pool's concurrency limit)",
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
        metavar="S",
        help=(
            "seconds in-flight messages get to finish after a signal before they are nacked "
            "back to the queue (default: 30)"
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
        metavar="HOST",
        help="interface for --http-port (default: 127.0.0.1; 0.0.0.0 for every interface)",
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
    parser.set_defaults(handler=_run_command, log_level=_DefaultLevel(logging.INFO))


def _flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    # Every setting has a flag whose destination is its name.
    flags = {name: getattr(args, name) for name in Settings.model_fields}
    if isinstance(flags["log_level"], _DefaultLevel):
        flags["log_level"] = None
    return {name: value for name, value in flags.items() if value is not None}


def load_target(target: str) -> WorkerPool | App:
    """Import `MODULE:ATTR` and return the pool or App it names (or that calling it
    returns).

    The current directory is importable, as with `python -m`.

    Raises:
        CommandLineError: the target is malformed, missing, or neither a pool nor an App.
    """
    module_name, colon, attr_path = target.partition(":")
    if not colon or not module_name or not attr_path:
        raise CommandLineError(
            f"{target!r} is not MODULE:ATTR: name the module and the pool in it, "
            "e.g. myapp.workers:pool"
        )
    if module_name.endswith(".py"):
        raise CommandLineError(
            f"{target!r} names a file: give the module, without .py "
            f"({module_name.removesuffix('.py').replace('/', '.')}:{attr_path})"
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
                f"name a WorkerPool or an App defined in {module.__file__}"
            ) from None
    if isinstance(found, WorkerPool | App):
        return found
    if inspect.isclass(found):
        raise CommandLineError(
            f"{target} is a class ({found.__name__}), not a pool or a factory: name a "
            "WorkerPool or an App built from it, or a function without arguments that "
            "returns one"
        )
    if not callable(found):
        raise CommandLineError(
            f"{target} is a {type(found).__name__}: expected a WorkerPool or an App, or a "
            "function without arguments that returns one"
        )
    made = found()
    if inspect.iscoroutine(made):
        made.close()
        raise CommandLineError(
            f"{target} is an async function: make it a plain function that returns the "
            "WorkerPool or App (it connects when it runs)"
        )
    if not isinstance(made, WorkerPool | App):
        raise CommandLineError(
            f"{target}() returned a {type(made).__name__}, not a WorkerPool or an App"
        )
    return made


def load_pool(target: str) -> WorkerPool:
    """`load_target` for a pool only.

    Raises:
        CommandLineError: as `load_target`, or the target is an App.
    """
    found = load_target(target)
    if isinstance(found, App):
        raise CommandLineError(f"{target} is an App, not a WorkerPool")
    return found


def make_backend(url: str, queues: Sequence[str], *, wait_for_broker: bool) -> Backend:
    """The backend `foxwork run --url URL` consumes `queues` from (see
    `foxwork.app.make_backend`; the other settings from `$FOXWORK_*`).

    Raises:
        ConfigurationError: the scheme is not one of `URL_SCHEMES`, the settings are
            invalid, or the Redis client is not installed.
    """
    settings = resolve_settings(flags={"url": [url]})
    return app_backend(settings, queues, wait_for_broker=wait_for_broker)


def _metrics_reader() -> MetricsSource | None:
    # A PrometheusReader on the global meter provider; None without the OpenTelemetry SDK.
    try:
        from opentelemetry.sdk.metrics import MeterProvider

        from ..telemetry.prometheus import PrometheusReader
    except ImportError:
        logger.warning(
            "/metrics shows only each pool's message counters: the OpenTelemetry SDK is not "
            "installed (pip install 'foxwork[otel]' for every foxwork metric)"
        )
        return None
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
    loop_factory(args.loop)  # an unavailable loop fails here, before anything is imported
    flags = _flag_settings(args)
    # What the environment and the flags say, before the code is imported: the meter
    # provider must be in place before the pools ask it for meters.
    early = _resolve(None, flags)
    if args.processes > 1 and not args.print_config:
        return _supervise(args, flags)
    reader = _metrics_reader() if early.http_port is not None and not args.print_config else None
    target = load_target(args.target)
    app = _as_app(target, args)
    settings = _resolve(app.settings, flags)
    if args.print_config:
        print(json.dumps(_config_report(app, settings, flags), indent=2))
        return 0
    if isinstance(args.log_level, _DefaultLevel):
        logging.getLogger().setLevel(settings.log_level)
    if args.loop != "asyncio":
        logger.info("event loop: %s", args.loop)
    if settings.http_port is not None and early.http_port is None:
        reader = _metrics_reader()  # the port came from the code
    http: tuple[str, int, Any] | None = None
    if settings.http_port is not None:
        index = int(os.environ.get("FOXWORK_PROCESS_INDEX", "0"))
        port = settings.http_port + index if settings.http_port else 0
        http = (settings.http_host, port, reader or PoolCounters(app))
    app.apply_limits(concurrency=settings.concurrency, prefetch=settings.prefetch)
    backend = _backend(app, settings, wait_for_broker=args.wait_for_broker)
    if settings.memory:
        logger.warning(
            "running on the in-memory backend (memory=true): messages live only in this process"
        )
    # A pool is served as itself (its /health shows the pool), an App as the App.
    served: WorkerPool | App = app if isinstance(target, App) else app.pools[0]
    return run_on_loop(
        serve(
            served,
            backend,
            queues=app.queues,
            shutdown_timeout=settings.shutdown_timeout,
            broker=describe_broker(settings),
            http=http,
            freeze_heap=args.gc_freeze,
        ),
        args.loop,
    )


def _resolve(code: Settings | None, flags: Mapping[str, Any]) -> Settings:
    try:
        return resolve_settings(code, flags=flags)
    except ConfigurationError as exc:
        raise CommandLineError(str(exc)) from None


def _as_app(target: WorkerPool | App, args: argparse.Namespace) -> App:
    # The App `foxwork run` serves: the loaded one, or one around the loaded pool.
    if target.state is not PoolState.CREATED:
        kind = "an App" if isinstance(target, App) else "a pool"
        raise CommandLineError(f"{args.target} is {target.state.value}: {kind} runs only once")
    if isinstance(target, App):
        if args.queue:
            raise CommandLineError(
                f"--queue is for a single pool: {args.target} is an App, whose pools name "
                "their own queues (app.add(pool, queues=[...]))"
            )
        if not target.bindings:
            raise CommandLineError(f"{args.target} has no pool: call app.add(pool) in it")
        return target
    queues = tuple(args.queue or target.queues)
    if not queues:
        raise CommandLineError(
            f"no queue to consume: pass --queue NAME, or queues=[...] to the pool in {args.target}"
        )
    return App.of(target, queues=queues)


def _backend(app: App, settings: Settings, *, wait_for_broker: bool) -> Backend:
    if not settings.urls and not settings.memory:
        raise CommandLineError(
            f"no broker URL: pass --url amqp://... or set ${env_var('url')}, or pass --memory "
            "to run on the in-memory backend"
        )
    try:
        return app.make_backend(settings, wait_for_broker=wait_for_broker)
    except ConfigurationError as exc:
        raise CommandLineError(
            f"invalid broker settings for {describe_broker(settings)}: {exc}"
        ) from None


def _config_report(app: App, settings: Settings, flags: Mapping[str, Any]) -> dict[str, Any]:
    # `--print-config`: the effective settings, passwords hidden, each with where it came
    # from, and the pools with their queues and queue settings.
    from_env = {name for name in Settings.model_fields if env_var(name) in os.environ}
    code = app.settings.model_fields_set - from_env

    def source(name: str) -> str:
        if name in flags:
            return "flag"
        if name in from_env:
            return "environment"
        return "code" if name in code else "default"

    return {
        "settings": settings.redacted(),
        "sources": {name: source(name) for name in Settings.model_fields},
        "pools": [
            {
                "name": b.pool.name,
                "queues": list(b.queues),
                "concurrency": settings.concurrency or b.pool.concurrency_limit,
                "prefetch": settings.prefetch or settings.concurrency or b.pool.prefetch,
                "queue_settings": b.queue_settings.model_dump(mode="json", exclude_none=True),
            }
            for b in app.bindings
        ],
    }


def _supervise(args: argparse.Namespace, flags: Mapping[str, Any]) -> int:
    # Fail here, once, rather than in N children.
    app = _as_app(load_target(args.target), args)
    settings = _resolve(app.settings, flags)
    if settings.memory:
        raise CommandLineError(
            "--processes needs a broker: in-memory queues cannot be shared between processes"
        )
    _backend(app, settings, wait_for_broker=args.wait_for_broker)
    child = [
        "run",
        args.target,
        "--log-level",
        settings.log_level,
        "--log-format",
        args.log_format,
        "--loop",
        args.loop,
    ]
    for queue in args.queue or ():
        child += ["--queue", queue]
    if args.wait_for_broker:
        child.append("--wait-for-broker")
    if not args.gc_freeze:
        child.append("--no-gc-freeze")
    # The settings of the flags travel in the environment, where each child reads them: a
    # command line (and the URL in it) is visible to every local user.
    env = {env_var(name): _env_text(value) for name, value in flags.items()}
    return asyncio.run(supervisor.supervise(child, args.processes, env=env))


def _env_text(value: Any) -> str:
    # A flag's value as its FOXWORK_* variable holds it.
    if isinstance(value, list):
        return " ".join(_env_text(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
