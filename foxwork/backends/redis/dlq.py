"""Inspect, replay and purge a queue's dead letters on Redis Streams (`foxwork dlq ...` in
code), with the same shape as `foxwork.backends.rabbitmq.dlq.DeadLetterQueue`.

The dead letters of a queue `Q` are the entries of the stream `foxwork:{Q}:dlq` (keys:
`RedisStreamsConfig`). Browsing reads them with XRANGE, a page at a time and only as far
as needed (a limit, the id shown): it never removes or claims anything.

Replay reads the same way and moves each chosen dead letter back to `foxwork:{Q}` with one
script (`MOVE_BACK`): it checks that the dead letter is still there, XADDs its copy to the
stream, then XDELs it from the dead-letter stream. A script runs atomically, so a dead
letter is in one stream or the other, never in both or neither, whatever happens to the
connection or the process; and two replays at once move each dead letter once. Both keys
share the queue's hash tag and are passed to the script (none is built inside it), so on a
Redis Cluster they live in one slot and the script runs on the queue's master.

It connects as `RedisStreamsBackend` does (`connection.open_client`): to a single server,
or with `cluster=True` to a Redis Cluster.

A dead letter is shown by its message id; one without a message id (entries written by
another tool) goes by its entry id, which `show` and `replay(ids=...)` also accept.

Example:
    async with DeadLetterQueue("redis://127.0.0.1:6379/0", "orders") as dlq:
        for letter in await dlq.list():
            print(letter.id, letter.reason)
        result = await dlq.replay(reason_match="timeout", limit=100)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from types import TracebackType
from typing import Any

from aiolimiter import AsyncLimiter
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..._redact import redact_url
from ...deadletter import (
    REPLAY_DROPPED_HEADERS,
    DeadLetterInfo,
    ReplayResult,
    describe,
    replay_choice,
)
from ...errors import BackendError, ConfigurationError, ConnectionLost, TopologyConflict
from . import connection, entry
from .config import DEFAULT_KEY_PREFIX, RedisStreamsConfig
from .connection import CONNECTION_ERRORS, Client, close_client, open_client

__all__ = ["DeadLetterInfo", "DeadLetterQueue", "ReplayResult"]

logger = logging.getLogger("foxwork.dlq")

#: Dead letters one XRANGE reads at most.
PAGE_SIZE = 100
#: Connections the tool opens at most (per master in a cluster; it sends one command at a
#: time).
MAX_CONNECTIONS = 2

#: KEYS: dead-letter stream, stream. ARGV: the dead letter's entry id, max stream length
#: (0: none), then the copy's fields (name, value, ...).
#: Returns the copy's entry id, or false when the dead letter is gone (replayed or purged
#: meanwhile). The XADD comes before the XDEL: should it fail (the stream key holds
#: another type, Redis is out of memory), nothing was changed.
MOVE_BACK = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local maxlen = tonumber(ARGV[2])
local copy
if maxlen > 0 then
  copy = redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 3))
else
  copy = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('XDEL', KEYS[1], ARGV[1])
return copy
"""


def _properties(decoded: entry.Decoded, entry_id: str) -> dict[str, Any]:
    """The properties `foxwork dlq show` prints (those of the RabbitMQ tool, and the
    entry id)."""
    props = decoded.properties
    return {
        "content_type": props.content_type,
        "content_encoding": props.content_encoding,
        "correlation_id": props.correlation_id,
        "reply_to": props.reply_to,
        "priority": props.priority,
        "app_id": props.app_id,
        "type": props.message_type,
        "timestamp": props.timestamp.isoformat() if props.timestamp else None,
        "entry_id": entry_id,
    }


