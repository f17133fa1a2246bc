"""`RabbitMQBackend`: consume, publish with confirms, settle, on a plain aio-pika connection.

The connection is a plain one, not aio-pika's robust connection: reconnecting is
`ResilientBackend`'s job, and two reconnect loops would fight over one connection.
aio-pika and aiormq exceptions never leave this package: `_mapped()` turns them into
`BackendError` subclasses with the original chained (`_io.py`). Each consumed queue
has a channel of its own (`consumer.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import struct
from collections.abc import Awaitable
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ... import wire
from ..._redact import redact_url
from ..._turnstile import Turnstile
from ...errors import BackendError, ConnectionLost, PublishNotConfirmed, TopologyConflict
from ...message import Message, MessageProperties
from .._recovery import Restorer
from ..base import Backend, Consumer, Intake, copy_properties, retry_properties
from ._io import TRANSPORT_ERRORS, mapped, settle_on
from .acks import AckCoalescer
from .config import QueueNames, QueueType, RabbitMQConsumerConfig, UrlOrder
from .connection import connect_first
from .consumer import ConsumerHost, RabbitConsumer, tag_of
from .convert import connection_user, copyable_user_id, to_amqp_properties, to_message
from .publishing import (
    REFUSALS,
    REFUSED_COPY_LIMIT,
    CopyRefused,
    PublisherChannels,
    RefusedCopies,
)
from .topology import Topology, vhost_of

__all__ = ["RabbitMQBackend"]

#: Ids of messages put back by this backend that are remembered (see `took_back`).
HANDED_BACK_MEMORY = 10_000

logger = logging.getLogger("foxwork.backends.rabbitmq")

#: Seconds `close()` waits for acks not yet written before it closes the connection.
ACK_FLUSH_TIMEOUT = 5.0


class RabbitMQBackend(Backend):
    """Consumes RabbitMQ queues with manual acknowledgement and prefetch.

    Args:
        config: a `RabbitMQConsumerConfig`; or pass its fields as keyword arguments.

    Example:
        backend = RabbitMQBackend(url="amqp://guest:guest@127.0.0.1/", queue="orders")
        await pool.run(backend)
    """

    def __init__(self, config: RabbitMQConsumerConfig | None = None, **fields: Any) -> None:
        if config is None:
            config = RabbitMQConsumerConfig(**fields)
        elif fields:
            config = config.model_copy(update=fields)
        self.config = config
        self.queues = config.queues
        self.topology = Topology(config)
        self._connection: AbstractConnection | None = None
        self._url: str | None = None
        self._publishers = PublisherChannels(self._open_publisher_channel)
        # The topology names of each queue (the config does not change), and the user the
        # connection logs in as: asked for every copy published.
        self._names: dict[str, QueueNames] = {}
        self._user = connection_user("")
        self._refused_copies = RefusedCopies()
        # Exchanges known to exist (see `_check_exchange`), and the publishes waiting for
        # a check, first come, first served.
        self._exchanges: set[str] = set()
        self._exchange_checks = Turnstile()
        # Ids of messages this backend put back itself (nack with requeue), oldest first.
        self._handed_back: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Why a message of a passive queue is about to be rejected (see `_dead_letter_rejected`).
        self._rejections: dict[str, BaseException] = {}
        # The topology channel is opened once, however many callers need it at once.
        self._channel_opening = asyncio.Lock()
        self._topology_channel: AbstractChannel | None = None
        # That channel and its underlay, once asked for.
        self._topology_raw: tuple[AbstractChannel, RawChannel] | None = None
        # The channel of `queue_depth`'s passive declares, and the sample being taken.
        self._depth_channel: AbstractChannel | None = None
        self._depth_sampling = asyncio.Lock()
        self._consumers: list[RabbitConsumer] = []
        #: Re-establishes consumers the broker cancelled, unless a ResilientBackend took
        #: their recovery over (see `Consumer.on_gone`).
        self._restorer = Restorer()
        self._host: ConsumerHost = _Host(self)
        #: The ack coalescer of each consumer channel (see `acks.py`).
        self._acks: dict[RawChannel, AckCoalescer] = {}
        #: Closing the channels of cancelled consumers, once their messages are settled.
        self._retiring: set[asyncio.Task[None]] = set()
        # Dropped connections being closed (see _drop): not cancelled by a reconnect.
        self._dropping: set[asyncio.Task[None]] = set()
        self._tag_counter = 0
        self._closing = False
        #: Settlements that could not reach the broker because the channel had died (the
        #: broker redelivers those messages).
        self.settle_failures = 0

    def __repr__(self) -> str:
        url = redact_url(self._url) if self._url else None
        return (
            f"<RabbitMQBackend queues={list(self.queues)} url={url!r} "
            f"connected={self.is_connected}>"
        )

    # -- connection ------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    @property
    def url(self) -> str | None:
        """The URL of the node connected to, redacted."""
        return redact_url(self._url) if self._url else None

    def _ordered_urls(self) -> list[str]:
        urls = list(self.config.urls)
        if self.config.url_order is UrlOrder.SHUFFLE:
            random.shuffle(urls)
        return urls

    async def connect(self) -> None:
        if self.is_connected:
            return
        self._closing = False
        # Consumers of a dead connection are gone with it; whoever consumes subscribes again.
        stale, self._consumers = self._consumers, []
        for consumer in stale:
            await consumer.cancel()
        await self._restorer.stop()
        await self._stop_retiring()
        self._acks.clear()
        if self._connection is not None:  # closed or dying, yet not reported lost
            self._drop(self._connection)
            self._connection = None
        connection, url = await connect_first(
            self._ordered_urls(),
            self.config,
            connection_name=self.config.connection_name or "foxwork",
            failure="cannot connect to RabbitMQ: ",
        )
        self._connection = connection
        self._url = url
        self._user = connection_user(url)
        self._publishers.forget()
        self._topology_channel = None
        self._depth_channel = None
        self.topology.forget()
        connection.close_callbacks.add(self._on_connection_closed)
        logger.info("connected to %s", redact_url(url))

    def _on_connection_closed(self, sender: Any, exc: BaseException | None = None) -> None:
        if self._closing or sender is not self._connection:
            return
        # Dead from now on, even before aio-pika marks it closed: connect() must not reuse it.
        dropped, self._connection = self._connection, None
        logger.warning("connection to %s lost: %s", redact_url(self._url or ""), exc)
        if dropped is not None:
            self._drop(dropped)
        self._notify_connection_lost(exc)

    def _drop(self, connection: AbstractConnection) -> None:
        # aio-pika marks a connection the broker dropped closed only once close() ran: left
        # alone, its finaliser creates that coroutine, and where no event loop runs (a
        # collection in another thread) nothing ever awaits it. Closed here, on the loop,
        # by a task a reconnect does not cancel.
        task = asyncio.get_running_loop().create_task(self._close_dropped(connection))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _close_dropped(self, connection: AbstractConnection) -> None:
        with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout):
                await connection.close()

    def _require_connection(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            raise ConnectionLost("not connected to RabbitMQ")
        return self._connection

    async def close(self) -> None:
        self._closing = True
        await self._restorer.stop()
        for consumer in list(self._consumers):
            await consumer.cancel()
        self._consumers.clear()
        await self._stop_retiring()
        # Acks handed over but not yet written go out before the connection closes (unless
        # the connection cannot take them: then the broker redelivers those messages).
        await self.flush(ACK_FLUSH_TIMEOUT)
        self._acks.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                await connection.close()
        if self._dropping:
            await asyncio.wait(list(self._dropping), timeout=self.config.connect_timeout)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every ack handed over so far has been written (or has failed)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for acks in list(self._acks.values()):
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not await acks.wait_idle(left):
                return False
        return True

    def _next_consumer_tag(self, queue: str) -> str | None:
        prefix = self.config.consumer_tag
        if prefix is None:
            return None
        self._tag_counter += 1
        return f"{prefix}-{queue}-{self._tag_counter}"

    # -- topology and consuming ------------------------------------------------------

    async def _open_channel(self, what: str = "opening a channel") -> AbstractChannel:
        """A new channel without publisher confirms."""
        connection = self._require_connection()
        async with mapped(what):
            return await connection.channel(publisher_confirms=False)

    async def _raw_topology_channel(self) -> RawChannel:
        channel = self._topology_channel
        known = self._topology_raw
        if known is not None and known[0] is channel and not known[1].is_closed:
            return known[1]  # every retry copy asks: no coroutine when it is open
        if channel is None or channel.is_closed:
            async with self._channel_opening:
                # Declarations that arrive together share the channel the first one opens.
                channel = self._topology_channel
                if channel is None or channel.is_closed:
                    channel = self._topology_channel = await self._open_channel()
        async with mapped("opening a channel"):
            raw = await channel.get_underlay_channel()
        self._topology_raw = (channel, raw)
        return raw

    async def declare(self, queue: str) -> None:
        raw = await self._raw_topology_channel()
        try:
            async with mapped(f"declaring the topology of {queue!r}"):
                await self.topology.declare(raw, queue, vhost=vhost_of(self._url or ""))
        except TopologyConflict:
            self._topology_channel = None  # the broker closed it
            raise

    async def queue_depth(self, queue: str) -> int | None:
        """The ready messages of `queue` (`message_count` of a passive declare): those
        waiting to be delivered; delivered but unacked ones, and retries waiting in their
        delay queues, are not counted. None when the queue does not exist.

        The declare goes on a channel of its own (a missing queue makes the broker close
        the channel it was asked on), kept open for the next sample.
        """
        async with self._depth_sampling:
            channel = self._depth_channel
            if channel is None or channel.is_closed:
                channel = self._depth_channel = await self._open_channel()
            try:
                async with (
                    mapped(f"asking for the depth of {queue!r}"),
                    asyncio.timeout(self.config.connect_timeout),
                ):
                    raw = await channel.get_underlay_channel()
                    declared = await raw.queue_declare(queue, passive=True)
            except BackendError as exc:
                self._depth_channel = None
                if not channel.is_closed:  # a timeout: the answer may still come on it
                    with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                        async with asyncio.timeout(self.config.connect_timeout):
                            await channel.close()
                if isinstance(exc.__cause__, aiormq.exceptions.ChannelNotFoundEntity):
                    return None
                raise
            return declared.message_count

    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        consumer = RabbitConsumer(
            self._host,
            queue,
            intake,
            prefetch,
            isolate_suspects=self.config.settings_for(queue).queue_type is QueueType.QUORUM,
        )
        consumer.on_gone = lambda _: self._restore(consumer)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    def _restore(self, consumer: RabbitConsumer) -> None:
        """Re-establish, in place, a consumer of this backend the broker cancelled."""
        self._restorer.restore(
            consumer,
            consumer.resubscribe,
            wanted=lambda: not consumer.cancelled and self.is_connected,
        )

    async def _discard_channel(self, channel: AbstractChannel, raw: RawChannel | None) -> None:
        """Close a consumer channel whose start-up failed or was cancelled half-way."""
        if raw is not None:
            self._acks.pop(raw, None)
        if channel.is_initialized and not channel.is_closed:
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                async with asyncio.timeout(self.config.connect_timeout):
                    await channel.close()

    def _retire(self, consumer: RabbitConsumer, channel: RawChannel | None) -> None:
        """Forget a cancelled consumer; its channel closes once what it received is settled.

        The channel stays open until then because the messages the pool is still working
        on are acked on it (closing it would make the broker deliver them again).
        """
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        if channel is None:
            return
        if channel.is_closed:
            self._acks.pop(channel, None)
            return
        task = asyncio.create_task(self._close_when_settled(channel))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_settled(self, channel: RawChannel) -> None:
        acks = self._acks.get(channel)
        try:
            if acks is not None:
                settled = asyncio.ensure_future(acks.wait_settled())
                closing = channel.closing
                try:
                    await asyncio.wait((settled, closing), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closing.cancel()
                    settled.cancel()
            if not channel.is_closed:
                with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                    async with asyncio.timeout(self.config.connect_timeout):
                        await channel.close()
        finally:
            if self._acks.get(channel) is acks:
                self._acks.pop(channel, None)

    async def _stop_retiring(self) -> None:
        # Closing the connection closes those channels anyway.
        tasks = list(self._retiring)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- publishing ------------------------------------------------------------------

    async def _open_publisher_channel(self) -> RawChannel:
        connection = self._require_connection()
        async with mapped("opening a publisher channel"):
            pika_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            return await pika_channel.get_underlay_channel()

    async def _check_exchange(self, exchange: str, where: str) -> None:
        """Make sure `exchange` exists before the first publish to it.

        A publish to a missing exchange makes RabbitMQ close the channel it went on, which
        fails every other publish in flight there (and a publish racing that close can cost
        the whole connection). So the first publish to an exchange asks for it first, with
        a passive declare on a channel of its own; an exchange found is remembered. While
        publishes wait for a check, every publish queues behind them (in order, they reach
        the broker in the order they were started): `_publish` calls this only then, or for
        an exchange not known yet.
        """
        async with self._exchange_checks.turn():
            if not exchange or exchange in self._exchanges:
                return
            channel = await self._open_channel(f"checking {where}")
            try:
                raw = await channel.get_underlay_channel()
                await raw.exchange_declare(exchange, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise PublishNotConfirmed(
                    f"publish to {where} failed: there is no exchange {exchange!r}"
                ) from exc
            except (*TRANSPORT_ERRORS, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise PublishNotConfirmed(f"publish to {where} not confirmed: {reason}") from exc
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                        await channel.close()
            self._exchanges.add(exchange)

    async def _publish(
        self, exchange: str, routing_key: str, body: bytes, properties: MessageProperties
    ) -> None:
        # Also behind the publishes waiting for a check, to any exchange: in their order.
        if self._exchange_checks.queued or (exchange and exchange not in self._exchanges):
            await self._check_exchange(exchange, _where(exchange, routing_key))
        try:
            # One publish per message id per channel: a basic.return is then charged to
            # exactly the publish it belongs to (see `publishing.py`).
            async with self._publishers.channel_for(properties.message_id) as channel:
                # wait=False: the channel's lock is held only while the frames are queued
                # for the connection's writer, not until the socket took them, so the
                # publishes of a channel pipeline instead of queueing behind each other's
                # write. The confirm is still awaited (the only answer that counts), and
                # a channel carries at most as many publishes as are awaited at once.
                # (`wait` is aiormq.Channel's, not in the abstract channel's signature.)
                confirm = await cast(aiormq.Channel, channel).basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=to_amqp_properties(properties),
                    mandatory=True,
                    timeout=self.config.publish_timeout,
                    wait=False,
                )
        except aiormq.exceptions.PublishError as exc:
            raise PublishNotConfirmed(
                f"unroutable: no queue is bound for {_where(exchange, routing_key)}"
            ) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._exchanges.discard(exchange)  # deleted since it was checked
            raise PublishNotConfirmed(
                f"publish to {_where(exchange, routing_key)} failed: {exc}"
            ) from exc
        except REFUSALS as exc:
            raise CopyRefused(
                f"the broker refused the publish to {_where(exchange, routing_key)}: {exc}"
            ) from exc
        except (BackendError, *TRANSPORT_ERRORS, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise PublishNotConfirmed(
                f"publish to {_where(exchange, routing_key)} not confirmed: {reason}"
            ) from exc
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            # pamqp cannot encode the message (a property or header value of a type AMQP
            # has no field for): it would fail the same way every time.
            raise CopyRefused(
                f"cannot encode the publish to {_where(exchange, routing_key)}: {exc}"
            ) from exc
        if not isinstance(confirm, Basic.Ack):
            raise PublishNotConfirmed(
                f"the broker refused the publish to {_where(exchange, routing_key)} (nack)"
            )

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        await self._publish(exchange, routing_key, body, properties or MessageProperties())

    async def _publish_copy(self, message: Message[Any], publish: Awaitable[None]) -> None:
        """Await the publish of a copy of `message`. A copy that was not confirmed delays
        its original's requeue a little more each time; one the broker refused
        `REFUSED_COPY_LIMIT` times has its original rejected instead (see `publishing.py`)."""
        try:
            await publish
        except PublishNotConfirmed as exc:
            if not self.is_connected:
                raise  # nothing to wait for: the original is redelivered after a reconnect
            count, pause = self._refused_copies.refused(message.id)
            if isinstance(exc, CopyRefused) and count >= REFUSED_COPY_LIMIT:
                exc.requeue = False
                if self.config.settings_for(message.queue).passive:
                    exc.args = (
                        f"{exc}; refused {count} times: rejected, and dead-lettered by a copy "
                        f"to {self._names_of(message.queue).dead_letter_queue!r} "
                        f"({message.queue!r} is attached passively)",
                    )
                    self._remember_rejection(message, exc)
                else:
                    exc.args = (
                        f"{exc}; refused {count} times: rejected, for the dead-letter "
                        f"exchange of {message.queue!r}",
                    )
                raise
            await asyncio.sleep(pause)
            raise
        self._refused_copies.confirmed(message.id)

    def _names_of(self, queue: str) -> QueueNames:
        names = self._names.get(queue)
        if names is None:
            names = self._names[queue] = self.config.names(queue)
        return names

    def _publishable(self, properties: MessageProperties) -> MessageProperties:
        """A copy's properties as this connection may publish them (a RabbitMQ rule)."""
        if properties.user_id is None:
            return properties
        user_id = copyable_user_id(properties.user_id, self._user)
        if user_id != properties.user_id:
            # The broker would refuse every copy: it checks user_id against the connection.
            properties = dataclasses.replace(properties, user_id=user_id)
        return properties

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        await self._publish_copy(message, self._publish_retry(message, delay=delay))

    async def _publish_retry(self, message: Message[Any], *, delay: float) -> None:
        names = self._names_of(message.queue)
        properties = self._publishable(retry_properties(message))
        if not self.config.enable_delayed_retry:
            await self._publish("", message.queue, message.body, properties)
            return
        delay_ms = wire.delay_tier_ms(delay)
        try:
            # A declared tier is known without a coroutine; a new one is declared.
            tier = self.topology.declared_retry_queue(names, delay_ms)
            if tier is None:
                raw = await self._raw_topology_channel()
                async with mapped(f"declaring the retry queue of {message.queue!r}"):
                    tier = await self.topology.retry_queue(raw, names, delay_ms)
            await self._publish(names.retry_exchange, tier, message.body, properties)
        except BackendError as exc:
            # Something was deleted under us, or the channel died: declare it all again
            # next time (a closed topology channel is replaced when next used; an open one
            # is kept, not dropped, or it would leak one channel per failed retry).
            self.topology.forget(message.queue)
            if isinstance(exc, PublishNotConfirmed):
                raise
            raise PublishNotConfirmed(f"retry copy of {message.id} not published: {exc}") from exc

    async def publish_dead_letter(self, message: Message[Any], headers: dict[str, Any]) -> None:
        names = self._names_of(message.queue)
        properties = self._publishable(copy_properties(message, headers))
        await self._publish_copy(
            message, self._publish("", names.dead_letter_queue, message.body, properties)
        )

    # -- settlement ------------------------------------------------------------------

    def _settle_failed(self, message: Message[Any], action: str, exc: BaseException) -> None:
        self.settle_failures += 1
        logger.info(
            "could not %s message %s (its channel is gone: %s); the broker redelivers it",
            action,
            message.id,
            type(exc).__name__,
        )

    def _start_acks(
        self, channel: RawChannel, prefetch: int, *, replacing: RawChannel | None
    ) -> None:
        if replacing is not None:
            self._acks.pop(replacing, None)
        self._acks[channel] = AckCoalescer(
            channel, prefetch=prefetch, settle_on=settle_on, on_failed=self._ack_failed
        )

    def _ack_failed(self, message: Message[Any], exc: BaseException) -> None:
        if isinstance(exc, TRANSPORT_ERRORS):
            self._settle_failed(message, "ack", exc)
        else:
            self.settle_failures += 1
            logger.warning(
                "could not ack message %s: %s: %s; the broker redelivers it",
                message.id,
                type(exc).__name__,
                exc,
            )

    async def _nack(self, channel: RawChannel, tag: int, *, requeue: bool) -> None:
        acks = self._acks.get(channel)
        if acks is None:
            await settle_on(channel, channel.basic_nack(tag, requeue=requeue))
        else:
            await acks.nack(tag, requeue=requeue)

    async def ack_message(self, message: Message[Any]) -> None:
        # Handed to the channel's coalescer, written with the other acks of the next few
        # loop turns (see `acks.py`); `flush()` and `close()` wait for it.
        channel: RawChannel = message.raw.channel
        acks = self._acks.get(channel)
        try:
            if acks is None:
                await settle_on(channel, channel.basic_ack(message.delivery_tag))
            else:
                acks.ack(message.delivery_tag, message)
        except TRANSPORT_ERRORS as exc:
            self._settle_failed(message, "ack", exc)

    def _remember_rejection(self, message: Message[Any], reason: BaseException) -> None:
        self._rejections[message.id] = reason
        if len(self._rejections) > HANDED_BACK_MEMORY:
            del self._rejections[next(iter(self._rejections))]

    async def _dead_letter_rejected(self, message: Message[Any]) -> None:
        """Reject a message of a passive queue: by a confirmed copy to `Q-dlq`, then an ack.

        The queue was declared by someone else: it may have no dead-letter exchange (the
        broker would drop the message) or one that leads elsewhere. So a rejection does what
        foxwork's own queues do with it, dead-lettering to `Q-dlq`, by a copy with the
        diagnostic headers. A copy that is not confirmed sends the message back to its queue
        after a pause that grows with each refusal: it is never dropped.
        """
        reason: BaseException | str = self._rejections.pop(message.id, None) or (
            f"rejected (nack without requeue); {message.queue!r} is attached passively, so "
            "foxwork dead-letters it itself instead of relying on the queue's dead-letter "
            "exchange"
        )
        headers = wire.dead_letter_headers(
            message.headers,
            routing_key=message.routing_key,
            exchange=message.exchange,
            queue=message.queue,
            reason=reason,
            final_attempt=message.attempt,
        )
        dead_letter_queue = self._names_of(message.queue).dead_letter_queue
        properties = self._publishable(copy_properties(message, headers))
        try:
            await self._publish("", dead_letter_queue, message.body, properties)
        except PublishNotConfirmed as exc:
            logger.warning(
                "message %s of passive queue %r goes back to its queue, not dropped: its "
                "dead-letter copy to %r was not confirmed: %s",
                message.id,
                message.queue,
                dead_letter_queue,
                exc,
            )
            if self.is_connected:
                _, pause = self._refused_copies.refused(message.id)
                await asyncio.sleep(pause)
            await self.nack_message(message, requeue=True)
            return
        self._refused_copies.confirmed(message.id)
        await self.ack_message(message)

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None:
        if not requeue and self.config.settings_for(message.queue).passive:
            await self._dead_letter_rejected(message)
            return
        try:
            await self._nack(message.raw.channel, message.delivery_tag, requeue=requeue)
        except TRANSPORT_ERRORS as exc:
            self._settle_failed(message, "nack", exc)
            return
        if requeue:
            self._handed_back[message.id] = None
            if len(self._handed_back) > HANDED_BACK_MEMORY:
                self._handed_back.popitem(last=False)

    def took_back(self, message: Message[Any]) -> bool:
        """Whether this redelivered `message` is one this backend put back itself (so it
        did not come back unsettled); each hand-back answers once."""
        if not self._handed_back:
            return False
        try:
            del self._handed_back[message.id]
        except KeyError:
            return False
        return True

    def health(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "connected": self.is_connected,
            "url": self.url,
            "consumers": {c.queue: c.active for c in self._consumers},
            "settle_failures": self.settle_failures,
        }


