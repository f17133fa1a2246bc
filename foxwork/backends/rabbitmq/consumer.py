"""`RabbitConsumer`: one queue's subscription, on a channel of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage

from ...errors import BackendError
from ...message import Message
from ..base import Consumer, Intake
from ._io import TRANSPORT_ERRORS, mapped

__all__ = ["ConsumerHost", "RabbitConsumer", "is_suspect", "nack_quietly", "tag_of"]

logger = logging.getLogger("foxwork.backends.rabbitmq")

#: Deliveries checked out at a time while crash suspects come in (see `RabbitConsumer`).
CAREFUL_PREFETCH = 1


def is_suspect(message: Message[Any]) -> bool:
    """True for a message that may have killed a worker process: it came back without
    being settled (`came_back_unsettled`, a quorum queue's `x-delivery-count`)."""
    return message.came_back_unsettled or message.delivery_count > 0


class ConsumerHost(Protocol):
    """What a `RabbitConsumer` needs from the backend that made it, and nothing more."""

    def open_channel(self) -> AbstractChannel:
        """A new channel on the live connection, to be awaited (opened) by the consumer.
        Raises `ConnectionLost` when there is no connection."""

    def next_consumer_tag(self, queue: str) -> str | None:
        """The consumer tag of the next subscription to `queue` (None: the broker's)."""

    def track_acks(
        self, channel: RawChannel, prefetch: int, *, replacing: RawChannel | None
    ) -> None:
        """Settle the deliveries of `channel` from now on (acks coalesced), no longer
        those of `replacing`. Called before the subscription, so none is missed."""

    def delivered(self, delivered: DeliveredMessage) -> None:
        """Register a delivery, in arrival order, before anything can settle it."""

    def message_of(self, delivered: DeliveredMessage, queue: str) -> Message[Any]:
        """The `Message` of a delivery from `queue`, settled by the backend."""

    async def nack(self, channel: RawChannel, tag: int, *, requeue: bool) -> None:
        """Nack a delivery of `channel`. Raises a transport error when the channel died."""

    async def declare(self, queue: str) -> None:
        """Declare the topology of `queue` again (it may have been deleted)."""

    async def discard_channel(self, channel: AbstractChannel, raw: RawChannel | None) -> None:
        """Close a channel whose subscription failed or was cancelled half-way."""

    async def stop_restoring(self, consumer: RabbitConsumer) -> None:
        """Stop re-establishing `consumer` (it is being cancelled)."""

    def retire(self, consumer: RabbitConsumer, channel: RawChannel | None) -> None:
        """Forget a cancelled consumer; close its channel once what it received is settled."""


class RabbitConsumer(Consumer):
    """One queue's subscription on its own channel (prefetch is per channel).

    A crash redelivers every message its process had checked out, and on a quorum queue
    each of those deliveries counts towards the delivery limit, the innocent ones too. So
    the consumer is careful with suspects (`is_suspect`): it subscribes with a prefetch of
    one (`CAREFUL_PREFETCH`) and takes the full prefetch only once a delivery that is no
    suspect arrives; a suspect arriving at full prefetch brings it back to one. With one
    message checked out, a message that kills the process is the only one the broker
    counts. (RabbitMQ applies `basic.qos` to consumers created after it: each change is
    `basic.cancel`, `basic.qos`, `basic.consume` on the same channel, made while the
    delivery that asks for it is held, so none is lost.)

    Classic queues keep the full prefetch: there `RetryMiddleware` counts a delivery that
    came back, and after an unclean broker restart RabbitMQ marks every recovered message
    redelivered, which one message at a time would crawl through.

    Args:
        host: the backend's side of the consumer (`ConsumerHost`).
        queue: the queue to consume.
        intake: where deliveries go.
        prefetch: deliveries unsettled at a time.
        isolate_suspects: subscribe carefully while crash suspects come in (quorum queues).
    """

    def __init__(
        self,
        host: ConsumerHost,
        queue: str,
        intake: Intake,
        prefetch: int,
        *,
        isolate_suspects: bool,
    ) -> None:
        self.queue = queue
        self._host = host
        self._intake = intake
        self._prefetch = prefetch
        # Deliveries the pool had no room for yet, in arrival order (`message.raw` is the
        # delivery); `_hand_over` hands them over as slots free up.
        self._buffer: asyncio.Queue[Message[Any]] = asyncio.Queue()
        self._channel: RawChannel | None = None
        self._tag: str | None = None
        self._cancelled = False
        self._hand_over_task: asyncio.Task[None] | None = None
        # Quorum queues count every delivery that comes back towards the delivery limit:
        # there the consumer isolates suspects. Subscribed with CAREFUL_PREFETCH (True) or
        # the full prefetch.
        self._isolates = isolate_suspects
        self._careful = self._isolates

    @property
    def active(self) -> bool:
        channel = self._channel
        hand_over = self._hand_over_task
        return (
            not self._cancelled
            and channel is not None
            and not channel.is_closed
            and self._tag in getattr(channel, "consumers", ())
            # Without its hand-over, deliveries the pool has no room for yet pile up unseen.
            and hand_over is not None
            and not hand_over.done()
        )

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._cancelled

    async def start(self) -> None:
        channel = self._host.open_channel()
        raw: RawChannel | None = None
        try:
            async with mapped(f"consuming {self.queue!r}"):
                await channel
                # Careful from the start: after a crash or a reconnect the suspects come
                # first (see the class docstring).
                self._careful = self._isolates
                await channel.set_qos(
                    prefetch_count=CAREFUL_PREFETCH if self._careful else self._prefetch
                )
                raw = await channel.get_underlay_channel()
                raw.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
                # Before consuming: the first delivery may be handled before consume() returns.
                self._host.track_acks(raw, self._prefetch, replacing=self._channel)
                tag = self._host.next_consumer_tag(self.queue)
                ok = await raw.basic_consume(self.queue, self._on_delivery, consumer_tag=tag)
        except BaseException:
            # Failed or cancelled half-way (a restore that was stopped): the channel
            # opened so far is closed, or a subscription made on it would keep taking
            # deliveries that nobody settles.
            await self._host.discard_channel(channel, raw)
            raise
        self._channel = raw
        self._tag = ok.consumer_tag
        if self._hand_over_task is None or self._hand_over_task.done():
            self._hand_over_task = asyncio.create_task(
                self._hand_over(), name=f"foxwork-intake-{self.queue}"
            )

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        # aiormq runs this in a task per delivery, started in the order the deliveries
        # arrived, and this first step never waits: tags are registered in order.
        host = self._host
        host.delivered(delivered)
        if self._cancelled:
            await nack_quietly(host, delivered)
            return
        message = host.message_of(delivered, self.queue)
        # Straight into the pool when it has room and nothing waits before this delivery
        # (the processing runs in the pool's own task, never in aiormq's); otherwise in
        # order through the buffer, as is a delivery that changes the prefetch (`_hand_over`
        # does that before handing it over).
        if (
            self._buffer.empty()
            and self._careful == self._suspect(message)
            and self._intake.try_dispatch(message)
        ):
            return
        self._buffer.put_nowait(message)

    async def _hand_over(self) -> None:
        while True:
            message = await self._buffer.get()
            delivered: DeliveredMessage = message.raw
            if delivered.channel.is_closed:
                continue  # its channel died: the broker redelivers it
            try:
                await self._set_careful(self._suspect(message), delivered.channel)
                await self._intake.dispatch(message)
            except BaseException as exc:
                if message.worker is None and not message.settled:
                    await nack_quietly(self._host, delivered)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                # The hand-over ends here: `active` turns false, and whoever watches it (the
                # resilient backend's watchdog) replaces this consumer.
                logger.exception("the hand-over of the consumer of %r failed", self.queue)
                return

    def _suspect(self, message: Message[Any]) -> bool:
        return self._isolates and is_suspect(message)

    async def _set_careful(self, careful: bool, channel: RawChannel) -> None:
        """Subscribe again with the prefetch of careful (or normal) mode, if it changes.

        Called while a delivery of the channel is held unsettled: from careful mode its one
        delivery fills the window, so the broker has nothing in flight to this subscription
        when it is cancelled (and deliveries sent before the `basic.cancel-ok` still reach
        `_on_delivery`, which aiormq calls in frame order).
        """
        if careful == self._careful or self._cancelled or channel is not self._channel:
            return
        prefetch = CAREFUL_PREFETCH if careful else self._prefetch
        tag = self._tag
        try:
            async with mapped(f"changing the prefetch of {self.queue!r} to {prefetch}"):
                if tag is not None:
                    await channel.basic_cancel(tag)
                await channel.basic_qos(prefetch_count=prefetch)
                ok = await channel.basic_consume(
                    self.queue,
                    self._on_delivery,
                    consumer_tag=self._host.next_consumer_tag(self.queue),
                )
        except BackendError as exc:
            # The channel is gone: the watchdog or the reconnect subscribes again.
            logger.warning("%s", exc)
            return
        self._careful = careful
        self._tag = ok.consumer_tag
        if self._cancelled:
            # cancel() ran while this subscribed again: the new subscription goes too.
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                await channel.basic_cancel(ok.consumer_tag, timeout=5)
        logger.info(
            "consumer of %r: prefetch %d (%s)",
            self.queue,
            prefetch,
            "a delivery came back unsettled: one message at a time"
            if careful
            else "no more redelivered messages",
        )

    def _on_broker_cancel(self, frame: Any) -> None:
        if frame.consumer_tag != self._tag or self._cancelled:
            return
        # aiormq has dropped the subscription: `active` is false from here on.
        logger.warning(
            "the broker cancelled the consumer of %r (queue deleted or its node down)",
            self.queue,
        )
        if self.on_gone is not None:
            self.on_gone(self)

    async def resubscribe(self) -> None:
        """Declare the queue again and subscribe on a new channel, in place (what the
        backend's recovery does after the broker cancelled this consumer)."""
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await self._channel.close()
        await self._host.declare(self.queue)
        await self.start()

    def _drain_buffer_quietly(self) -> list[DeliveredMessage]:
        pending = []
        while not self._buffer.empty():
            pending.append(self._buffer.get_nowait().raw)
        return pending

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        channel, tag = self._channel, self._tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                await channel.basic_cancel(tag, timeout=5)
        await self._host.stop_restoring(self)
        task = self._hand_over_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        # Received but never handed to the pool: straight back to the queue.
        for delivered in self._drain_buffer_quietly():
            await nack_quietly(self._host, delivered)
        # The messages still in the pool settle on the channel: it closes after them.
        self._host.retire(self, channel)


def tag_of(delivered: DeliveredMessage) -> int:
    delivery: Any = delivered.delivery
    tag: int = delivery.delivery_tag
    return tag


async def nack_quietly(host: ConsumerHost, delivered: DeliveredMessage) -> None:
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await host.nack(delivered.channel, tag_of(delivered), requeue=True)
