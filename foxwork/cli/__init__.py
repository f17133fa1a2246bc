"""The `foxwork` command: `foxwork run` serves a pool, `foxwork demo` shows one at work,
`foxwork dlq` handles dead letters and `foxwork publish` feeds a queue.

The command line owns what a library must not: the signal handlers and the logging setup.
A `WorkerPool` stays embeddable; here SIGINT and SIGTERM turn into `pool.shutdown()`.

Exit codes:
    0: the pool stopped gracefully (or the demo finished).
    1: an unexpected error (with its traceback); for `foxwork publish`, some message was
       not confirmed (or a line was not JSON).
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
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._redact import redact
from ..errors import ConfigurationError
from ..logs import ENV_LOG_FORMAT, TEXT_FORMAT, command_line_logging
from .common import (
    ENV_URL,
    EXIT_OK,
    EXIT_USAGE,
    LOG_LEVELS,
    CommandLineError,
    Subparsers,
    add_log_level,
    positive_int,
)
from .run import (
    EVENT_LOOPS,
    load_pool,
    loop_factory,
    make_backend,
    run_on_loop,
)
from .serve import serve

__all__ = [
    "COMMANDS",
    "ENV_URL",
    "EVENT_LOOPS",
    "LOG_LEVELS",
    "CommandLineError",
    "build_parser",
    "load_pool",
    "loop_factory",
    "main",
    "make_backend",
    "run_on_loop",
    "serve",
]

logger = logging.getLogger("foxwork.cli")

#: Every text log line: time, level, logger, message (URLs in it redacted).
LOG_FORMAT = TEXT_FORMAT


# -- the parser --------------------------------------------------------------------------


def add_demo_command(subparsers: Subparsers) -> None:
    """`foxwork demo`: the example order pool on the in-memory backend."""
    from . import demo

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
        type=positive_int,
        default=demo.DEFAULT_MESSAGES,
        metavar="N",
        help=f"orders to process, at least {demo.MIN_MESSAGES} (default: {demo.DEFAULT_MESSAGES})",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=demo.DEFAULT_WORKERS,
        metavar="K",
        help=f"workers in the pool (default: {demo.DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="replay the run with this seed (default: a random one, shown in the summary)",
    )
    add_log_level(parser, "ERROR")
    parser.set_defaults(handler=_demo_command)


#: The subcommands, in the order `foxwork --help` lists them, each with the module of the
#: function that adds its parser (`add_<name>_command`), imported only when that parser is
#: built: `foxwork run` does not load what `foxwork publish` needs. Adding a subcommand is
#: adding one entry here. `COMMANDS` is the tuple of those functions.
_COMMANDS = {
    "run": ".run",
    "demo": "",
    "dlq": ".dlq",
    "publish": ".publish",
    "topology": ".topology",
    "spool": ".spool",
}


def _add_command(name: str) -> Callable[[Subparsers], None]:
    if not _COMMANDS[name]:
        return add_demo_command
    module = importlib.import_module(_COMMANDS[name], __name__)
    add: Callable[[Subparsers], None] = getattr(module, f"add_{name}_command")
    return add


if TYPE_CHECKING:
    COMMANDS: tuple[Callable[[Subparsers], None], ...]
else:

    def __getattr__(name: str) -> Any:
        if name == "COMMANDS":
            return tuple(_add_command(command) for command in _COMMANDS)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `foxwork` argument parser with every subcommand of `COMMANDS`, or with
    `command` alone."""
    parser = argparse.ArgumentParser(
        prog="foxwork",
        description="foxwork: asyncio workers for RabbitMQ queues.",
    )
    parser.add_argument("--version", action="version", version=f"foxwork {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS if command is None else (command,):
        _add_command(name)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `foxwork` command; returns the exit code."""
    # The first word that is not an option names the subcommand: only its parser is built
    # (every one for `foxwork --help`, or a word that names none).
    words = sys.argv[1:] if argv is None else argv
    command = next((word for word in words if not word.startswith("-")), None)
    args = build_parser(command if command in _COMMANDS else None).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        with _logging(args.log_level, getattr(args, "log_format", "text")):
            return handler(args)
    except CommandLineError as exc:
        message = " ".join(redact(str(exc)).split())
        print(f"foxwork {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


@contextlib.contextmanager
def _logging(level: str, log_format: str) -> Iterator[None]:
    # Log lines go to stderr, every URL in them redacted (tracebacks included), unless the
    # application's module configures logging itself. The format reaches the worker
    # processes of `--processes` through the environment.
    previous = os.environ.get(ENV_LOG_FORMAT)
    os.environ[ENV_LOG_FORMAT] = log_format
    try:
        with command_line_logging(level, log_format, sys.stderr):
            yield
    finally:
        if previous is None:
            del os.environ[ENV_LOG_FORMAT]
        else:
            os.environ[ENV_LOG_FORMAT] = previous


# -- foxwork demo ------------------------------------------------------------------------


def _demo_command(args: argparse.Namespace) -> int:
    from . import demo

    try:
        result = asyncio.run(
            demo.run_demo(
                messages=args.messages, workers=args.workers, seed=args.seed, out=sys.stdout
            )
        )
    except ConfigurationError as exc:
        raise CommandLineError(str(exc)) from None
    print(demo.format_summary(result), flush=True)
    return EXIT_OK
