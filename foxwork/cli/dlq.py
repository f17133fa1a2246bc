"""`foxwork dlq list | show | replay | purge QUEUE`: the dead-letter queue from a shell.

A thin layer over `foxwork.backends.rabbitmq.dlq.DeadLetterQueue`; see there for the
guarantees (browsing does not consume, replay removes a dead letter only after its copy is
confirmed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from .._redact import redact
from ..backends.rabbitmq.dlq import DeadLetterInfo, DeadLetterQueue
from ..errors import BackendError, ConfigurationError
from .common import ENV_URL, CommandLineError

__all__ = ["add_dlq_command"]

_REASON_WIDTH = 60


def add_dlq_command(subparsers: Any) -> None:
    """Add `foxwork dlq` and its four actions."""
    parser = subparsers.add_parser(
        "dlq",
        help="list, show, replay or purge a queue's dead letters (RabbitMQ)",
        description="Inspect and replay the dead-letter queue (Q-dlq) of a queue Q.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("queue", metavar="QUEUE", help="the main queue (its DLQ is QUEUE-dlq)")
        sub.add_argument("--url", help=f"AMQP URL of the broker (default: ${ENV_URL})")
        sub.add_argument("--dlq", metavar="NAME", help="the DLQ's name when it is not QUEUE-dlq")
        sub.add_argument("--log-level", default="WARNING", type=str.upper, help=argparse.SUPPRESS)

    listing = actions.add_parser("list", help="one line per dead letter (does not consume)")
    common(listing)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.add_argument("--limit", type=int, metavar="N", help="show at most N")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="one dead letter in full: headers, properties, body")
    common(show)
    show.add_argument("id", metavar="MESSAGE_ID")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(handler=_show)

    replay = actions.add_parser(
        "replay",
        help="republish dead letters to their queue (confirmed), then remove them",
        description=(
            "Publish chosen dead letters back to the queue they failed in, with "
            "x-retry-attempt reset. Each is removed from the DLQ only after the broker "
            "confirmed its copy. With no selection, every dead letter is replayed."
        ),
    )
    common(replay)
    replay.add_argument("--id", action="append", dest="ids", metavar="ID", help="repeatable")
    replay.add_argument("--reason-match", metavar="REGEX", help="only reasons matching REGEX")
    replay.add_argument("--limit", type=int, metavar="N", help="at most N messages")
    replay.add_argument("--rate", type=float, metavar="PER_S", help="at most PER_S per second")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.set_defaults(handler=_replay)

    purge = actions.add_parser("purge", help="delete every dead letter (needs --yes)")
    common(purge)
    purge.add_argument("--yes", action="store_true", help="yes, delete them")
    purge.set_defaults(handler=_purge)


def _run(args: argparse.Namespace, action: Callable[[DeadLetterQueue], Awaitable[int]]) -> int:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise CommandLineError(f"no broker URL: pass --url amqp://... or set ${ENV_URL}")

    async def main() -> int:
        try:
            dlq = DeadLetterQueue(url, args.queue, dead_letter_queue=args.dlq)
            async with dlq:
                return await action(dlq)
        except (BackendError, ConfigurationError) as exc:
            raise CommandLineError(redact(str(exc))) from None

    return asyncio.run(main())


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(letters: list[DeadLetterInfo], out: TextIO) -> None:
    rows = [
        (
            letter.id or "-",
            str(letter.final_attempt or "-"),
            letter.failed_at or "-",
            letter.exception_type or "-",
            _cut(letter.reason, _REASON_WIDTH),
        )
        for letter in letters
    ]
    header = ("ID", "ATTEMPT", "FAILED AT", "EXCEPTION", "REASON")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def _list(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetterQueue) -> int:
        letters = await dlq.list(limit=args.limit)
        if args.json:
            for letter in letters:
                print(json.dumps(letter.summary()))
        else:
            print_table(letters, sys.stdout)
            print(f"{len(letters)} dead letter(s) in {dlq.name}", file=sys.stderr)
        return 0

    return _run(args, action)


def _show(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetterQueue) -> int:
        letter = await dlq.show(args.id)
        if letter is None:
            raise CommandLineError(f"no dead letter with id {args.id!r} in {dlq.name}")
        body: Any
        try:
            body = letter.body.decode()
        except UnicodeDecodeError:
            body = repr(letter.body)
        document = {
            **letter.summary(),
            "exchange": letter.exchange,
            "properties": letter.properties,
            "headers": {k: _jsonable(v) for k, v in letter.headers.items()},
            "body": body,
        }
        if args.json:
            print(json.dumps(document, default=str))
        else:
            for key, value in document.items():
                print(
                    f"{key}: {json.dumps(value, default=str) if isinstance(value, dict) else value}"
                )
        return 0

    return _run(args, action)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _progress(done: int, total: int) -> None:
    """A progress bar of the dead letters read, redrawn in place (the line is ended once
    the replay returns: with a limit it may end before the bar is full)."""
    width = 30
    filled = width * done // max(total, 1)
    print(
        f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _replay(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetterQueue) -> int:
        show_progress = not args.dry_run and sys.stderr.isatty()
        try:
            result = await dlq.replay(
                ids=args.ids,
                reason_match=args.reason_match,
                limit=args.limit,
                rate=args.rate,
                dry_run=args.dry_run,
                on_progress=_progress if show_progress else None,
            )
        finally:
            if show_progress:
                print(file=sys.stderr)
        verb = "would replay" if result.dry_run else "replayed"
        for message_id in result.replayed:
            print(f"{verb} {message_id or '-'}")
        for message_id in result.failed:
            print(f"NOT replayed (copy not confirmed; still in the DLQ) {message_id or '-'}")
        print(
            f"{verb} {len(result.replayed)}, failed {len(result.failed)}, "
            f"left alone {result.skipped}",
            file=sys.stderr,
        )
        if result.stopped:
            print(
                f"replay stopped early: {redact(result.stopped)}; every dead letter not "
                "replayed is still in the DLQ",
                file=sys.stderr,
            )
        return 1 if result.failed or result.stopped else 0

    return _run(args, action)


def _purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CommandLineError(
            f"purge deletes every dead letter of {args.queue!r}: add --yes to confirm"
        )

    async def action(dlq: DeadLetterQueue) -> int:
        count = await dlq.purge()
        print(f"purged {count} dead letter(s) from {dlq.name}")
        return 0

    return _run(args, action)
