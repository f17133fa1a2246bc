"""Inspect, replay and purge a queue's dead letters on RabbitMQ (`foxwork dlq ...` in code).

Listing browses `Q-dlq` without consuming it: messages are received unacknowledged, a
window of them at a time (`_BROWSE_WINDOW`, never more than a limit asks for), and all put
back in order when the browse ends; `show` fetches one at a time and stops at the id it
shows. Replay reads the same way and publishes each chosen dead letter back to the queue it
failed in as it comes (through the default exchange, so queues bound to the same routing
key do not get a second copy), with publisher confirms, and removes the dead letter only
after its copy is confirmed: an interrupted replay leaves every message in the DLQ or in
the queue, at worst in both, never in neither.

Dead letters made by foxwork carry `x-failure-reason` and friends; those the broker made
(rejections, a quorum queue's delivery limit) carry `x-death`, and the reason is read from it.

Example:
    async with DeadLetterQueue("amqp://guest:guest@127.0.0.1/", "orders") as dlq:
        async for letter in dlq.iter_letters():
            print(letter.id, letter.reason)
        result = await dlq.replay(reason_match="timeout", limit=100)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from types import TracebackType

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiolimiter import AsyncLimiter
from aiormq.abc import DeliveredMessage

from ..._redact import redact_url
from ...deadletter import DeadLetterInfo, ReplayResult, describe, replay_choice
from ...errors import ConfigurationError, ConnectionLost
from ._io import TRANSPORT_ERRORS, mapped
from .config import RabbitMQConsumerConfig
from .connection import connect_first
from .convert import connection_user
from .replay import Replay, get_one

logger = logging.getLogger("foxwork.dlq")

__all__ = ["DeadLetterInfo", "DeadLetterQueue", "ReplayResult"]

#: Dead letters a browse asks the broker for at once (the consumer's prefetch): a window
#: costs three round trips (qos, consume, cancel) instead of one per dead letter, and the
#: next is received while one is handed on (two windows in memory at most).
_BROWSE_WINDOW = 1_000
#: Seconds a browse waits for the next dead letter of a window before it looks whether
#: any is left to read (another client may have taken the rest).
_BROWSE_IDLE = 2.0


def _describe(message: DeliveredMessage, queue: str) -> DeadLetterInfo:
    """What a dead letter on RabbitMQ says (see `foxwork.deadletter.describe`).

    Its properties are read as pamqp decoded them, the way aio-pika's `IncomingMessage`
    reads them: an empty string is None, no priority is 0.
    """
    read = message.header.properties
    timestamp = read.timestamp
    properties = {
        "content_type": read.content_type,
        "content_encoding": read.content_encoding,
        "correlation_id": read.correlation_id or None,
        "reply_to": read.reply_to or None,
        "priority": read.priority or 0,
        "app_id": read.app_id or None,
        "type": read.message_type or None,
        "timestamp": timestamp.isoformat() if timestamp else None,
    }
    return describe(
        message.body,
        read.headers or {},
        message_id=read.message_id or None,
        queue=queue,
        properties=properties,
    )


class DeadLetterQueue:
    """The dead-letter queue of one queue on RabbitMQ.

    It connects as `RabbitMQBackend` does (heartbeat, TLS and connect timeout of a
    `RabbitMQConsumerConfig`), and aio-pika errors surface as foxwork's `BackendError`s.

    Args:
        url: the broker URL (never shown in errors or logs).
        queue: the main queue whose DLQ this is.
        dead_letter_queue: the DLQ name when it is not the default `Q-dlq`.
        connect_timeout: seconds to connect.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        dead_letter_queue: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        config = RabbitMQConsumerConfig(
            url=url,
            queue=queue,
            dead_letter_queue=dead_letter_queue,
            connect_timeout=connect_timeout,
        )
        self.queue = queue
        self.name = config.names(queue).dead_letter_queue
        self._config = config.model_copy(update={"connection_name": f"foxwork dlq {self.name}"})
        self._url = self._config.urls[0]
        self._connection: AbstractConnection | None = None
        #: Dead letters the last browse counted but could not read (held by another client).
        self.unread = 0

    def __repr__(self) -> str:
        return f"<DeadLetterQueue {self.name!r} at {redact_url(self._url)}>"

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
        """Connect to the first broker URL that answers.

        Raises:
            ConnectionLost: no URL answered; says why for each, URLs redacted.
        """
        if self._connection is not None:
            return
        self._connection, self._url = await connect_first(
            self._config.urls,
            self._config,
            connection_name=self._config.connection_name or self.name,
            failure="cannot connect to ",
        )

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _channel(self, *, confirms: bool = False) -> AbstractChannel:
        if self._connection is None:
            await self.connect()
        assert self._connection is not None
        try:
            return await self._connection.channel(
                publisher_confirms=confirms, on_return_raises=confirms
            )
        except TRANSPORT_ERRORS as exc:
            # aiormq says "connection closed" with a bare RuntimeError.
            raise ConnectionLost(
                f"lost the connection to {redact_url(self._url)}: {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _browsing(self, what: str) -> AsyncIterator[AbstractChannel]:
        """A channel of its own for `what`, aio-pika errors mapped; closing it afterwards
        returns every message not acked to the DLQ, in order."""
        async with mapped(f"{what} {self.name}"):
            channel = await self._channel()
            try:
                yield channel
            finally:
                await channel.close()

    def _describe(self, message: DeliveredMessage) -> DeadLetterInfo:
        return _describe(message, self.queue)

    async def count(self) -> int:
        """Messages in the DLQ right now."""
        async with self._browsing("counting") as channel:
            try:
                queue = await channel.declare_queue(self.name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise ConfigurationError(
                    f"there is no dead-letter queue {self.name!r}: check the queue name "
                    "(foxwork declares it when a pool first consumes the queue)"
                ) from exc
            return queue.declaration_result.message_count or 0

    async def _existing_queue(self, channel: AbstractChannel) -> AbstractQueue:
        """The dead-letter queue, looked up without creating it."""
        try:
            return await channel.declare_queue(self.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(
                f"there is no dead-letter queue {self.name!r}: check the queue name"
            ) from exc

    async def _fetch(
        self, channel: AbstractChannel, limit: int | None = None
    ) -> AsyncGenerator[DeliveredMessage]:
        """The dead letters there now, oldest first, left unacknowledged.

        One `basic.get` each, only when the caller asks for the next: nothing is checked
        out ahead of need, and stopping early leaves the rest untouched. Closing `channel`
        puts every message not acked back in its place.
        """
        queue = await self._existing_queue(channel)
        total = queue.declaration_result.message_count or 0
        wanted = total if limit is None else min(total, limit)
        fetched = 0
        # Only as many as were there when we looked: messages that a running pool adds
        # meanwhile are left alone, and requeued ones are not fetched twice.
        while fetched < wanted:
            message = await get_one(channel, queue)
            if message is None:
                break
            fetched += 1
            yield message
        self._count_unread(wanted - fetched, wanted)

    async def _stream(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        count: int,
        *,
        window: int = _BROWSE_WINDOW,
    ) -> AsyncGenerator[DeliveredMessage]:
        """At most `count` dead letters from the head of the DLQ (after those `channel`
        holds already), oldest first, left unacknowledged.

        They come a window at a time: a consumer with a prefetch of the window receives
        that many and is cancelled, and the next one, with the window's dead letters still
        held, receives the next, while the window is handed on. Never more than `count`
        are received. Closing `channel` puts every message not acked back in its place.
        """
        size = min(window, count)
        received = 0
        receiving = asyncio.ensure_future(self._window(channel, queue, size)) if size else None
        try:
            while receiving is not None:
                messages = await receiving
                receiving = None
                received += len(messages)
                following = min(window, count - received)
                if len(messages) == size and following > 0:
                    # Received while this window is handed on: the next consumer counts
                    # only its own deliveries against its prefetch, so acks of this window
                    # (a replay's) do not let the broker send it one past its own.
                    receiving = asyncio.ensure_future(self._window(channel, queue, following))
                size = following
                while messages:
                    yield messages.popleft()
        finally:
            if receiving is not None:
                receiving.cancel()
                # Its consumer is cancelled; what it received goes back with the channel.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiving

    async def _window(
        self, channel: AbstractChannel, queue: AbstractQueue, size: int
    ) -> collections.deque[DeliveredMessage]:
        """One window: up to `size` dead letters, fewer only when none is left ready; all
        received before it is handed on."""
        arrived: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

        # aiormq's deliveries as they are: what a dead letter says is read from them
        # once, by `_describe` (an aio-pika `IncomingMessage` each would cost more).
        async def deliver(message: DeliveredMessage) -> None:
            arrived.put_nowait(message)

        # A per-consumer prefetch applies to consumers started after it is set.
        await channel.set_qos(prefetch_count=size)
        # On aiormq's channel directly: aio-pika's `queue.consume` runs each delivery's
        # callback in a task of its own on top of aiormq's (one task per delivery here).
        underlay = await channel.get_underlay_channel()
        consuming = await underlay.basic_consume(queue.name, deliver, no_ack=False)
        tag = consuming.consumer_tag
        assert tag is not None
        window: collections.deque[DeliveredMessage] = collections.deque()
        try:
            while len(window) < size:
                message = await self._next(channel, arrived)
                if message is None:
                    break
                window.append(message)
        finally:
            # Cancelled before any of the window is handed on: an ack (a replay's) would
            # free a slot of the prefetch, and the broker would fill it with a dead letter
            # past the window. Cancelling keeps the window's dead letters held (so the
            # next consumer starts after them); a channel already gone dropped them.
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await underlay.basic_cancel(tag)
        return window

    async def _next(
        self, channel: AbstractChannel, arrived: asyncio.Queue[DeliveredMessage]
    ) -> DeliveredMessage | None:
        """The next delivery; None once the DLQ has none ready and none arrived."""
        if not arrived.empty():
            return arrived.get_nowait()
        while True:
            try:
                return await asyncio.wait_for(arrived.get(), _BROWSE_IDLE)
            except TimeoutError:
                if arrived.empty() and not await self._ready(channel):
                    return None

    async def _ready(self, channel: AbstractChannel) -> int:
        queue = await self._existing_queue(channel)
        return queue.declaration_result.message_count or 0

    async def _browse(
        self, channel: AbstractChannel, limit: int | None
    ) -> AsyncGenerator[DeliveredMessage]:
        """The dead letters there now (at most `limit`), oldest first, unacknowledged,
        a window at a time; counts those it could not read in `unread`."""
        queue = await self._existing_queue(channel)
        total = queue.declaration_result.message_count or 0
        # Only as many as were there when we looked: messages that a running pool adds
        # meanwhile are left alone.
        wanted = total if limit is None else min(total, limit)
        fetched = 0
        async with contextlib.aclosing(self._stream(channel, queue, wanted)) as messages:
            async for message in messages:
                fetched += 1
                yield message
        self._count_unread(wanted - fetched, wanted)

    def _count_unread(self, unread: int, wanted: int) -> None:
        # Messages another client holds unacked (another browse, a consumer of the DLQ) are
        # invisible until it lets go: say so rather than pretend the list is complete.
        self.unread = unread
        if unread:
            logger.warning(
                "%d of %d dead letters in %s could not be read: another client holds them "
                "(another `foxwork dlq` run, or a consumer of the DLQ); try again",
                unread,
                wanted,
                self.name,
            )

    async def iter_letters(self, *, limit: int | None = None) -> AsyncGenerator[DeadLetterInfo]:
        """The dead letters, oldest first, as they are read, without consuming them.

        Nothing is kept per dead letter: a DLQ of any size is listed in the memory of one
        window (`_BROWSE_WINDOW` dead letters). Every dead letter read stays checked out
        (unacknowledged) until the iteration ends, when all go back in order; end it (or
        leave the `async for`) to hand them back. With a `limit`, only the first `limit`
        dead letters are read; the others are never fetched.
        """
        async with (
            self._browsing("listing") as channel,
            contextlib.aclosing(self._browse(channel, limit)) as messages,
        ):
            async for message in messages:
                yield self._describe(message)

    async def list(self, *, limit: int | None = None) -> list[DeadLetterInfo]:
        """The dead letters, oldest first, without consuming them, all loaded in memory
        (bodies and headers included): for a large DLQ, use `iter_letters()`.

        With a `limit`, only the first `limit` dead letters are read; the others are never
        fetched.
        """
        async with contextlib.aclosing(self.iter_letters(limit=limit)) as letters:
            return [letter async for letter in letters]

    async def show(self, message_id: str) -> DeadLetterInfo | None:
        """The oldest dead letter with this message id, or None.

        Reading stops at that dead letter: the ones after it are never fetched, and only
        the matching one is kept in memory.
        """
        async with (
            self._browsing("showing a dead letter of") as channel,
            contextlib.aclosing(self._fetch(channel)) as messages,
        ):
            async for message in messages:
                if (message.header.properties.message_id or "") == message_id:
                    return self._describe(message)
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
        """Publish chosen dead letters back to their queue, confirmed, then remove them.

        Without a rate limit, the DLQ is read oldest first a window at a time, the copies
        go out in batches (one write each) with up to a few hundred confirms outstanding,
        and each dead letter is removed once its own copy is confirmed (runs of them with
        one `basic.ack`, `multiple` set, while no dead letter left in place is held): the
        replay holds at most two windows in memory, and reads no further than `limit`
        when there is no filter. With a rate limit, it reads and replays one dead letter
        at a time. The dead letters it passes over stay in the DLQ, in order. Waiting on
        the rate limit, it does not keep the next dead letter checked out, nor (past a
        few minutes) those it passed over, so a slow replay is not cut off by the
        broker's acknowledgement timeout. Interrupted, it may leave a dead letter whose
        copy was confirmed in the DLQ as well (at least once, never lost).

        A copy the broker refuses, or that is not confirmed, counts as failed and its dead
        letter stays; when the broker closes the publishing channel, the replay opens
        another and goes on. When it cannot go on (the connection is lost), it stops and
        says why in `ReplayResult.stopped`: every dead letter not replayed is still in the
        DLQ.

        A copy keeps the dead letter's `user_id` only when it names the user the replay
        connects as (the broker refuses any other); otherwise the copy has none.

        Args:
            ids: only these message ids (default: all).
            reason_match: only dead letters whose reason matches this regular expression.
            limit: at most this many.
            rate: at most this many per second.
            dry_run: choose, report, change nothing.
            on_progress: called with (dead letters read, dead letters there at the start)
                after each dead letter read; a replay that reaches `limit` ends before the
                first number reaches the second.
        """
        chosen = replay_choice(ids=ids, reason_match=reason_match, limit=limit, rate=rate)
        run = Replay(
            self,
            chosen=chosen,
            limit=limit,
            # One at a time, one every 1/rate seconds (also below one a second).
            limiter=AsyncLimiter(1, 1 / rate) if rate else None,
            dry_run=dry_run,
            on_progress=on_progress,
            user=connection_user(self._url),
            # Without a filter every dead letter read is chosen: read no further than the
            # limit.
            read_bound=limit if not ids and not reason_match else None,
        )
        return await run.run()

    async def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        async with self._browsing("purging") as channel:
            queue = await self._existing_queue(channel)
            result = await queue.purge()
            return int(result.message_count or 0)