def _where(exchange: str, routing_key: str) -> str:
    """Where a publish went, as its errors say it."""
    return f"exchange {exchange!r} with routing key {routing_key!r}"


class _Host:
    """The backend as its consumers see it (`ConsumerHost`): a consumer reaches nothing of
    the backend beyond these."""

    __slots__ = ("_backend",)

    def __init__(self, backend: RabbitMQBackend) -> None:
        self._backend = backend

    def open_channel(self) -> AbstractChannel:
        return self._backend._require_connection().channel(publisher_confirms=False)

    def next_consumer_tag(self, queue: str) -> str | None:
        return self._backend._next_consumer_tag(queue)

    def track_acks(
        self, channel: RawChannel, prefetch: int, *, replacing: RawChannel | None
    ) -> None:
        self._backend._start_acks(channel, prefetch, replacing=replacing)

    def delivered(self, delivered: DeliveredMessage) -> None:
        acks = self._backend._acks.get(delivered.channel)
        if acks is not None:
            acks.delivered(tag_of(delivered))

    def message_of(self, delivered: DeliveredMessage, queue: str) -> Message[Any]:
        backend = self._backend
        message = to_message(delivered, queue, backend, backend.config.max_body_size)
        if message.redelivered and backend.took_back(message):
            message.came_back_unsettled = False
        return message

    async def nack(self, channel: RawChannel, tag: int, *, requeue: bool) -> None:
        await self._backend._nack(channel, tag, requeue=requeue)

    async def declare(self, queue: str) -> None:
        await self._backend.declare(queue)

    async def discard_channel(self, channel: AbstractChannel, raw: RawChannel | None) -> None:
        await self._backend._discard_channel(channel, raw)

    async def stop_restoring(self, consumer: RabbitConsumer) -> None:
        await self._backend._restorer.stop(consumer)

    def retire(self, consumer: RabbitConsumer, channel: RawChannel | None) -> None:
        self._backend._retire(consumer, channel)
