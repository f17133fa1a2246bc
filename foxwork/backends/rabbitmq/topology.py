"""Idempotent declaration of a queue's topology: main queue, retry exchange and tiers, DLQ.

```
 publisher ──► [exchange] ──binding──► Q ──► consumer (foxwork)
                                       ▲        │ failed: copy + x-retry-attempt (confirmed), ack
          dead-letter on expiry (TTL)  │        ▼
     Q-retry-<ms>ms ◄──routing key── Q-retry_exchange
                                                │ last attempt / poison: copy + x-* headers
                                                ▼
                                              Q-dlq  ◄── broker dead-letters (rejects,
                                                         quorum delivery limit), with x-death
```
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel

from ...errors import TopologyConflict
from .config import QueueNames, QueueType, RabbitMQConsumerConfig

__all__ = ["Topology"]

#: Retry queues delete themselves after this long unused (ms) on top of their TTL, so
#: delay tiers that are no longer used do not pile up.
RETRY_QUEUE_EXPIRES_MARGIN_MS = 600_000
#: A retry tier is declared again (which resets its expiry) when older than this (s).
RETRY_QUEUE_REDECLARE_AFTER = 60.0

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']+)'"
    r".*?: received (?P<received>.+?) but current is (?P<current>.+)$"
)


def _conflict(exc: aiormq.exceptions.ChannelPreconditionFailed, what: str) -> TopologyConflict:
    text = str(exc.args[0] if exc.args else exc)
    match = _INEQUIVALENT.search(text)
    if match is None:
        return TopologyConflict(f"cannot declare {what}: {text}")
    arg, kind, name = match["arg"], match["kind"], match["name"]
    fix = (
        f"either delete the {kind} (after moving its messages) so foxwork can declare it, "
        "or change the RabbitMQConsumerConfig setting that controls this argument"
    )
    if arg == "x-queue-type":
        fix = (
            f"set queue_type to match the existing {kind}, or delete it (after moving its "
            "messages) to change its type"
        )
    elif arg in ("x-dead-letter-exchange", "x-dead-letter-routing-key"):
        fix = (
            f"the existing {kind} was declared without foxwork's dead-letter settings "
            f"(dead letters go to its '-dlq' queue); delete it (after moving its messages), "
            "or point foxwork at a new queue"
        )
    return TopologyConflict(
        f"{kind} '{name}' already exists with {arg} = {match['current'].strip()}, but foxwork "
        f"declares it with {arg} = {match['received'].strip()}: {fix}"
    )


class Topology:
    """Declares the topology of each queue, and the retry tiers as they are needed."""

    def __init__(self, config: RabbitMQConsumerConfig) -> None:
        self.config = config
        self._tiers: dict[tuple[str, int], float] = {}
        self._declaring: dict[tuple[str, int], asyncio.Future[None]] = {}

    def forget(self, queue: str | None = None) -> None:
        """Forget which retry tiers were declared (after a reconnect, or when a publish
        showed that something was deleted under us)."""
        if queue is None:
            self._tiers.clear()
        else:
            for key in [k for k in self._tiers if k[0] == queue]:
                del self._tiers[key]

    def _type_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.config.queue_type.value}

    def main_queue_arguments(self, names: QueueNames) -> dict[str, Any]:
        """Arguments of the main queue: its type, and broker-side dead-lettering to `Q-dlq`
        (rejected messages; on quorum queues also the delivery limit)."""
        args = self._type_arguments()
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = names.dead_letter_queue
        if self.config.queue_type is QueueType.QUORUM and self.config.delivery_limit is not None:
            args["x-delivery-limit"] = self.config.delivery_limit
            # At-least-once dead-lettering needs reject-publish; without it the broker
            # silently falls back to at-most-once.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    async def declare(self, channel: AbstractChannel, queue: str) -> QueueNames:
        """Declare main queue, bindings, retry exchange and DLQ of `queue` (idempotent)."""
        names = self.config.names(queue)
        await self._queue(channel, names.dead_letter_queue, self._type_arguments())
        await self._queue(channel, queue, self.main_queue_arguments(names))
        if self.config.exchange:
            await self._exchange(channel, self.config.exchange, self.config.exchange_type)
            for key in self.config.binding_keys or [queue]:
                await channel.queue_bind(queue, self.config.exchange, routing_key=key)
        if self.config.enable_delayed_retry:
            await self._exchange(channel, names.retry_exchange, "direct")
        self.forget(queue)
        return names

    async def retry_queue(self, channel: AbstractChannel, names: QueueNames, delay_ms: int) -> str:
        """Make sure the retry queue of a delay tier exists and is bound; returns its name.

        One queue per tier, each with a queue-level TTL, so a short delay never waits behind
        a long one (per-message TTL only expires at the head of a queue).
        """
        key = (names.queue, delay_ms)
        name = names.retry_queue(delay_ms)
        declared = self._tiers.get(key)
        now = time.monotonic()
        if declared is not None and now - declared < RETRY_QUEUE_REDECLARE_AFTER:
            return name
        pending = self._declaring.get(key)
        if pending is not None:
            # One declare per tier at a time: a burst of failures waits for the first one
            # (or, when the tier exists and is only being refreshed, does not wait at all).
            if declared is None:
                await asyncio.shield(pending)
            return name
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._declaring[key] = future
        try:
            await self._declare_tier(channel, names, name, delay_ms)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(None)
            self._tiers[key] = now
        finally:
            del self._declaring[key]
        return name

    async def _declare_tier(
        self, channel: AbstractChannel, names: QueueNames, name: str, delay_ms: int
    ) -> None:
        args = self._type_arguments()
        args["x-message-ttl"] = delay_ms
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = names.queue
        args["x-expires"] = delay_ms + RETRY_QUEUE_EXPIRES_MARGIN_MS
        # The exchange too (idempotent): after a publish failed because it was deleted,
        # the tiers are forgotten and this is what brings it back.
        await self._exchange(channel, names.retry_exchange, "direct")
        await self._queue(channel, name, args)
        await channel.queue_bind(name, names.retry_exchange, routing_key=name)

    async def _queue(self, channel: AbstractChannel, name: str, args: dict[str, Any]) -> None:
        try:
            await channel.queue_declare(name, durable=True, arguments=args)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(exc, f"queue {name!r}") from exc

    async def _exchange(self, channel: AbstractChannel, name: str, kind: str) -> None:
        try:
            await channel.exchange_declare(name, exchange_type=kind, durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(exc, f"exchange {name!r}") from exc
