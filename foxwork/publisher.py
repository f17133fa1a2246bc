"""`Publisher`: typed, confirmed publishing over any connected `Backend`.

A payload is encoded by its type (`codec.encode`): a pydantic model or a JSON-able value as
`application/json`, `str` as `text/plain; charset=utf-8`, `bytes` as
`application/octet-stream`. Every publish is mandatory and waits for the broker's confirm:
`publish()` returns the message id only once the broker took the message, and raises
`PublishNotConfirmed` (naming the exchange and routing key) when it did not: unroutable,
nacked, or a missing exchange. Each message carries the current W3C trace context in its
headers, so its consumer continues the trace.

`publish_many()` keeps up to `max_in_flight` publishes waiting for their confirms at once
and reports each message's outcome instead of raising.

A handler publishes downstream with `Message.publish()`, which builds its messages here
(`outbound`) with a message id derived from the inbound message.

With a spool (`Publisher(backend, spool=SpoolConfig(...))`), a message the broker cannot
take now (not connected, or no confirm within the publish timeout) is appended to a log on
local disk instead, fsynced, and `publish()` returns a `PublishReceipt` with
`spooled=True`; a drainer task replays the spool in order, one confirm at a time, while the
publisher is open and connected. Order: while the spool holds a message (or one is being
appended), every new publish goes to the spool too, behind it, so that the broker receives
messages in the order they were published. A message the broker refuses for what it is
(unroutable, nacked, a missing exchange) is not spooled: `PublishNotConfirmed` is raised
as without a spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import codec
from ._turnstile import Turnstile
from .errors import BackendError, ConnectionLost
from .message import MessageProperties
from .spool import Drainer, Spool, SpoolConfig, SpooledMessage
from .telemetry import inject_context

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["OutboundMessage", "PublishOutcome", "PublishReceipt", "Publisher"]

logger = logging.getLogger("foxwork.publisher")

#: Publishes of `publish_many()` waiting for their confirms at once.
DEFAULT_MAX_IN_FLIGHT = 1000
#: AMQP delivery modes.
_PERSISTENT, _TRANSIENT = 2, 1


@dataclasses.dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for `Publisher.publish_many()`; the fields are `publish()`'s arguments.

    Example:
        OutboundMessage({"sku": "A-1"}, routing_key="orders", priority=5)
    """

    payload: Any
    routing_key: str
    exchange: str = ""
    headers: Mapping[str, Any] | None = None
    message_id: str | None = None
    priority: int | None = None
    expiration: float | None = None
    persistent: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What became of one message of `publish_many()`.

    Attributes:
        message_id: the id it was (or would have been) published with.
        error: None when the broker confirmed it; otherwise why not (`PublishNotConfirmed`,
            `ConnectionLost`, or the `TypeError` of a payload that cannot be encoded).
    """

    message_id: str
    error: BaseException | None = None
    #: True when it went to the publisher's spool (durable on disk, sent later) instead of
    #: being confirmed by the broker now.
    spooled: bool = False

    @property
    def confirmed(self) -> bool:
        """Whether the broker confirmed it (a spooled message is not confirmed yet)."""
        return self.error is None and not self.spooled


class PublishReceipt(str):
    """What `Publisher.publish()` returns: the message id (it *is* the id, a `str`), and
    whether the message went to the spool instead of being confirmed by the broker now.

    Attributes:
        spooled: False when the broker confirmed the message; True when it is on disk in
            the publisher's spool, to be replayed once the broker is back.
    """

    __slots__ = ("spooled",)
    spooled: bool

    def __new__(cls, message_id: str, *, spooled: bool = False) -> PublishReceipt:
        receipt = super().__new__(cls, message_id)
        receipt.spooled = spooled
        return receipt

    @property
    def message_id(self) -> str:
        return str(self)

    @property
    def confirmed(self) -> bool:
        """Whether the broker confirmed it already."""
        return not self.spooled


def encode_payload(payload: Any) -> tuple[bytes, str]:
    """The body and content type of `payload`.

    Raises:
        TypeError: the payload cannot be encoded; the message names its type.
    """
    try:
        return codec.encode(payload)
    except (TypeError, ValueError) as exc:  # pydantic's serialisation errors are ValueErrors
        raise TypeError(
            f"cannot publish a payload of type {type(payload).__qualname__}: {exc}"
        ) from exc


def outbound(item: OutboundMessage) -> tuple[bytes, MessageProperties]:
    """The body and the complete properties of `item` (its `message_id` must be set), with
    the current trace context in its headers.

    Raises:
        TypeError: the payload cannot be encoded.
        ValueError: a priority or expiration AMQP cannot carry.
    """
    body, content_type = encode_payload(item.payload)
    if item.priority is not None and not 0 <= item.priority <= 255:
        raise ValueError(f"priority={item.priority!r} must be 0 to 255")
    expiration = None
    if item.expiration is not None:
        if not item.expiration >= 0:
            raise ValueError(f"expiration={item.expiration!r} must be 0 or more seconds")
        expiration = str(round(item.expiration * 1000))
    properties = MessageProperties(
        content_type=content_type,
        priority=item.priority,
        expiration=expiration,
        message_id=item.message_id,
        timestamp=datetime.now(UTC),
        headers=inject_context(dict(item.headers or {})),
        delivery_mode=_PERSISTENT if item.persistent else _TRANSIENT,
    )
    return body, properties


class Publisher:
    """Publishes messages with confirms, over any connected backend.

    Args:
        backend: a connected backend (`RabbitMQBackend`, `MemoryBackend`, or a
            `ResilientBackend` around one). The publisher does not close it.
        spool: keep what the broker cannot take now in a spool on local disk, and replay
            it in order once it can (see the module docstring). The spool is opened by
            `start()` (which `connect()`, `async with` and the first publish call) and
            closed by `close()`.

    Use `Publisher.connect(url)` for a publisher with a RabbitMQ connection of its own
    (reconnecting after a loss), closed by `close()` or `async with`.

    Example:
        async with await Publisher.connect("amqp://guest:guest@127.0.0.1/") as publisher:
            message_id = await publisher.publish({"sku": "A-1"}, routing_key="orders")
    """

    def __init__(self, backend: Backend, *, spool: SpoolConfig | None = None) -> None:
        self.backend = backend
        self.spool_config = spool
        #: The open spool, from `start()` to `close()`.
        self.spool: Spool | None = None
        self._drainer: Drainer | None = None
        self._starting = Turnstile()
        self._connecting: asyncio.Task[None] | None = None
        self._owns_backend = False
        self._closed = False

    @classmethod
    async def connect(
        cls, url: str | list[str], *, spool: SpoolConfig | None = None, **settings: Any
    ) -> Publisher:
        """A publisher with a connection of its own to RabbitMQ, declaring no queue.

        Args:
            url: an AMQP URL, or a list of cluster nodes' URLs.
            spool: a spool for what the broker cannot take now. With one, a broker that
                cannot be reached at first is not an error: messages are spooled while
                the connection is retried in the background.
            settings: other `RabbitMQConsumerConfig` fields (`publish_timeout`, ...).

        Raises:
            ConnectionLost: the broker cannot be reached (without a spool).
            SpoolLocked: another process has the spool open.
        """
        from .backends.rabbitmq import RabbitMQBackend  # aio-pika only when used
        from .backends.resilient import ResilientBackend

        backend = ResilientBackend(RabbitMQBackend(url=url, queue=[], **settings))
        publisher = cls(backend, spool=spool)
        publisher._owns_backend = True
        try:
            await backend.connect()
        except ConnectionLost as exc:
            if spool is None:
                raise
            logger.warning("the broker cannot be reached (%s): spooling until it can", exc)
            # The first attempt failed: connect() now retries forever, in the background.
            publisher._connecting = asyncio.get_running_loop().create_task(
                backend.connect(), name="foxwork-publisher-connect"
            )
        try:
            await publisher.start()
        except BaseException:
            await publisher.close()
            raise
        return publisher

    def __repr__(self) -> str:
        spool = f" spool={self.spool!r}" if self.spool is not None else ""
        return f"<Publisher backend={self.backend!r}{spool}>"

    async def start(self) -> None:
        """Open the spool and start draining what it holds (nothing to do without one).

        Raises:
            SpoolLocked: another process has the spool open.
        """
        if self.spool_config is None or (self.spool is not None and not self._starting.queued):
            return
        # Behind the publishes waiting for the spool to open, in the order they came.
        async with self._starting.turn():
            if self.spool is None:
                if self._closed:
                    raise ConnectionLost("this Publisher was closed; build a new one")
                spool = await Spool.open(self.spool_config)
                if spool.depth:
                    logger.info("the spool %s holds %d message(s)", spool.directory, spool.depth)
                self._drainer = Drainer(spool, self.backend)
                self._drainer.start()
                self.spool = spool

    async def close(self) -> None:
        """Stop the drainer and close the spool (what it holds stays on disk for the next
        publisher), and close the connection `Publisher.connect()` opened (a backend
        passed in is left alone)."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await self._connecting
            self._connecting = None
        if self._drainer is not None:
            await self._drainer.stop()
            self._drainer = None
        if self.spool is not None:
            await self.spool.close()
            self.spool = None
        if self._owns_backend:
            await self.backend.close()

    async def flush_spool(self) -> None:
        """Return once the spool is empty: every message it held was confirmed."""
        if self.spool is not None:
            await self.spool.wait_empty()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(
        self,
        payload: Any,
        *,
        routing_key: str,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
        expiration: float | None = None,
        persistent: bool = True,
    ) -> PublishReceipt:
        """Publish one message and wait for the broker's confirm; returns its message id
        (a `PublishReceipt`: with a spool, `receipt.spooled` says it was spooled instead).

        Args:
            payload: a pydantic model, a JSON-able value, `str` or `bytes`.
            routing_key: the queue's name on the default exchange, else the routing key.
            exchange: the exchange ("" is the default exchange).
            headers: AMQP headers (the trace context is added to a copy).
            message_id: the message id; a random one (UUID4 hex) when None.
            priority: 0 to 255, for priority queues.
            expiration: seconds the message may wait in a queue before the broker drops it.
            persistent: whether it survives a broker restart (on a durable queue).

        Raises:
            TypeError: the payload cannot be encoded (nothing was sent).
            PublishNotConfirmed: the broker did not confirm it (unroutable, nacked, missing
                exchange, or, without a spool, no confirm within the publish timeout).
            ConnectionLost: not connected (without a spool).
            SpoolFull: the spool holds `max_bytes` already.
        """
        item = OutboundMessage(
            payload,
            routing_key,
            exchange,
            headers,
            message_id or uuid.uuid4().hex,
            priority,
            expiration,
            persistent,
        )
        return await self._send(item)

    async def _send(self, item: OutboundMessage) -> PublishReceipt:
        body, properties = outbound(item)
        assert properties.message_id is not None
        if self.spool_config is None:
            await self.backend.publish(item.routing_key, body, properties, exchange=item.exchange)
            return PublishReceipt(properties.message_id)
        await self.start()
        assert self.spool is not None
        # Behind what the spool holds, or the broker would receive them out of order.
        if not self.spool.busy and self.backend.is_connected:
            try:
                await self.backend.publish(
                    item.routing_key, body, properties, exchange=item.exchange
                )
            except BackendError as exc:
                if not self._unreachable(exc):
                    raise
                logger.info("spooling message %s: %s", properties.message_id, exc)
            else:
                return PublishReceipt(properties.message_id)
        await self.spool.append(
            SpooledMessage(item.exchange, item.routing_key, body, properties, time.time())
        )
        return PublishReceipt(properties.message_id, spooled=True)

    def _unreachable(self, exc: BackendError) -> bool:
        """Whether `exc` says the broker cannot be reached now (spool the message), not
        that it refused the message (raise)."""
        if isinstance(exc, ConnectionLost) or not self.backend.is_connected:
            return True
        cause = exc.__cause__
        return isinstance(cause, TimeoutError | ConnectionError | BackendError)

    async def publish_many(
        self, items: Iterable[OutboundMessage], *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> list[PublishOutcome]:
        """Publish `items` with up to `max_in_flight` confirms awaited at once; returns one
        `PublishOutcome` per item, in order. One failure never stops the others, and
        nothing is raised for it: check `outcome.error` (and, with a spool,
        `outcome.spooled`)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight!r} must be at least 1")
        outcomes: list[PublishOutcome] = []
        pending = iter(items)
        workers = 0

        async def send(item: OutboundMessage) -> None:
            if item.message_id is None:
                item = dataclasses.replace(item, message_id=uuid.uuid4().hex)
            assert item.message_id is not None
            index = len(outcomes)
            outcomes.append(PublishOutcome(item.message_id))
            try:
                if (await self._send(item)).spooled:
                    outcomes[index] = PublishOutcome(item.message_id, spooled=True)
            except Exception as exc:
                outcomes[index] = PublishOutcome(item.message_id, exc)

        # Up to `max_in_flight` workers take the items in order, one at a time, each
        # starting the next worker before its first publish while there may be more: no
        # task, no semaphore per message.
        async def worker(group: asyncio.TaskGroup) -> None:
            nonlocal workers
            for item in pending:
                if workers < max_in_flight:
                    workers += 1
                    group.create_task(worker(group))
                await send(item)

        # Each worker's publish reaches the backend before the next worker starts: the
        # backend keeps publishes in the order they come, also those that wait for it to
        # open a channel or check an exchange.
        async with asyncio.TaskGroup() as group:
            workers = 1
            group.create_task(worker(group))
        return outcomes
