"""`foxwork dlq list | show | replay | purge QUEUE`: the dead-letter queue from a shell.

A thin layer over a broker's `DeadLetterQueue`, picked by the URL's scheme:
`foxwork.backends.rabbitmq.dlq` for amqp:// and amqps://, `foxwork.backends.redis.dlq` for
redis:// and rediss://; see there for the guarantees (browsing does not consume; replay
removes a dead letter only once its copy is in the queue: after a confirm on RabbitMQ, in
the same atomic step on Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from types import TracebackType
from typing import Any, Protocol, TextIO

from pydantic import TypeAdapter, ValidationError

from .._redact import redact
from ..deadletter import DeadLetterInfo, ReplayResult
from ..errors import BackendError, ConfigurationError
from ..settings import env_var
from .common import ENV_URL, CommandLineError

__all__ = ["add_dlq_command"]

_REASON_WIDTH = 60
#: The URL schemes `foxwork dlq --url` understands.
_SUPPORTED = "amqp:// or amqps:// (RabbitMQ), redis:// or rediss:// (Redis Streams)"
#: Failed ids the replay summary names at most.
_NAMED_FAILURES = 10
#: Seconds between two redraws of the progress line.
_PROGRESS_INTERVAL = 0.1
#: The variable of `--redis-cluster` (that of `foxwork run`'s setting).
_ENV_REDIS_CLUSTER = env_var("redis_cluster")


class DeadLetters(Protocol):
    """What the command needs of a broker's `DeadLetterQueue`."""

    name: str

    async def __aenter__(self) -> DeadLetters: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def count(self) -> int: ...

    async def list(self, *, limit: int | None = None) -> list[DeadLetterInfo]: ...

    async def show(self, message_id: str) -> DeadLetterInfo | None: ...

    async def replay(
        self,
        *,
        ids: Collection[str] | None = None,
        reason_match: str | None = None,
        limit: int | None = None,
        rate: float | None = None,
        dry_run: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult: ...

    async def purge(self) -> int: ...


def add_dlq_command(subparsers: Any) -> None:
    """Add `foxwork dlq` and its four actions."""
    parser = subparsers.add_parser(
        "dlq",
        help="list, show, replay or purge a queue's dead letters (RabbitMQ or Redis Streams)",
        description=(
            "Inspect and replay the dead letters of a queue Q: the queue Q-dlq on RabbitMQ, "
            "the stream foxwork:{Q}:dlq on Redis Streams. The broker is chosen by the "
            f"URL's scheme: {_SUPPORTED}."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "queue",
            metavar="QUEUE",
            help="the main queue (its dead letters: QUEUE-dlq, or foxwork:{QUEUE}:dlq on Redis)",
        )
        sub.add_argument(
            "--url",
            help=f"broker URL, amqp[s]://... or redis[s]://... (default: ${ENV_URL})",
        )
        sub.add_argument(
            "--dlq", metavar="NAME", help="RabbitMQ: the DLQ's name when it is not QUEUE-dlq"
        )
        sub.add_argument(
            "--key-prefix",
            metavar="PREFIX",
            help="Redis: the prefix of the queue's keys when it is not 'foxwork'",
        )
        sub.add_argument(
            "--redis-cluster",
            action="store_const",
            const=True,
            help=(
                "Redis: the URL is a node of a Redis Cluster (default: "
                f"${_ENV_REDIS_CLUSTER}, as for foxwork run)"
            ),
        )
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
        help="put dead letters back in their queue, then remove them",
        description=(
            "Put chosen dead letters back in the queue they failed in, as first attempts "
            "(without x-retry-attempt and the headers of their failure). On RabbitMQ each "
            "is removed from the DLQ only after the broker confirmed its copy; on Redis the "
            "copy is added and the dead letter removed in one atomic step. Choose with --id, "
            "--reason-match or --limit; replaying every dead letter needs --all."
        ),
    )
    common(replay)
    replay.add_argument("--id", action="append", dest="ids", metavar="ID", help="repeatable")
    replay.add_argument("--reason-match", metavar="REGEX", help="only reasons matching REGEX")
    replay.add_argument("--limit", type=int, metavar="N", help="at most N messages")
    replay.add_argument("--rate", type=float, metavar="PER_S", help="at most PER_S per second")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed, and why each failed"
    )
    replay.add_argument(
        "--all",
        "--yes",
        dest="all",
        action="store_true",
        help="yes, replay every dead letter (needed without --id, --reason-match, --limit)",
    )
    replay.set_defaults(handler=_replay)

    purge = actions.add_parser("purge", help="delete every dead letter (needs --yes)")
    common(purge)
    purge.add_argument("--yes", action="store_true", help="yes, delete them")
    purge.set_defaults(handler=_purge)


