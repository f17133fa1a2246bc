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

A queue attached passively (`TopologyMode.PASSIVE`) must exist: it is only checked, never
declared or bound, and its own dead-letter settings are not relied on (the backend
dead-letters what it would reject by a confirmed copy to `Q-dlq`). `Q-dlq`, the retry
exchange and the retry queues are declared as usual.

`Topology.plan(queue)` lists what `declare` does, one `Declaration` per object, in order;
`foxwork topology plan` prints it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import time
from collections.abc import Mapping
from typing import Any, Literal

import aiormq
from aiormq.abc import AbstractChannel
from yarl import URL

from ...errors import TopologyConflict
from .config import QueueNames, QueueType, RabbitMQConsumerConfig

__all__ = ["Declaration", "Topology", "missing_queue", "policy_command", "vhost_of"]

#: Retry queues delete themselves after this long unused (ms) on top of their TTL, so
#: delay tiers that are no longer used do not pile up.
RETRY_QUEUE_EXPIRES_MARGIN_MS = 600_000
#: A retry tier is declared again (which resets its expiry) when older than this (s).
RETRY_QUEUE_REDECLARE_AFTER = 60.0

#: Characters with a meaning in a policy pattern (a regular expression) that a queue name
#: may hold: escaped, so the pattern matches the one queue.
_REGEX_SPECIAL = re.compile(r"[.^$*+?()\[\]{}|\\]")

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']+)'"
    r".*?: received (?P<received>.+?) but current is (?P<current>.+)$"
)


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names ("/" when it names none)."""
    path = URL(url).path
    return path[1:] if len(path) > 1 else "/"


def _conflict(
    exc: aiormq.exceptions.ChannelPreconditionFailed, what: str, *, main: bool = False
) -> TopologyConflict:
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
    if main:
        fix += (
            f"; or attach to it as it is, with topology='passive' (`foxwork topology plan "
            f"--queue {name} --topology passive` shows what foxwork then declares, and the "
            "rabbitmqctl set_policy that gives it dead-lettering without deleting it)"
        )
    return TopologyConflict(
        f"{kind} '{name}' already exists with {arg} = {match['current'].strip()}, but foxwork "
        f"declares it with {arg} = {match['received'].strip()}: {fix}"
    )


def missing_queue(queue: str, vhost: str) -> TopologyConflict:
    """The error of a passive queue that does not exist."""
    return TopologyConflict(
        f"queue {queue!r} does not exist in vhost {vhost!r}, and foxwork attaches to it "
        "passively (topology='passive'), never creating it: check the name, create the "
        "queue first (or start the application that declares it), or use "
        "topology='declare' to let foxwork declare it"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Declaration:
    """One object of a queue's topology, as foxwork declares it.

    Attributes:
        kind: "queue", "exchange" or "binding".
        name: the queue or exchange (a binding: its queue).
        arguments: a queue's arguments.
        exchange_type: an exchange's type.
        exchange: a binding's exchange.
        routing_key: a binding's routing key.
        passive: the object must exist and is only checked, never declared.
        main: the queue consumed (not its dead-letter queue).
    """

    kind: Literal["queue", "exchange", "binding"]
    name: str
    arguments: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    exchange_type: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    passive: bool = False
    main: bool = False

    def describe(self) -> str:
        """One line saying what this is."""
        if self.kind == "binding":
            return (
                f"binding  exchange {self.exchange!r} -> queue {self.name!r}, "
                f"routing key {self.routing_key!r}"
            )
        if self.kind == "exchange":
            return f"exchange {self.name!r} ({self.exchange_type}, durable)"
        if self.passive:
            return f"queue    {self.name!r} (must exist: attached passively, never declared)"
        arguments = json.dumps(dict(self.arguments), sort_keys=True)
        return f"queue    {self.name!r} (durable, arguments {arguments})"


def _escape(name: str) -> str:
    return _REGEX_SPECIAL.sub(lambda match: "\\" + match[0], name)


def policy_command(queue: str, arguments: Mapping[str, Any], vhost: str) -> str:
    """The `rabbitmqctl set_policy` command that gives an existing `queue` the dead-letter
    settings (and delivery limit) of foxwork's main queue `arguments`, as policy keys."""
    definition = {
        key.removeprefix("x-"): value for key, value in arguments.items() if key != "x-queue-type"
    }
    argv = [
        "rabbitmqctl",
        "set_policy",
        "-p",
        vhost,
        f"foxwork-{queue}",
        f"^{_escape(queue)}$",
        json.dumps(definition, sort_keys=True, separators=(",", ":")),
        "--apply-to",
        "queues",
    ]
    return shlex.join(argv)


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

    def _type_arguments(self, queue: str) -> dict[str, Any]:
        return {"x-queue-type": self.config.settings_for(queue).queue_type.value}

    def main_queue_arguments(self, names: QueueNames) -> dict[str, Any]:
        """Arguments of the main queue: its type, and broker-side dead-lettering to `Q-dlq`
        (rejected messages; on quorum queues also the delivery limit)."""
        settings = self.config.settings_for(names.queue)
        args = self._type_arguments(names.queue)
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = names.dead_letter_queue
        if settings.queue_type is QueueType.QUORUM and settings.delivery_limit is not None:
            args["x-delivery-limit"] = settings.delivery_limit
            # At-least-once dead-lettering needs reject-publish; without it the broker
            # silently falls back to at-most-once.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    def plan(self, queue: str) -> list[Declaration]:
        """What `declare` declares for `queue`, in order (retry queues, declared as
        failures need them, are not listed). A passive queue is checked first, so a
        missing one stops the declaration before anything was declared."""
        settings = self.config.settings_for(queue)
        names = self.config.names(queue)
        dlq = Declaration("queue", names.dead_letter_queue, arguments=self._type_arguments(queue))
        if settings.passive:
            steps = [Declaration("queue", queue, passive=True, main=True), dlq]
        else:
            steps = [
                dlq,
                Declaration("queue", queue, arguments=self.main_queue_arguments(names), main=True),
            ]
            if settings.exchange:
                steps.append(
                    Declaration("exchange", settings.exchange, exchange_type=settings.exchange_type)
                )
                steps += [
                    Declaration("binding", queue, exchange=settings.exchange, routing_key=key)
                    for key in settings.binding_keys
                ]
        if self.config.enable_delayed_retry:
            steps.append(Declaration("exchange", names.retry_exchange, exchange_type="direct"))
        return steps

    async def declare(
        self, channel: AbstractChannel, queue: str, *, vhost: str = "/"
    ) -> QueueNames:
        """Declare main queue, bindings, retry exchange and DLQ of `queue` (idempotent);
        a passive queue is checked instead (`vhost` names where, in the error)."""
        for step in self.plan(queue):
            await self.apply(channel, step, vhost=vhost)
        self.forget(queue)
        return self.config.names(queue)

    async def apply(self, channel: AbstractChannel, step: Declaration, *, vhost: str = "/") -> None:
        """Declare (or, passive, check) one object.

        Raises:
            TopologyConflict: the object exists with other arguments, or a passive queue
                does not exist. The broker closed `channel`.
        """
        if step.kind == "binding":
            assert step.exchange is not None and step.routing_key is not None
            await channel.queue_bind(step.name, step.exchange, routing_key=step.routing_key)
        elif step.kind == "exchange":
            await self._exchange(channel, step.name, step.exchange_type or "direct")
        elif step.passive:
            try:
                await channel.queue_declare(step.name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise missing_queue(step.name, vhost) from exc
        else:
            await self._queue(channel, step.name, dict(step.arguments), main=step.main)

    def declared_retry_queue(self, names: QueueNames, delay_ms: int) -> str | None:
        """The retry queue of a delay tier if it is declared and not due for a refresh (no
        await: a retry copy asks this first), else None (`retry_queue` declares it)."""
        declared = self._tiers.get((names.queue, delay_ms))
        if declared is not None and time.monotonic() - declared < RETRY_QUEUE_REDECLARE_AFTER:
            return names.retry_queue(delay_ms)
        return None

    async def retry_queue(self, channel: AbstractChannel, names: QueueNames, delay_ms: int) -> str:
        """Make sure the retry queue of a delay tier exists and is bound; returns its name.

        One queue per tier, each with a queue-level TTL, so a short delay never waits behind
        a long one (per-message TTL only expires at the head of a queue).
        """
        known = self.declared_retry_queue(names, delay_ms)
        if known is not None:
            return known
        key = (names.queue, delay_ms)
        name = names.retry_queue(delay_ms)
        declared = self._tiers.get(key)
        now = time.monotonic()
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
        args = self._type_arguments(names.queue)
        args["x-message-ttl"] = delay_ms
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = names.queue
        args["x-expires"] = delay_ms + RETRY_QUEUE_EXPIRES_MARGIN_MS
        # The exchange too (idempotent): after a publish failed because it was deleted,
        # the tiers are forgotten and this is what brings it back.
        await self._exchange(channel, names.retry_exchange, "direct")
        await self._queue(channel, name, args)
        await channel.queue_bind(name, names.retry_exchange, routing_key=name)

    async def _queue(
        self, channel: AbstractChannel, name: str, args: dict[str, Any], *, main: bool = False
    ) -> None:
        try:
            await channel.queue_declare(name, durable=True, arguments=args)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(exc, f"queue {name!r}", main=main) from exc

    async def _exchange(self, channel: AbstractChannel, name: str, kind: str) -> None:
        try:
            await channel.exchange_declare(name, exchange_type=kind, durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _conflict(exc, f"exchange {name!r}") from exc
