"""`RabbitMQBackend`: consume, publish with confirms, settle, on a plain aio-pika connection.

The connection is a plain one, not aio-pika's robust connection: reconnecting is
`ResilientBackend`'s job, and two reconnect loops would fight over one connection.
aio-pika and aiormq exceptions never leave this package: `_mapped()` turns them into
`BackendError` subclasses with the original chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from yarl import URL

from ... import wire
from ..._redact import redact_url
from ...errors import BackendError, ConnectionLost, PublishNotConfirmed, TopologyConflict
from ...message import Message, MessageProperties
from ..base import Backend, Consumer, Handler, copy_properties, offer_of
from .acks import AckCoalescer
from .config import RabbitMQConsumerConfig, UrlOrder
from .convert import DEATH_HEADERS, to_amqp_properties, to_message
from .topology import Topology

__all__ = ["RabbitMQBackend"]

logger = logging.getLogger("foxwork.backends.rabbitmq")

#: Seconds between attempts to re-establish a consumer the broker cancelled.
CONSUMER_RESTORE_DELAY = 1.0
#: Seconds `close()` waits for acks not yet written before it closes the connection.
ACK_FLUSH_TIMEOUT = 5.0

_TRANSPORT_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    RuntimeError,
)


@contextlib.asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    """Map aio-pika/aiormq errors raised while doing `what` to foxwork's error tree."""
    try:
        yield
    except BackendError:
        raise
    except aiormq.exceptions.ChannelClosed as exc:
        raise BackendError(f"{what} failed: the broker closed the channel: {exc}") from exc
    except (*_TRANSPORT_ERRORS, TimeoutError) as exc:
        raise ConnectionLost(f"{what} failed: {type(exc).__name__}: {exc}") from exc