def replay_fields(fields: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields of a dead letter's replayed copy: the entry as stored, without the
    headers of its failure and the counts of its attempts (`REPLAY_DROPPED_HEADERS`, so
    no `x-retry-attempt`: a first attempt), nor a `redelivered` mark."""
    copy = {
        name: value
        for name, value in fields.items()
        if name != entry.REDELIVERED and name.decode(errors="replace") not in REPLAY_DROPPED_HEADERS
    }
    raw = copy.get(entry.HEADERS)
    if raw is not None:
        try:
            headers = json.loads(raw)
        except ValueError:
            headers = None
        if isinstance(headers, dict):
            kept = {k: v for k, v in headers.items() if k not in REPLAY_DROPPED_HEADERS}
            if kept:
                copy[entry.HEADERS] = json.dumps(kept).encode()
            else:
                del copy[entry.HEADERS]
    return copy


class DeadLetterQueue:
    """The dead-letter stream of one queue on Redis Streams.

    It connects as `RedisStreamsBackend` does, and redis-py's errors surface as foxwork's
    `BackendError`s.

    Args:
        url: the Redis URL (`redis://` or `rediss://`; never shown in errors or logs), or a
            list of URLs tried in order.
        queue: the main queue whose dead letters these are.
        key_prefix: the prefix of the queue's keys, when the backend was given one.
        connect_timeout: seconds to connect.
        cluster: the URLs are startup nodes of a Redis Cluster (see `RedisStreamsConfig`).
        config: a backend's settings instead (its URLs, cluster mode, key prefix,
            `max_len` and timeouts); `url`, `key_prefix`, `connect_timeout` and `cluster`
            are then ignored.
    """

    def __init__(
        self,
        url: str | list[str] | None,
        queue: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        connect_timeout: float = 10.0,
        cluster: bool = False,
        config: RedisStreamsConfig | None = None,
    ) -> None:
        if config is None:
            if not url:
                raise ConfigurationError("give a Redis URL, or config=RedisStreamsConfig(...)")
            config = RedisStreamsConfig(
                url=url,
                queue=queue,
                key_prefix=key_prefix,
                connect_timeout=connect_timeout,
                cluster=cluster,
            )
        self.queue = queue
        self.keys = config.keys(queue)
        self.name = self.keys.dead_letter
        self._config = config
        self._client: Client | None = None
        self._url = redact_url(config.urls[0])
        #: Always 0: browsing a stream holds nothing, so another client cannot hide any.
        self.unread = 0

    def __repr__(self) -> str:
        return f"<DeadLetterQueue {self.name!r} at {self._url}>"

    async def __aenter__(self) -> DeadLetterQueue:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first URL that answers (in a cluster: to the cluster, through
        any startup node that answers).

        Raises:
            ConnectionLost: no URL answered; says why for each, URLs redacted.
            ConfigurationError: the server is not in the mode `cluster` says.
        """
        if self._client is None:
            config = self._config.model_copy(update={"max_connections": MAX_CONNECTIONS})
            client = await open_client(config)
            self._client, self._url = client, connection.describe(client)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    async def _connected(self) -> Client:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

    @contextlib.asynccontextmanager
    async def _mapped(self, what: str) -> AsyncIterator[Client]:
        """The client, for `what`; Redis' errors → `BackendError`s."""
        client = await self._connected()
        try:
            yield client
        except CONNECTION_ERRORS as exc:
            raise ConnectionLost(
                f"{what} {self.name}: lost the connection to {self._url}: {exc}"
            ) from exc
        except RedisError as exc:
            raise BackendError(f"{what} {self.name}: {exc}") from exc

    async def _existing(self, client: Client) -> bool:
        """Whether the dead-letter stream exists (it is made by the first dead letter).

        Raises:
            ConfigurationError: neither it nor the queue's stream exists.
            TopologyConflict: its key holds something else than a stream.
        """
        async with client.pipeline(transaction=False) as pipe:
            pipe.type(self.name)
            pipe.type(self.keys.stream)
            found, stream = (_text(kind) for kind in await pipe.execute())
        if found not in ("none", "stream"):
            raise TopologyConflict(
                f"Redis key {self.name!r} is a {found}, not a stream of dead letters: "
                "check the queue name and key prefix"
            )
        if found == "none" and stream == "none":
            raise ConfigurationError(
                f"there is no dead-letter queue {self.name!r}: check the queue name and "
                f"key prefix (neither it nor the stream {self.keys.stream!r} exists)"
            )
        return found == "stream"

    async def _snapshot(self, client: Client) -> tuple[int, bytes | None]:
        """(how many dead letters there are, the id of the last one), in one MULTI."""
        if not await self._existing(client):
            return 0, None
        async with client.pipeline(transaction=True) as pipe:
            pipe.xlen(self.name)
            pipe.xrevrange(self.name, count=1)
            total, last = await pipe.execute()
        return int(total), last[0][0] if last else None

    async def _entries(
        self, client: Client, last: bytes | None
    ) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
        """The dead letters up to `last` (those added later are left alone), oldest first,
        read a page at a time as the caller asks for them."""
        start: bytes = b"-"
        while last is not None:
            page: Any = await client.xrange(self.name, min=start, max=last, count=PAGE_SIZE)
            for entry_id, fields in page:
                yield entry_id, fields
            if len(page) < PAGE_SIZE:
                return
            start = b"(" + page[-1][0]

    def _describe(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetterInfo:
        decoded = entry.decode(fields)
        return describe(
            decoded.body,
            decoded.properties.headers,
            message_id=decoded.properties.message_id,
            queue=self.queue,
            properties=_properties(decoded, entry_id.decode()),
        )

    async def count(self) -> int:
        """Dead letters there are right now."""
        async with self._mapped("counting") as client:
            if not await self._existing(client):
                return 0
            return int(await client.xlen(self.name))

    async def list(self, *, limit: int | None = None) -> list[DeadLetterInfo]:
        """The dead letters, oldest first, without removing them.

        With a `limit`, only the first `limit` dead letters are read.
        """
        letters: list[DeadLetterInfo] = []
        if limit is not None and limit < 1:
            return letters
        async with self._mapped("listing") as client:
            _, last = await self._snapshot(client)
            async for entry_id, fields in self._entries(client, last):
                letters.append(self._describe(entry_id, fields))
                if limit is not None and len(letters) >= limit:
                    break
        return letters

    async def show(self, message_id: str) -> DeadLetterInfo | None:
        """The oldest dead letter with this message id (or this entry id), or None.

        Reading stops at that dead letter; only it is kept in memory.
        """
        async with self._mapped("showing a dead letter of") as client:
            _, last = await self._snapshot(client)
            async for entry_id, fields in self._entries(client, last):
                letter = self._describe(entry_id, fields)
                if message_id in (letter.id, entry_id.decode()):
                    return letter
        return None

    async def replay(
        self,
        *,
        ids: Collection[str] | None = None,
        reason_match: str | None = None,
        limit: int | None = None,
        rate: float | None = None,
        dry_run: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Move chosen dead letters back to their queue's stream, as first attempts.

        The dead-letter stream is read oldest first, a page at a time, up to the last dead
        letter there at the start; each chosen one is moved before the next is read, by
        one atomic script (see the module docstring): it is in the dead-letter stream or
        in the queue's stream, never both or neither. Its copy has the entry's fields
        without the headers of its failure (`replay_fields`).

        A copy Redis refuses counts as failed and its dead letter stays. When the
        connection is lost the replay stops and says why in `ReplayResult.stopped`: every
        dead letter not replayed is still in the dead-letter stream.

        Args:
            ids: only these message ids, or entry ids (default: all).
            reason_match: only dead letters whose reason matches this regular expression.
            limit: at most this many.
            rate: at most this many per second.
            dry_run: choose, report, change nothing.
            on_progress: called with (dead letters read, dead letters there at the start)
                after each dead letter read.
        """
        chosen = replay_choice(ids=None, reason_match=reason_match, limit=limit, rate=rate)
        wanted = set(ids) if ids else None
        # One at a time, one every 1/rate seconds (also below one a second).
        limiter = AsyncLimiter(1, 1 / rate) if rate else None
        tally = _Tally()
        async with self._mapped("replaying") as client:
            total, last = await self._snapshot(client)
            move_back = client.register_script(MOVE_BACK)
            read = 0
            try:
                async for entry_id, fields in self._entries(client, last):
                    if limit is not None and len(tally.replayed) >= limit:
                        break
                    read += 1
                    letter = self._describe(entry_id, fields)
                    shown = letter.id or entry_id.decode()
                    if chosen(letter) and (wanted is None or {letter.id, shown} & wanted):
                        if dry_run:
                            tally.add(tally.replayed, shown, letter.reason)
                        else:
                            if limiter is not None:
                                await limiter.acquire()
                            tally.current = shown
                            await self._move_back(move_back, entry_id, fields, letter, tally)
                            tally.current = ""
                    if on_progress is not None:
                        on_progress(read, total)
            except CONNECTION_ERRORS as exc:
                tally.stopped = f"lost the connection to {self._url} ({exc})"
                if tally.current:
                    tally.stopped += (
                        f"; dead letter {tally.current!r} was moved back whole or not at all"
                    )
        return ReplayResult(
            replayed=tally.replayed,
            failed=tally.failed,
            skipped=max(total - len(tally.replayed) - len(tally.failed), 0),
            dry_run=dry_run,
            stopped=tally.stopped,
            reasons=tally.reasons,
        )

    async def _move_back(
        self,
        move_back: AsyncScript,
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        letter: DeadLetterInfo,
        tally: _Tally,
    ) -> None:
        """Run `MOVE_BACK` on one dead letter and count the outcome; a connection error
        goes to the caller (the replay stops)."""
        try:
            moved = await move_back(
                keys=[self.name, self.keys.stream],
                args=[entry_id, self._config.max_len or 0, *_flat(fields)],
            )
        except CONNECTION_ERRORS:
            raise
        except RedisError as exc:
            logger.warning(
                "dead letter %r was not replayed (%s: %s); it stays in %s",
                tally.current,
                type(exc).__name__,
                exc,
                self.name,
            )
            tally.add(tally.failed, tally.current, letter.reason)
            return
        if moved is None:
            # Replayed or purged meanwhile by someone else: nothing to do.
            logger.info("dead letter %r is gone from %s", tally.current, self.name)
        else:
            tally.add(tally.replayed, tally.current, letter.reason)

    async def purge(self) -> int:
        """Delete every dead letter (the dead-letter stream); returns how many there were."""
        async with self._mapped("purging") as client:
            await self._existing(client)
            async with client.pipeline(transaction=True) as pipe:
                pipe.xlen(self.name)
                pipe.delete(self.name)
                count, _ = await pipe.execute()
            return int(count)


@dataclasses.dataclass
class _Tally:
    """What one replay did so far."""

    replayed: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    stopped: str = ""
    #: The dead letter being moved back ("" between two).
    current: str = ""

    def add(self, ids: list[str], letter_id: str, reason: str) -> None:
        ids.append(letter_id)
        self.reasons[letter_id] = reason


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """The copy of a dead letter's fields as the script's arguments: name, value, ..."""
    return [part for pair in replay_fields(fields).items() for part in pair]
