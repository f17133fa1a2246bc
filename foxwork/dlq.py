"""Inspect, replay and purge a queue's dead letters on RabbitMQ (`foxwork dlq ...` in code).

Listing browses `Q-dlq` without consuming it: messages are fetched unacknowledged, one at a
time and only as far as needed (a limit, the id shown), and all put back in order when the
browse ends. Replay reads the same way and publishes each chosen dead letter back to the
queue it failed in as it comes (through the default exchange, so queues bound to the same
routing key do not get a second copy), with publisher confirms, and removes the dead letter
only after its copy is confirmed: an interrupted replay leaves every message in the DLQ or
in the queue, at worst in both, never in neither.

Dead letters made by foxwork carry `x-failure-reason` and friends; those the broker made
(rejections, a quorum queue's delivery limit) carry `x-death`, and the reason is read from it.

Example:
    async with DeadLetterQueue("amqp://guest:guest@127.0.0.1/", "orders") as dlq:
        for letter in await dlq.list():
            print(letter.id, letter.reason)
        result = await dlq.replay(reason_match="timeout", limit=100)
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aiolimiter import AsyncLimiter

from . import wire
from ._redact import redact_url
from .backends.rabbitmq.config import RabbitMQConsumerConfig
from .backends.rabbitmq.convert import connection_user, copyable_user_id
from .errors import ConfigurationError, ConnectionLost

logger = logging.getLogger("foxwork.dlq")

__all__ = ["DeadLetterInfo", "DeadLetterQueue", "ReplayResult"]

#: Headers foxwork and the broker add to a dead letter, and the counts of its attempts and
#: deliveries: a replayed copy drops them, it starts afresh.
_DIAGNOSTIC_HEADERS = (
    wire.RETRY_ATTEMPT,
    wire.REDELIVERY_COUNT,
    *wire.DEAD_LETTER_HEADERS,
    *wire.BROKER_HEADERS,
)
#: Seconds a replay keeps the dead letters it passed over checked out while it waits on
#: the rate limit; past that it hands them back before waiting. Well inside RabbitMQ's
#: acknowledgement timeout (30 minutes by default), which would close the channel.
_HOLD_LIMIT = 300.0
#: Passes in a row a replay starts again after losing its channel to the DLQ without
#: getting any further, before it stops.
_MAX_FRUITLESS_PASSES = 3
#: Seconds a replay waits for the broker to confirm one copy.
_CONFIRM_TIMEOUT = 10.0
#: What a closed channel or a lost connection raises.
_CHANNEL_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


@dataclasses.dataclass(frozen=True)
class DeadLetterInfo:
    """One message in a dead-letter queue.

    Attributes:
        id: the message id ("" when it has none).
        queue: the queue it failed in.
        routing_key: the routing key it was originally published with.
        exchange: the exchange it was originally published to ("" = default).
        reason: `x-failure-reason`, or the broker's reason from `x-death`.
        exception_type: `x-exception-type` ("" when the broker dead-lettered it).
        final_attempt: the attempt that failed last (0 when unknown).
        failed_at: when it was dead-lettered (ISO 8601), "" when unknown.
        source: "foxwork" (published with diagnostic headers) or "broker" (x-death).
        headers, body, properties: the message as stored.
    """

    id: str
    queue: str
    routing_key: str
    exchange: str
    reason: str
    exception_type: str
    final_attempt: int
    failed_at: str
    source: str
    headers: Mapping[str, Any]
    body: bytes
    properties: Mapping[str, Any]

    def summary(self) -> dict[str, Any]:
        """The fields `foxwork dlq list` shows, JSON-serialisable."""
        return {
            "id": self.id,
            "reason": self.reason,
            "exception_type": self.exception_type,
            "final_attempt": self.final_attempt,
            "failed_at": self.failed_at,
            "queue": self.queue,
            "routing_key": self.routing_key,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """What `replay()` did.

    Attributes:
        replayed: ids replayed (or that would be, in a dry run), in DLQ order.
        failed: ids whose copy was not confirmed: they stay in the DLQ.
        skipped: how many of the dead letters there at the start were left alone (not
            chosen, beyond the limit, or not read).
        dry_run: nothing was changed.
        stopped: why the replay stopped before it was done ("" when it did not stop
            early); every dead letter not replayed is still in the DLQ.
    """

    replayed: list[str]
    failed: list[str]
    skipped: int
    dry_run: bool
    stopped: str = ""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _describe(message: AbstractIncomingMessage, dlq_name: str) -> DeadLetterInfo:
    headers: dict[str, Any] = dict(message.headers or {})
    deaths = headers.get("x-death")
    death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    if wire.FAILURE_REASON in headers:
        source = "foxwork"
        queue = _text(headers.get(wire.ORIGINAL_QUEUE))
        routing_key = _text(headers.get(wire.ORIGINAL_ROUTING_KEY))
        exchange = _text(headers.get(wire.ORIGINAL_EXCHANGE))
        reason = _text(headers.get(wire.FAILURE_REASON))
        exception_type = _text(headers.get(wire.EXCEPTION_TYPE))
        final_attempt = _int(headers.get(wire.FINAL_ATTEMPT))
        failed_at = _text(headers.get(wire.FAILED_AT))
    else:
        source = "broker"
        queue = _text(death.get("queue")) or dlq_name.removesuffix("-dlq")
        keys = death.get("routing-keys") or []
        routing_key = _text(keys[0]) if keys else queue
        exchange = _text(death.get("exchange"))
        why = _text(death.get("reason")) or "unknown"
        reason = f"dead-lettered by the broker: {why}"
        if why == "delivery_limit":
            reason += " (the message was delivered too often without being settled)"
        exception_type = ""
        final_attempt = _int(headers.get(wire.DELIVERY_COUNT)) or _int(death.get("count"))
        when = death.get("time")
        failed_at = when.isoformat() if isinstance(when, datetime) else _text(when)
    properties = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "priority": message.priority,
        "app_id": message.app_id,
        "type": message.type,
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
    }
    return DeadLetterInfo(
        id=message.message_id or "",
        queue=queue,
        routing_key=routing_key,
        exchange=exchange,
        reason=reason,
        exception_type=exception_type,
        final_attempt=final_attempt,
        failed_at=failed_at,
        source=source,
        headers=headers,
        body=message.body,
        properties=properties,
    )


class DeadLetterQueue:
    """The dead-letter queue of one queue on RabbitMQ.

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
        self._config = config
        self.queue = queue
        self.name = config.names(queue).dead_letter_queue
        self._connection: AbstractConnection | None = None
        #: Dead letters the last browse counted but could not read (held by another client).
        self.unread = 0

    def __repr__(self) -> str:
        return f"<DeadLetterQueue {self.name!r} at {redact_url(self._config.urls[0])}>"

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
        if self._connection is not None:
            return
        url = self._config.urls[0]
        try:
            self._connection = await aio_pika.connect(
                url,
                timeout=self._config.connect_timeout,
                client_properties={"connection_name": f"foxwork dlq {self.name}"},
            )
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            raise ConnectionLost(
                f"cannot connect to {redact_url(url)}: {type(exc).__name__}: {exc}"
            ) from exc

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
        except (*_CHANNEL_ERRORS, RuntimeError) as exc:
            # aiormq says "connection closed" with a bare RuntimeError.
            raise ConnectionLost(
                f"lost the connection to {redact_url(self._config.urls[0])}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def count(self) -> int:
        """Messages in the DLQ right now."""
        channel = await self._channel()
        try:
            queue = await channel.declare_queue(self.name, passive=True)
            return queue.declaration_result.message_count or 0
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(
                f"there is no dead-letter queue {self.name!r}: check the queue name "
                "(foxwork declares it when a pool first consumes the queue)"
            ) from exc
        finally:
            await channel.close()

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
    ) -> AsyncGenerator[AbstractIncomingMessage]:
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
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
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

    async def list(self, *, limit: int | None = None) -> list[DeadLetterInfo]:
        """The dead letters, oldest first, without consuming them.

        With a `limit`, only the first `limit` dead letters are read; the others are never
        fetched.
        """
        channel = await self._channel()
        try:
            async with contextlib.aclosing(self._fetch(channel, limit)) as messages:
                return [_describe(message, self.name) async for message in messages]
        finally:
            # Closing the channel returns every unacked message to the DLQ.
            await channel.close()

    async def show(self, message_id: str) -> DeadLetterInfo | None:
        """The oldest dead letter with this message id, or None.

        Reading stops at that dead letter: the ones after it are never fetched, and only
        the matching one is kept in memory.
        """
        channel = await self._channel()
        try:
            async with contextlib.aclosing(self._fetch(channel)) as messages:
                async for message in messages:
                    if (message.message_id or "") == message_id:
                        return _describe(message, self.name)
            return None
        finally:
            await channel.close()

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

        The DLQ is read oldest first, one dead letter at a time, and each chosen one is
        replayed before the next is read: the replay holds in memory only the dead letter
        at hand, and stops reading once `limit` is reached. The dead letters it passes
        over stay in the DLQ, in order. Waiting on the rate limit, it does not keep the
        next dead letter checked out, nor (past a few minutes) those it passed over, so a
        slow replay is not cut off by the broker's acknowledgement timeout.

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
        try:
            pattern = re.compile(reason_match) if reason_match else None
        except re.error as exc:
            raise ConfigurationError(
                f"reason_match={reason_match!r} is not a valid regex: {exc}"
            ) from exc
        if rate is not None and rate <= 0:
            raise ConfigurationError(f"rate={rate!r} must be a positive number per second")
        if limit is not None and limit < 1:
            raise ConfigurationError(f"limit={limit!r} must be at least 1")
        wanted = set(ids) if ids else None

        def chosen(letter: DeadLetterInfo) -> bool:
            return (wanted is None or letter.id in wanted) and (
                pattern is None or pattern.search(letter.reason) is not None
            )

        run = _Replay(
            self,
            chosen=chosen,
            limit=limit,
            # One at a time, one every 1/rate seconds (also below one a second).
            limiter=AsyncLimiter(1, 1 / rate) if rate else None,
            dry_run=dry_run,
            on_progress=on_progress,
            user=connection_user(self._config.urls[0]),
        )
        return await run.run()

    async def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        channel = await self._channel()
        try:
            queue = await self._existing_queue(channel)
            result = await queue.purge()
            return int(result.message_count or 0)
        finally:
            await channel.close()


