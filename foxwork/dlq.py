"""Inspect, replay and purge a queue's dead letters on RabbitMQ (`foxwork dlq ...` in code).

Listing browses `Q-dlq` without consuming it: messages are fetched unacknowledged and all
put back when the browse ends. Replay publishes each chosen dead letter back to the queue
it failed in (through the default exchange, so queues bound to the same routing key do not
get a second copy), with publisher confirms, and removes the dead letter only after its
copy is confirmed: an interrupted replay leaves every message in the DLQ or in the queue,
at worst in both, never in neither.

Dead letters made by foxwork carry `x-failure-reason` and friends; those the broker made
(rejections, a quorum queue's delivery limit) carry `x-death`, and the reason is read from it.

Example:
    async with DeadLetterQueue("amqp://guest:guest@127.0.0.1/", "orders") as dlq:
        for letter in await dlq.list():
            print(letter.id, letter.reason)
        result = await dlq.replay(reason_match="timeout", limit=100)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Collection, Mapping
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
    """What `replay()` did: ids replayed (or that would be, in a dry run), ids whose copy
    was not confirmed (they stay in the DLQ), and how many dead letters did not match."""

    replayed: list[str]
    failed: list[str]
    skipped: int
    dry_run: bool


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
        return await self._connection.channel(
            publisher_confirms=confirms, on_return_raises=confirms
        )

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

    async def _browse(
        self, channel: AbstractChannel, limit: int | None
    ) -> list[AbstractIncomingMessage]:
        queue = await self._existing_queue(channel)
        total = queue.declaration_result.message_count or 0
        wanted = total if limit is None else min(total, limit)
        fetched: list[AbstractIncomingMessage] = []
        # Only as many as were there when we looked: messages that a running pool adds
        # meanwhile are left alone, and requeued ones are not fetched twice.
        while len(fetched) < wanted:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            fetched.append(message)
        # Messages another client holds unacked (another browse, a consumer of the DLQ) are
        # invisible until it lets go: say so rather than pretend the list is complete.
        self.unread = wanted - len(fetched)
        if self.unread:
            logger.warning(
                "%d of %d dead letters in %s could not be read: another client holds them "
                "(another `foxwork dlq` run, or a consumer of the DLQ); try again",
                self.unread,
                wanted,
                self.name,
            )
        return fetched

    async def list(self, *, limit: int | None = None) -> list[DeadLetterInfo]:
        """The dead letters, oldest first, without consuming them."""
        channel = await self._channel()
        try:
            messages = await self._browse(channel, limit)
            return [_describe(m, self.name) for m in messages]
        finally:
            # Closing the channel returns every unacked message to the DLQ.
            await channel.close()

    async def show(self, message_id: str) -> DeadLetterInfo | None:
        """One dead letter by message id, or None."""
        for letter in await self.list():
            if letter.id == message_id:
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
        """Publish chosen dead letters back to their queue, confirmed, then remove them.

        Args:
            ids: only these message ids (default: all).
            reason_match: only dead letters whose reason matches this regular expression.
            limit: at most this many.
            rate: at most this many per second.
            dry_run: choose, report, change nothing.
            on_progress: called with (done, total) after each message.
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
        limiter = AsyncLimiter(max(1.0, rate), 1.0) if rate else None
        browse = await self._channel()
        publisher = await self._channel(confirms=True)
        replayed: list[str] = []
        failed: list[str] = []
        skipped = 0
        try:
            messages = await self._browse(browse, None)
            chosen: list[tuple[AbstractIncomingMessage, DeadLetterInfo]] = []
            for message in messages:
                letter = _describe(message, self.name)
                matches = (wanted is None or letter.id in wanted) and (
                    pattern is None or pattern.search(letter.reason)
                )
                if matches and (limit is None or len(chosen) < limit):
                    chosen.append((message, letter))
                else:
                    skipped += 1
            for done, (message, letter) in enumerate(chosen, 1):
                if dry_run or await self._replay_one(publisher, message, letter, limiter):
                    replayed.append(letter.id)
                else:
                    failed.append(letter.id)
                if on_progress is not None:
                    on_progress(done, len(chosen))
        finally:
            # Everything not acked (unchosen, failed, dry run) goes back to the DLQ.
            await browse.close()
            await publisher.close()
        return ReplayResult(replayed=replayed, failed=failed, skipped=skipped, dry_run=dry_run)

    async def _replay_one(
        self,
        publisher: AbstractChannel,
        message: AbstractIncomingMessage,
        letter: DeadLetterInfo,
        limiter: AsyncLimiter | None,
    ) -> bool:
        if limiter is not None:
            await limiter.acquire()
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
            user_id=message.user_id,
        )
        try:
            await publisher.default_exchange.publish(
                copy, routing_key=letter.queue, mandatory=True, timeout=10
            )
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.DeliveryError, TimeoutError):
            return False
        # The copy is confirmed: only now does the dead letter go.
        await message.ack()
        return True

    async def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        channel = await self._channel()
        try:
            queue = await self._existing_queue(channel)
            result = await queue.purge()
            return int(result.message_count or 0)
        finally:
            await channel.close()