def _open(url: str, args: argparse.Namespace) -> DeadLetters:
    """The dead letters of `args.queue` on the broker `url` names by its scheme."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    cluster = _redis_cluster(args)
    if scheme in ("amqp", "amqps"):
        if args.key_prefix is not None:
            raise CommandLineError("--key-prefix is for Redis URLs; on RabbitMQ use --dlq NAME")
        if cluster is not None:
            raise CommandLineError(
                f"--redis-cluster (or ${_ENV_REDIS_CLUSTER}) is for Redis URLs: unset it for "
                "RabbitMQ"
            )
        from ..backends.rabbitmq.dlq import DeadLetterQueue as RabbitMQDeadLetters

        return RabbitMQDeadLetters(url, args.queue, dead_letter_queue=args.dlq)
    if scheme in ("redis", "rediss"):
        if args.dlq is not None:
            raise CommandLineError(
                "--dlq is for RabbitMQ; on Redis the dead letters of QUEUE are the stream "
                "PREFIX:{QUEUE}:dlq (give the prefix with --key-prefix)"
            )
        try:
            # Imported on use: redis-py is an optional extra.
            from ..backends.redis.dlq import DeadLetterQueue as RedisDeadLetters
        except ImportError as exc:
            raise CommandLineError(
                f"redis:// needs redis-py, which is not installed ({exc}): "
                "pip install 'foxwork[redis]'"
            ) from None
        options = {} if args.key_prefix is None else {"key_prefix": args.key_prefix}
        return RedisDeadLetters(url, args.queue, cluster=bool(cluster), **options)
    named = f"URL scheme {scheme!r}" if scheme else "a URL without a scheme"
    raise CommandLineError(f"{named} is not supported: use {_SUPPORTED}")


def _redis_cluster(args: argparse.Namespace) -> bool | None:
    """`--redis-cluster`, else `$FOXWORK_REDIS_CLUSTER` read as `foxwork run` reads it;
    None when neither is given."""
    if args.redis_cluster is not None:
        return bool(args.redis_cluster)
    text = os.environ.get(_ENV_REDIS_CLUSTER)
    if text is None:
        return None
    try:
        return TypeAdapter(bool).validate_python(text)
    except ValidationError:
        raise CommandLineError(
            f"${_ENV_REDIS_CLUSTER}={text!r} is not a boolean: use true or false"
        ) from None


def _run(args: argparse.Namespace, action: Callable[[DeadLetters], Awaitable[int]]) -> int:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise CommandLineError(
            f"no broker URL: pass --url amqp://... or --url redis://..., or set ${ENV_URL}"
        )

    async def main() -> int:
        try:
            dlq = _open(url, args)
            async with dlq:
                return await action(dlq)
        except (BackendError, ConfigurationError) as exc:
            raise CommandLineError(redact(str(exc))) from None

    return asyncio.run(main())


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


#: The table's columns and their widths: fixed, so each row is printed as it is read; a
#: longer cell is cut, with "…" at the end.
_COLUMNS = (("ID", 36), ("ATTEMPT", 7), ("FAILED AT", 32), ("EXCEPTION", 48), ("REASON", 60))


def _row(cells: Sequence[str]) -> str:
    return "  ".join(
        _cut(cell, width).ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
    ).rstrip()


def _table_row(letter: DeadLetterInfo) -> str:
    return _row(
        (
            letter.id or str(letter.properties.get("entry_id") or "-"),
            str(letter.final_attempt or "-"),
            letter.failed_at or "-",
            letter.exception_type or "-",
            letter.reason,
        )
    )


def _letters(dlq: DeadLetters, limit: int | None) -> AsyncIterator[DeadLetterInfo]:
    """The dead letters as they are read, when the broker's tool streams them (RabbitMQ);
    else its list."""
    stream = getattr(dlq, "iter_letters", None)
    if stream is not None:
        letters: AsyncIterator[DeadLetterInfo] = stream(limit=limit)
        return letters

    async def listed() -> AsyncIterator[DeadLetterInfo]:
        for letter in await dlq.list(limit=limit):
            yield letter

    return listed()


def _list(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetters) -> int:
        shown = 0
        if not args.json:
            print(_row([name for name, _ in _COLUMNS]))
        async for letter in _letters(dlq, args.limit):
            shown += 1
            print(json.dumps(letter.summary()) if args.json else _table_row(letter))
        # The true total, also when a limit cut the list short (at least those read: a
        # pool may add dead letters meanwhile).
        total = max(await dlq.count(), shown)
        showing = "" if shown == total else f"showing {shown} of "
        print(f"{showing}{total} dead letter(s) in {dlq.name}", file=sys.stderr)
        return 0

    return _run(args, action)


def _show(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetters) -> int:
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


class _Progress:
    """One line on a terminal, redrawn in place (at most every `_PROGRESS_INTERVAL` s):
    the dead letters read of those there at the start. The summary overwrites it."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._drawn < _PROGRESS_INTERVAL and done < total:
            return
        self._drawn = now
        width = 30
        filled = width * done // max(total, 1)
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        print(f"\rreplaying {bar} {done}/{total}", end="", file=self._out, flush=True)

    def clear(self) -> None:
        if self._drawn:
            print("\r\033[K", end="", file=self._out, flush=True)