class _PassEnd(enum.Enum):
    """Why one pass of a replay over the DLQ ended."""

    #: Every dead letter there at the start was read, or the limit was reached.
    DONE = enum.auto()
    #: It handed back what it held, to wait on the rate limit with nothing checked out.
    RELEASED = enum.auto()
    #: Its channel to the DLQ broke (the dead letters it held went back to the DLQ).
    LOST = enum.auto()


class _Replay:
    """One run of `DeadLetterQueue.replay()`: its choices, its channels and its tally.

    It reads the DLQ in passes, each on a channel of its own. Dead letters it leaves in
    place (not chosen, failed, or a dry run) stay checked out until the pass ends, since a
    queue cannot be read past a message without holding it; the broker puts them back in
    order when the pass's channel closes. The next pass holds that many from the head
    again, then reads on where the last one stopped.
    """

    def __init__(
        self,
        dlq: DeadLetterQueue,
        *,
        chosen: Callable[[DeadLetterInfo], bool],
        limit: int | None,
        limiter: AsyncLimiter | None,
        dry_run: bool,
        on_progress: Callable[[int, int], None] | None,
        user: str,
    ) -> None:
        self._dlq = dlq
        self._chosen = chosen
        self._limit = limit
        self._limiter = limiter
        self._dry_run = dry_run
        self._on_progress = on_progress
        self._user = user
        self._publisher: AbstractChannel | None = None
        self._replayed: list[str] = []
        self._failed: list[str] = []
        #: Dead letters at the head of the DLQ this run left there, in order.
        self._passed = 0
        #: Dead letters this run removed (their copies confirmed).
        self._removed = 0
        #: Dead letters in the DLQ when the run began (None until the first pass looked).
        self._total: int | None = None
        #: A rate-limit slot taken while nothing was checked out, for the next copy.
        self._slot = False
        #: The id of a dead letter whose copy was confirmed but whose removal was lost with
        #: its channel: it is back in the DLQ, right after the ones passed over.
        self._unremoved: str | None = None
        self._stopped = ""

    @property
    def _read(self) -> int:
        return self._passed + self._removed

    def _finished(self) -> bool:
        if self._stopped:
            return True
        if self._limit is not None and len(self._replayed) >= self._limit:
            return True
        return self._total is not None and self._read >= self._total

    async def run(self) -> ReplayResult:
        fruitless = 0
        try:
            while not self._finished():
                before = self._read
                end = await self._pass()
                if end is _PassEnd.DONE:
                    break
                if end is _PassEnd.RELEASED:
                    # Nothing is checked out now: wait here, and keep the slot.
                    assert self._limiter is not None
                    await self._limiter.acquire()
                    self._slot = True
                if end is _PassEnd.LOST:
                    fruitless = 0 if self._read > before else fruitless + 1
                    if fruitless > _MAX_FRUITLESS_PASSES:
                        self._stopped = (
                            "the channel to the dead-letter queue kept closing; "
                            "see the log for the broker's reason"
                        )
        finally:
            if self._publisher is not None:
                await _close_quietly(self._publisher)
        total = self._total or 0
        return ReplayResult(
            replayed=self._replayed,
            failed=self._failed,
            skipped=max(total - len(self._replayed) - len(self._failed), 0),
            dry_run=self._dry_run,
            stopped=self._stopped,
        )

    async def _pass(self) -> _PassEnd:
        try:
            browse = await self._dlq._channel()
        except ConnectionLost as exc:
            self._stopped = str(exc)
            return _PassEnd.DONE
        try:
            return await self._read_on(browse)
        except _CHANNEL_ERRORS as exc:
            logger.warning(
                "the channel reading %s closed (%s: %s); reading on from the start",
                self._dlq.name,
                type(exc).__name__,
                exc,
            )
            return _PassEnd.LOST
        finally:
            # Everything not acked (passed over, failed, a dry run) goes back to the DLQ.
            await _close_quietly(browse)

    async def _read_on(self, browse: AbstractChannel) -> _PassEnd:
        queue = await self._dlq._existing_queue(browse)
        if self._total is None:
            self._total = queue.declaration_result.message_count or 0
        # The dead letters earlier passes left at the head: hold them again to read past.
        for held in range(self._passed):
            if await queue.get(no_ack=False, fail=False) is None:
                self._dlq._count_unread(self._total - self._removed - held, self._total)
                return _PassEnd.DONE
        held_since = time.monotonic()
        while not self._finished():
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                self._dlq._count_unread(self._total - self._read, self._total)
                return _PassEnd.DONE
            letter = _describe(message, self._dlq.name)
            if self._unremoved is not None:
                unremoved, self._unremoved = self._unremoved, None
                if letter.id == unremoved:
                    # Its copy is confirmed already (and counted): only remove it now.
                    await message.ack()
                    self._removed += 1
                    continue
            if not self._chosen(letter) or self._dry_run:
                if self._dry_run and self._chosen(letter):
                    self._replayed.append(letter.id)
                self._passed += 1
            elif not await self._wait_for_slot(held_since):
                return _PassEnd.RELEASED
            elif await self._replay_one(message, letter):
                self._replayed.append(letter.id)
                # The copy is confirmed: only now does the dead letter go. Should the
                # channel be gone, the dead letter is back in the DLQ, right after the ones
                # passed over, and the next pass removes it.
                self._unremoved = letter.id
                await message.ack()
                self._unremoved = None
                self._removed += 1
            else:
                self._failed.append(letter.id)
                self._passed += 1
            if self._on_progress is not None:
                self._on_progress(self._read, self._total)
        return _PassEnd.DONE

    async def _wait_for_slot(self, held_since: float) -> bool:
        """Wait for the rate limit to allow the next copy; False when the pass must first
        hand back what it holds (the dead letter at hand, and the ones it passed over when
        it has held them for `_HOLD_LIMIT`) and wait with nothing checked out."""
        if self._slot:
            self._slot = False
            return True
        if self._limiter is None or self._limiter.has_capacity():
            if self._limiter is not None:
                await self._limiter.acquire()
            return True
        if self._passed and time.monotonic() - held_since < _HOLD_LIMIT:
            await self._limiter.acquire()
            return True
        return False

    async def _open_publisher(self) -> AbstractChannel:
        if self._publisher is None or self._publisher.is_closed:
            if self._publisher is not None:
                await _close_quietly(self._publisher)
                self._publisher = None
            self._publisher = await self._dlq._channel(confirms=True)
        return self._publisher

    async def _replay_one(self, message: AbstractIncomingMessage, letter: DeadLetterInfo) -> bool:
        headers = {k: v for k, v in letter.headers.items() if k not in _DIAGNOSTIC_HEADERS}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id or None,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            # The broker refuses a copy naming another user than the one publishing it.
            user_id=copyable_user_id(message.user_id, self._user),
        )
        try:
            publisher = await self._open_publisher()
        except ConnectionLost as exc:
            self._stopped = str(exc)
            return False
        try:
            await publisher.default_exchange.publish(
                copy, routing_key=letter.queue, mandatory=True, timeout=_CONFIRM_TIMEOUT
            )
        except (aio_pika.exceptions.DeliveryError, TimeoutError, *_CHANNEL_ERRORS) as exc:
            # Not confirmed: the dead letter stays. A refusal that closed the channel is
            # the broker's verdict on this copy; the next one gets a fresh channel.
            logger.warning(
                "dead letter %r was not replayed (its copy was not confirmed: %s: %s); "
                "it stays in %s",
                letter.id,
                type(exc).__name__,
                exc,
                self._dlq.name,
            )
            return False
        return True


async def _close_quietly(channel: AbstractChannel) -> None:
    """Close `channel`; one the broker or a lost connection closed already is fine."""
    with contextlib.suppress(*_CHANNEL_ERRORS):
        await channel.close()
