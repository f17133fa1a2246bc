"""`foxwork publish`: JSON lines from stdin or a file, published with confirms.

Each non-blank line is one message, its JSON value the payload (published as by
`Publisher.publish`). A line that is not JSON is reported with its number and counted as a
failure, as is a message the broker did not confirm; the exit code is 0 only when every
message was confirmed. Lines are read a chunk at a time (in a thread, so confirms keep
flowing while a slow producer writes) and each chunk is published with its confirms
pipelined (`Publisher.publish_many`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .._redact import redact
from ..errors import BackendError, ConfigurationError
from ..publisher import DEFAULT_MAX_IN_FLIGHT, OutboundMessage, Publisher
from .common import ENV_URL, EXIT_OK, CommandLineError, Subparsers, add_log_level, positive_int

__all__ = ["add_publish_command"]

#: Exit code when some message was not confirmed (or a line was not JSON).
EXIT_FAILED = 1
#: Seconds between two progress updates on a terminal, and between two plain lines.
_TERMINAL_EVERY = 0.2
_PLAIN_EVERY = 5.0


def add_publish_command(subparsers: Subparsers) -> None:
    """Add `foxwork publish`."""
    parser = subparsers.add_parser(
        "publish",
        help="publish JSON lines from stdin or a file, with confirms (RabbitMQ)",
        description=(
            "Publish one message per JSON line of stdin (or --file), to a queue or to an "
            "exchange, each confirmed by the broker. Blank lines are skipped; a line that is "
            "not JSON is reported and counted as a failure. Exit code 0 when every message "
            "was confirmed, 1 otherwise."
        ),
    )
    target = parser.add_argument_group("where to (--queue, or --routing-key)")
    target.add_argument("--queue", metavar="Q", help="publish to queue Q (default exchange)")
    target.add_argument("--exchange", metavar="X", default="", help="the exchange to publish to")
    target.add_argument("--routing-key", metavar="K", help="the routing key (with --exchange)")
    parser.add_argument("--file", metavar="PATH", help="read JSON lines from PATH, not stdin")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="an AMQP header on every message (repeatable)",
    )
    parser.add_argument("--url", help=f"AMQP URL of the broker (default: ${ENV_URL})")
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help=f"publishes awaiting their confirm at once (default: {DEFAULT_MAX_IN_FLIGHT})",
    )
    add_log_level(parser, "WARNING")
    parser.set_defaults(handler=_publish_command)


def _route(args: argparse.Namespace) -> tuple[str, str]:
    """(exchange, routing key) from the arguments."""
    if args.queue is not None:
        if args.exchange or args.routing_key is not None:
            raise CommandLineError(
                "--queue publishes to the default exchange: give either --queue Q, or "
                "--exchange X --routing-key K"
            )
        return "", args.queue
    if args.routing_key is None:
        raise CommandLineError("say where to publish: --queue Q, or --exchange X --routing-key K")
    return args.exchange, args.routing_key


def _headers(pairs: list[str]) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandLineError(f"--header {pair!r}: write it as NAME=VALUE")
        headers[key] = value
    return headers


def _publish_command(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise CommandLineError(
            f"no broker URL: pass --url amqp://... or set ${ENV_URL} (there is no in-memory "
            "broker to publish to: it would lose every message when this command exits)"
        )
    exchange, routing_key = _route(args)
    headers = _headers(args.header)
    progress = _Progress(sys.stderr)
    try:
        with _source(args.file) as source:
            failed = asyncio.run(
                _publish_lines(
                    url,
                    source,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=headers,
                    max_in_flight=args.max_in_flight,
                    progress=progress,
                )
            )
    except (BackendError, ConfigurationError) as exc:
        raise CommandLineError(redact(str(exc))) from None
    progress.finish()
    confirmed = progress.count - failed
    print(f"published {confirmed} of {progress.count} message(s); {failed} failed", flush=True)
    return EXIT_OK if failed == 0 else EXIT_FAILED


@contextlib.contextmanager
def _source(path: str | None) -> Iterator[TextIO]:
    """The file at `path`, or stdin (left open)."""
    if path is None:
        yield sys.stdin
        return
    try:
        file = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CommandLineError(f"--file {path}: {exc.strerror}") from None
    with file:
        yield file


def _numbered(source: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield number, line


async def _publish_lines(
    url: str,
    source: TextIO,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any],
    max_in_flight: int,
    progress: _Progress,
) -> int:
    """Publish every line of `source`; returns how many failed."""
    lines = _numbered(source)
    failed = 0
    async with await Publisher.connect(url) as publisher:
        while chunk := await asyncio.to_thread(
            lambda: list(itertools.islice(lines, max_in_flight))
        ):
            numbers: list[int] = []
            items: list[OutboundMessage] = []
            for number, line in chunk:
                try:
                    payload = json.loads(line)
                except ValueError as exc:
                    print(f"line {number}: not JSON: {exc}", file=sys.stderr)
                    failed += 1
                    progress.add(1, failed)
                    continue
                numbers.append(number)
                items.append(OutboundMessage(payload, routing_key, exchange, headers))
            outcomes = await publisher.publish_many(items, max_in_flight=max_in_flight)
            for number, outcome in zip(numbers, outcomes, strict=True):
                if outcome.error is not None:
                    failed += 1
                    print(f"line {number}: not published: {outcome.error}", file=sys.stderr)
            progress.add(len(items), failed)
    return failed


class _Progress:
    """Count, rate and failures: one line rewritten in place on a terminal, plain lines
    now and then otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0
        self.failed = 0
        self._terminal = out.isatty()
        self._started = self._shown = time.monotonic()

    def add(self, count: int, failed: int) -> None:
        self.count += count
        self.failed = failed
        now = time.monotonic()
        if now - self._shown >= (_TERMINAL_EVERY if self._terminal else _PLAIN_EVERY):
            self._shown = now
            self._show(now, end="\r" if self._terminal else "\n")

    def _show(self, now: float, *, end: str) -> None:
        rate = self.count / max(now - self._started, 1e-9)
        self.out.write(f"{self.count} published, {rate:.0f}/s, {self.failed} failed{end}")
        self.out.flush()

    def finish(self) -> None:
        if self._terminal and self.count:
            self._show(time.monotonic(), end="\n")