def _replay(args: argparse.Namespace) -> int:
    if not (args.ids or args.reason_match or args.limit or args.all or args.dry_run):
        raise CommandLineError(
            f"replay without --id, --reason-match or --limit puts every dead letter of "
            f"{args.queue!r} back in its queue: add --all to confirm (or --dry-run to see them)"
        )

    async def action(dlq: DeadLetters) -> int:
        progress = _Progress(sys.stdout) if not args.dry_run and sys.stdout.isatty() else None
        try:
            result = await dlq.replay(
                ids=args.ids,
                reason_match=args.reason_match,
                limit=args.limit,
                rate=args.rate,
                dry_run=args.dry_run,
                on_progress=progress,
            )
        finally:
            if progress is not None:
                progress.clear()
        if result.dry_run:
            for message_id in result.replayed:
                reason = _cut(result.reasons.get(message_id, ""), _REASON_WIDTH * 2)
                print(f"would replay {message_id or '-'}: {reason}")
            unnamed = result.replayed_count - len(result.replayed)
            if unnamed > 0:
                print(f"would replay {unnamed} more (not named)")
        print(summary(result))
        if result.stopped:
            print(
                f"replay stopped early: {redact(result.stopped)}; every dead letter not "
                "replayed is still in the DLQ",
                file=sys.stderr,
            )
        return 1 if result.failed_count or result.stopped else 0

    return _run(args, action)


def summary(result: ReplayResult) -> str:
    """The one line `foxwork dlq replay` ends with."""
    verb = "would replay" if result.dry_run else "replayed"
    line = f"{verb} {result.replayed_count}, failed {result.failed_count}"
    if result.failed_count:
        named = ", ".join(i or "-" for i in result.failed[:_NAMED_FAILURES])
        more = result.failed_count - min(len(result.failed), _NAMED_FAILURES)
        line += f" (still in the DLQ: {named}{f' and {more} more' if more > 0 else ''})"
    return f"{line}, left alone {result.skipped}"


def _purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CommandLineError(
            f"purge deletes every dead letter of {args.queue!r}: add --yes to confirm"
        )

    async def action(dlq: DeadLetters) -> int:
        count = await dlq.purge()
        print(f"purged {count} dead letter(s) from {dlq.name}")
        return 0

    return _run(args, action)