class _RabbitConsumer(Consumer):
    """One queue's subscription on its own channel (prefetch is per channel)."""

    def __init__(
        self, backend: RabbitMQBackend, queue: str, handler: Handler, prefetch: int
    ) -> None:
        self.queue = queue
        self._backend = backend
        self._handler = handler
        self._offer = offer_of(handler)
        self._prefetch = prefetch
        # Deliveries the pool had no room for yet, in arrival order (`message.raw` is the
        # delivery); `_intake` hands them over as slots free up.
        self._buffer: asyncio.Queue[Message[Any]] = asyncio.Queue()
        self._channel: RawChannel | None = None
        self._tag: str | None = None
        self._cancelled = False
        self._intake_task: asyncio.Task[None] | None = None
        self._restore_task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        channel = self._channel
        return (
            not self._cancelled
            and channel is not None
            and not channel.is_closed
            and self._tag in getattr(channel, "consumers", ())
        )

    async def start(self) -> None:
        connection = self._backend._require_connection()
        async with _mapped(f"consuming {self.queue!r}"):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self._prefetch)
            raw = await channel.get_underlay_channel()
            raw.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            # Before consuming: the first delivery may be handled before consume() returns.
            self._backend._start_acks(raw, self._prefetch, replacing=self._channel)
            tag = self._backend._next_consumer_tag(self.queue)
            ok = await raw.basic_consume(self.queue, self._on_delivery, consumer_tag=tag)
        self._channel = raw
        self._tag = ok.consumer_tag
        if self._intake_task is None or self._intake_task.done():
            self._intake_task = asyncio.create_task(
                self._intake(), name=f"foxwork-intake-{self.queue}"
            )

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        # aiormq runs this in a task per delivery, started in the order the deliveries
        # arrived, and this first step never waits: tags are registered in order.
        backend = self._backend
        acks = backend._acks.get(delivered.channel)
        if acks is not None:
            acks.delivered(_tag_of(delivered))
        if self._cancelled:
            await _nack_quietly(backend, delivered)
            return
        message = to_message(delivered, self.queue, backend, backend.config.max_body_size)
        # Straight into the pool when it has room and nothing waits before this delivery
        # (the processing runs in the pool's own task, never in aiormq's); otherwise in
        # order through the buffer.
        if self._buffer.empty() and self._offer is not None and self._offer(message):
            return
        self._buffer.put_nowait(message)

    async def _intake(self) -> None:
        while True:
            message = await self._buffer.get()
            delivered: DeliveredMessage = message.raw
            if delivered.channel.is_closed:
                continue  # its channel died: the broker redelivers it
            try:
                await self._handler(message)
            except asyncio.CancelledError:
                if message.worker is None and not message.settled:
                    await _nack_quietly(self._backend, delivered)
                raise

    def _on_broker_cancel(self, frame: Any) -> None:
        if frame.consumer_tag != self._tag or self._cancelled:
            return
        logger.warning(
            "the broker cancelled the consumer of %r (queue deleted or its node down); "
            "re-establishing it",
            self.queue,
        )
        if self._restore_task is None or self._restore_task.done():
            self._restore_task = asyncio.create_task(self._restore())

    async def _restore(self) -> None:
        attempt = 0
        while not self._cancelled and self._backend.is_connected:
            attempt += 1
            try:
                if self._channel is not None and not self._channel.is_closed:
                    with contextlib.suppress(*_TRANSPORT_ERRORS):
                        await self._channel.close()
                await self._backend.declare(self.queue)
                await self.start()
                logger.info("consumer of %r re-established", self.queue)
                return
            except BackendError as exc:
                logger.warning(
                    "re-establishing the consumer of %r failed (attempt %d): %s",
                    self.queue,
                    attempt,
                    exc,
                )
                await asyncio.sleep(min(CONSUMER_RESTORE_DELAY * attempt, 30.0))

    async def restart(self) -> None:
        """Subscribe again on the current connection (after a reconnect)."""
        self._drain_buffer_quietly()
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
            with contextlib.suppress(*_TRANSPORT_ERRORS, TimeoutError):
                await channel.basic_cancel(tag, timeout=5)
        for task in (self._intake_task, self._restore_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        # Received but never handed to the pool: straight back to the queue.
        for delivered in self._drain_buffer_quietly():
            await _nack_quietly(self._backend, delivered)


def _tag_of(delivered: DeliveredMessage) -> int:
    delivery: Any = delivered.delivery
    tag: int = delivery.delivery_tag
    return tag


async def _nack_quietly(backend: RabbitMQBackend, delivered: DeliveredMessage) -> None:
    with contextlib.suppress(*_TRANSPORT_ERRORS):
        await backend._nack(delivered.channel, _tag_of(delivered), requeue=True)


async def _settle_on(channel: RawChannel, settlement: Awaitable[None]) -> None:
    """Await an ack or nack of `channel`, but give up when the channel closes first.

    aiormq hands frames to the connection's writer through a bounded queue. When the
    connection dies, its writer stops before the channels are marked closed; a settlement
    made in that moment can wait for room in the full queue forever, and with it the pool's
    slot (SIGKILL of a node, or a TCP reset while the writer is busy). While the queue has
    room (the usual case) the settlement is awaited as it is, at no extra cost.
    """
    if not channel.connection.write_queue.full():
        await settlement
        return
    task = asyncio.ensure_future(settlement)
    closing = channel.closing
    try:
        await asyncio.wait((task, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        raise aiormq.exceptions.ChannelInvalidStateError(
            f"channel {channel} closed before the settlement was sent"
        )
    task.result()


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
        self._publisher: RawChannel | None = None
        # The publisher and topology channels are opened once, however many callers need
        # them at the same moment.
        self._channel_opening = asyncio.Lock()
        self._topology_channel: AbstractChannel | None = None
        self._consumers: list[_RabbitConsumer] = []
        #: The ack coalescer of each consumer channel (see `acks.py`).
        self._acks: dict[RawChannel, AckCoalescer] = {}
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
        self._acks.clear()
        errors: list[str] = []
        for url in self._ordered_urls():
            try:
                connection = await aio_pika.connect(
                    URL(url).update_query(heartbeat=self.config.heartbeat),
                    timeout=self.config.connect_timeout,
                    ssl_context=self.config.ssl_context,
                    client_properties={"connection_name": self.config.connection_name or "foxwork"},
                )
            except (*_TRANSPORT_ERRORS, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                errors.append(f"{redact_url(url)}: {type(exc).__name__}: {reason}")
                continue
            self._connection = connection
            self._url = url
            self._publisher = None
            self._topology_channel = None
            self.topology.forget()
            connection.close_callbacks.add(self._on_connection_closed)
            logger.info("connected to %s", redact_url(url))
            return
        raise ConnectionLost(
            "cannot connect to RabbitMQ: " + "; ".join(redact_url(e) for e in errors)
        )

    def _on_connection_closed(self, sender: Any, exc: BaseException | None = None) -> None:
        if self._closing or sender is not self._connection:
            return
        # Dead from now on, even before aio-pika marks it closed: connect() must not reuse it.
        self._connection = None
        logger.warning("connection to %s lost: %s", redact_url(self._url or ""), exc)
        self._notify_connection_lost(exc)

    def _require_connection(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            raise ConnectionLost("not connected to RabbitMQ")
        return self._connection

    async def close(self) -> None:
        self._closing = True
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        # Acks handed over but not yet written go out before the connection closes (unless
        # the connection cannot take them: then the broker redelivers those messages).
        await self.flush(ACK_FLUSH_TIMEOUT)
        self._acks.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_TRANSPORT_ERRORS, TimeoutError):
                await connection.close()

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

    async def _raw_topology_channel(self) -> RawChannel:
        channel = self._topology_channel
        if channel is None or channel.is_closed:
            async with self._channel_opening:
                # Declarations that arrive together share the channel the first one opens.
                channel = self._topology_channel
                if channel is None or channel.is_closed:
                    connection = self._require_connection()
                    async with _mapped("opening a channel"):
                        channel = await connection.channel(publisher_confirms=False)
                    self._topology_channel = channel
        async with _mapped("opening a channel"):
            return await channel.get_underlay_channel()

    async def declare(self, queue: str) -> None:
        raw = await self._raw_topology_channel()
        try:
            async with _mapped(f"declaring the topology of {queue!r}"):
                await self.topology.declare(raw, queue)
        except TopologyConflict:
            self._topology_channel = None  # the broker closed it
            raise

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        consumer = _RabbitConsumer(self, queue, handler, prefetch)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    # -- publishing ------------------------------------------------------------------

    async def _raw_publisher(self) -> RawChannel:
        channel = self._publisher
        if channel is not None and not channel.is_closed:
            return channel
        async with self._channel_opening:
            # Publishes that arrive together while there is no open channel share the one
            # the first of them opens.
            channel = self._publisher
            if channel is None or channel.is_closed:
                connection = self._require_connection()
                async with _mapped("opening the publisher channel"):
                    pika_channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    channel = await pika_channel.get_underlay_channel()
                self._publisher = channel
            return channel

    async def _publish(
        self, exchange: str, routing_key: str, body: bytes, properties: MessageProperties
    ) -> None:
        where = f"exchange {exchange!r} with routing key {routing_key!r}"
        try:
            channel = await self._raw_publisher()
            confirm = await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=to_amqp_properties(properties),
                mandatory=True,
                timeout=self.config.publish_timeout,
            )
        except aiormq.exceptions.PublishError as exc:
            raise PublishNotConfirmed(f"unroutable: no queue is bound for {where}") from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise PublishNotConfirmed(f"publish to {where} failed: {exc}") from exc
        except (BackendError, *_TRANSPORT_ERRORS, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise PublishNotConfirmed(f"publish to {where} not confirmed: {reason}") from exc
        if not isinstance(confirm, Basic.Ack):
            raise PublishNotConfirmed(f"the broker refused the publish to {where} (nack)")

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        await self._publish(exchange, routing_key, body, properties or MessageProperties())

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        names = self.config.names(message.queue)
        headers = {k: v for k, v in message.headers.items() if k not in DEATH_HEADERS}
        headers = wire.retry_headers(
            headers, message.attempt, routing_key=message.routing_key, exchange=message.exchange
        )
        properties = copy_properties(message, headers)
        if not self.config.enable_delayed_retry:
            await self._publish("", message.queue, message.body, properties)
            return
        delay_ms = wire.delay_tier_ms(delay)
        try:
            raw = await self._raw_topology_channel()
            async with _mapped(f"declaring the retry queue of {message.queue!r}"):
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
        names = self.config.names(message.queue)
        properties = copy_properties(message, headers)
        await self._publish("", names.dead_letter_queue, message.body, properties)

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
            channel, prefetch=prefetch, settle_on=_settle_on, on_failed=self._ack_failed
        )

    def _ack_failed(self, message: Message[Any], exc: BaseException) -> None:
        if isinstance(exc, _TRANSPORT_ERRORS):
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
            await _settle_on(channel, channel.basic_nack(tag, requeue=requeue))
        else:
            await acks.nack(tag, requeue=requeue)

    async def ack_message(self, message: Message[Any]) -> None:
        # Handed to the channel's coalescer, written with the other acks of the next few
        # loop turns (see `acks.py`); `flush()` and `close()` wait for it.
        channel: RawChannel = message.raw.channel
        acks = self._acks.get(channel)
        try:
            if acks is None:
                await _settle_on(channel, channel.basic_ack(message.delivery_tag))
            else:
                acks.ack(message.delivery_tag, message)
        except _TRANSPORT_ERRORS as exc:
            self._settle_failed(message, "ack", exc)

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None:
        try:
            await self._nack(message.raw.channel, message.delivery_tag, requeue=requeue)
        except _TRANSPORT_ERRORS as exc:
            self._settle_failed(message, "nack", exc)

    def health(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "connected": self.is_connected,
            "url": self.url,
            "consumers": {c.queue: c.active for c in self._consumers},
            "settle_failures": self.settle_failures,
        }
