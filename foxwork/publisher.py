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
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import codec
from .message import MessageProperties
from .telemetry import inject_context

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["OutboundMessage", "PublishOutcome", "Publisher"]

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

    @property
    def confirmed(self) -> bool:
        return self.error is None


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

    Use `Publisher.connect(url)` for a publisher with a RabbitMQ connection of its own
    (reconnecting after a loss), closed by `close()` or `async with`.

    Example:
        async with await Publisher.connect("amqp://guest:guest@127.0.0.1/") as publisher:
            message_id = await publisher.publish({"sku": "A-1"}, routing_key="orders")
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._owns_backend = False

    @classmethod
    async def connect(cls, url: str | list[str], **settings: Any) -> Publisher:
        """A publisher with a connection of its own to RabbitMQ, declaring no queue.

        Args:
            url: an AMQP URL, or a list of cluster nodes' URLs.
            settings: other `RabbitMQConsumerConfig` fields (`publish_timeout`, ...).

        Raises:
            ConnectionLost: the broker cannot be reached.
        """
        from .backends.rabbitmq import RabbitMQBackend  # aio-pika only when used
        from .backends.resilient import ResilientBackend

        backend = ResilientBackend(RabbitMQBackend(url=url, queue=[], **settings))
        await backend.connect()
        publisher = cls(backend)
        publisher._owns_backend = True
        return publisher

    def __repr__(self) -> str:
        return f"<Publisher backend={self.backend!r}>"

    async def close(self) -> None:
        """Close the connection `Publisher.connect()` opened (a backend passed in is left
        alone)."""
        if self._owns_backend:
            await self.backend.close()

    async def __aenter__(self) -> Publisher:
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
    ) -> str:
        """Publish one message and wait for the broker's confirm; returns its message id.

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
                exchange, or no confirm within the publish timeout).
            ConnectionLost: not connected.
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

    async def _send(self, item: OutboundMessage) -> str:
        body, properties = outbound(item)
        await self.backend.publish(item.routing_key, body, properties, exchange=item.exchange)
        assert properties.message_id is not None
        return properties.message_id

    async def publish_many(
        self, items: Iterable[OutboundMessage], *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> list[PublishOutcome]:
        """Publish `items` with up to `max_in_flight` confirms awaited at once; returns one
        `PublishOutcome` per item, in order. One failure never stops the others, and
        nothing is raised for it: check `outcome.error`."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight!r} must be at least 1")
        slots = asyncio.Semaphore(max_in_flight)
        outcomes: list[PublishOutcome] = []

        async def send(index: int, item: OutboundMessage) -> None:
            try:
                await self._send(item)
            except Exception as exc:
                outcomes[index] = PublishOutcome(outcomes[index].message_id, exc)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            for item in items:
                if item.message_id is None:
                    item = dataclasses.replace(item, message_id=uuid.uuid4().hex)
                assert item.message_id is not None
                outcomes.append(PublishOutcome(item.message_id))
                await slots.acquire()
                group.create_task(send(len(outcomes) - 1, item))
        return outcomes
