"""One delivery (`Message`) and its AMQP properties (`MessageProperties`).

A `Message` settles itself exactly once. The first of `ack()`, `nack()`, `reject()`,
`retry()` or `dead_letter()` wins; any later call logs a warning and does nothing, so a
double settlement can never close the channel with a second ack.

A handler publishes downstream with `message.publish()`: each publish is confirmed before it
returns, so before the message is acked; `ack()` also waits for downstream publishes still in
flight, and acks only when every one was confirmed (see `Message.publish`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from . import codec, wire
from .errors import BackendError, PoisonMessage, PublishNotConfirmed

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Message", "MessageProperties", "SettleState", "Settler"]

logger = logging.getLogger("foxwork.message")

P = TypeVar("P")


@dataclasses.dataclass(frozen=True, slots=True)
class MessageProperties:
    """AMQP basic properties of a message. Immutable; the `with_*` methods return copies.

    Example:
        props = MessageProperties().with_content_type("application/json").with_priority(5)
    """

    content_type: str | None = None
    content_encoding: str | None = None
    priority: int | None = None
    expiration: str | None = None
    message_type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    headers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: 2 = persistent (survives a broker restart), 1 = transient.
    delivery_mode: int = 2

    def with_content_type(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, content_type=value)

    def with_content_encoding(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, content_encoding=value)

    def with_priority(self, value: int | None) -> MessageProperties:
        return dataclasses.replace(self, priority=value)

    def with_expiration(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, expiration=value)

    def with_message_type(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, message_type=value)

    def with_user_id(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, user_id=value)

    def with_app_id(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, app_id=value)

    def with_cluster_id(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, cluster_id=value)

    def with_reply_to(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, reply_to=value)

    def with_correlation_id(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, correlation_id=value)

    def with_message_id(self, value: str | None) -> MessageProperties:
        return dataclasses.replace(self, message_id=value)

    def with_timestamp(self, value: datetime | None) -> MessageProperties:
        return dataclasses.replace(self, timestamp=value)

    def with_headers(self, value: Mapping[str, Any]) -> MessageProperties:
        return dataclasses.replace(self, headers=dict(value))

    def with_header(self, key: str, value: Any) -> MessageProperties:
        return dataclasses.replace(self, headers={**self.headers, key: value})

    def with_delivery_mode(self, value: int) -> MessageProperties:
        return dataclasses.replace(self, delivery_mode=value)


class SettleState(enum.Enum):
    """Where a delivery stands. Every state but PENDING is final."""

    PENDING = "pending"
    """Not settled yet."""
    ACKED = "acked"
    """Acknowledged: processed, dropped, or a duplicate."""
    REQUEUED = "requeued"
    """Negatively acknowledged with requeue: the broker delivers it again."""
    REJECTED = "rejected"
    """Negatively acknowledged without requeue: the broker discards or dead-letters it."""
    RETRIED = "retried"
    """A copy went to the retry exchange (confirmed), then the original was acked."""
    DEAD_LETTERED = "dead_lettered"
    """A copy went to the dead-letter queue (confirmed), then the original was acked."""


class Settler(Protocol):
    """What a backend provides to settle its deliveries. Implemented by every `Backend`.

    Each method is called at most once per message, by the message itself. Settling a
    delivery whose channel has died must not raise: log it, count it, return.
    """

    async def ack_message(self, message: Message[Any]) -> None: ...

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None: ...

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        """Publish a copy for a retry after `delay` seconds, confirmed, with
        `x-retry-attempt` = `message.attempt`. Raises `PublishNotConfirmed` on failure."""

    async def publish_dead_letter(self, message: Message[Any], headers: dict[str, Any]) -> None:
        """Publish a copy to the dead-letter queue, confirmed, with these headers.
        Raises `PublishNotConfirmed` on failure."""


_UNSET: Any = object()

#: Headers a broker adds or changes on redelivery and dead-lettering, and the crash count
#: foxwork adds: not part of what a publisher sent, so not part of a message's identity.
_DELIVERY_HEADERS = frozenset({*wire.BROKER_HEADERS, wire.REDELIVERY_COUNT})


def content_id(body: bytes, properties: MessageProperties) -> str:
    """The id of a message published without a `message_id`: a digest of what the
    publisher sent (body, properties, headers), so every redelivery of it has the same id.

    Headers the broker adds on redelivery (`x-delivery-count`, `x-death`, ...) are left
    out. Two messages published with the same body, properties and headers share the id
    (`DeduplicationMiddleware` then treats the second as a duplicate): publishers that send
    identical messages on purpose set a `message_id` or a `timestamp`.
    """
    fields = {f.name: getattr(properties, f.name) for f in dataclasses.fields(properties)}
    del fields["message_id"]
    fields["headers"] = {k: v for k, v in properties.headers.items() if k not in _DELIVERY_HEADERS}
    canonical = json.dumps(fields, sort_keys=True, default=repr).encode()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(len(canonical).to_bytes(8, "big"))
    digest.update(canonical)
    digest.update(body)
    return digest.hexdigest()


class _Downstream:
    """The downstream publishes of one message: how many were made (the next index), and
    those still waiting for their confirm (`Message.ack()` waits for them)."""

    __slots__ = ("_failure", "_idle", "in_flight", "published")

    def __init__(self) -> None:
        self.published = 0
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, exc: BaseException | None) -> None:
        self.in_flight -= 1
        if exc is not None and self._failure is None:
            self._failure = exc
        if not self.in_flight and self._idle is not None:
            self._idle.set()

    @property
    def settled(self) -> bool:
        """True when every publish was confirmed (none in flight, none failed)."""
        return not self.in_flight and self._failure is None

    async def confirmed(self) -> None:
        """Wait until no publish is in flight; raise `PublishNotConfirmed` if one failed."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
        if self._failure is not None:
            raise PublishNotConfirmed(f"a downstream publish was not confirmed: {self._failure}")


class Message(Generic[P]):
    """One delivery of a message from a queue.

    Attributes:
        id: the AMQP `message_id`; when the publisher set none, a digest of the body and
            properties (`content_id`), the same on every redelivery (copies foxwork
            publishes carry it, so a message keeps its id across retries).
        body: the raw body.
        properties: the AMQP properties.
        headers: the AMQP headers (the same mapping as `properties.headers`).
        attempt: 1 on the first delivery; `x-retry-attempt` + 1 on a retried copy.
        queue: the queue it was consumed from.
        routing_key: the routing key it was published with.
        exchange: the exchange it was published to ("" for the default exchange).
        redelivered: the broker delivered it before (a connection died before settlement,
            or a consumer put it back).
        came_back_unsettled: redelivered, and not because foxwork in this process put it
            back itself (a copy of it was not confirmed, a shutdown handed it back): the
            process that had it checked out died or lost its connection (or was another
            process). What `RetryMiddleware` counts as a crash on a classic queue.
        delivery_count: for quorum queues, how often the broker delivered it before.
        poison: why the message is unprocessable before any code looks at it, or None.
        max_body_size: the most bytes the body may have, as received and once inflated
            (a gzip or deflate body is decoded no further than this).
        worker_id: the worker the pool picked for it (set at dispatch).
        retry_delay: seconds until the copy `retry()` published comes back; None until then.
        raw: the backend's own delivery object (for the backend; do not rely on it).
    """

    __slots__ = (
        "_downstream",
        "_payload",
        "_settler",
        "_state",
        "attempt",
        "body",
        "came_back_unsettled",
        "delivery_count",
        "delivery_tag",
        "exchange",
        "headers",
        "id",
        "max_body_size",
        "poison",
        "properties",
        "queue",
        "raw",
        "redelivered",
        "retry_delay",
        "routing_key",
        "worker",
        "worker_id",
    )

    def __init__(
        self,
        body: bytes,
        *,
        settler: Settler,
        properties: MessageProperties | None = None,
        queue: str = "",
        routing_key: str | None = None,
        exchange: str = "",
        redelivered: bool = False,
        delivery_tag: int = 0,
        delivery_count: int = 0,
        max_body_size: int = wire.DEFAULT_MAX_BODY_SIZE,
        came_back_unsettled: bool | None = None,
    ) -> None:
        props = properties or MessageProperties()
        self.body = body
        self.properties = props
        self.headers: Mapping[str, Any] = props.headers
        self.queue = queue
        self.routing_key = queue if routing_key is None else routing_key
        self.exchange = exchange
        self.redelivered = redelivered
        self.came_back_unsettled = (
            redelivered if came_back_unsettled is None else came_back_unsettled
        )
        self.delivery_tag = delivery_tag
        self.delivery_count = delivery_count
        self.id: str = props.message_id or content_id(body, props)
        self.poison: str | None = None
        self.worker: Worker[Any] | None = None
        self.worker_id: str | None = None
        self.raw: Any = None
        self.retry_delay: float | None = None
        self._settler = settler
        self._state = SettleState.PENDING
        self._payload: Any = _UNSET
        self._downstream: _Downstream | None = None
        if wire.RETRY_ATTEMPT in props.headers:
            # A retried copy came back through the default exchange: restore the route it
            # was first published with.
            route = wire.original_route(props.headers)
            if route is not None:
                self.routing_key, self.exchange = route
        try:
            self.attempt = wire.parse_retry_attempt(props.headers) + 1
        except PoisonMessage as exc:
            self.attempt = 1
            self.poison = str(exc)
        self.max_body_size = max_body_size
        if len(body) > max_body_size:
            self.poison = (
                f"body of {len(body)} bytes exceeds max_body_size of {max_body_size} bytes"
            )

    def __repr__(self) -> str:
        return (
            f"<Message id={self.id!r} queue={self.queue!r} attempt={self.attempt} "
            f"state={self._state.value}>"
        )

    @property
    def payload(self) -> P:
        """The decoded body: the worker's payload model if it has one, else JSON → objects,
        text → str, anything else bytes.

        Raises:
            PoisonMessage: the body cannot be decoded.
        """
        if self._payload is _UNSET:
            self._payload = codec.decode(
                self.body,
                self.properties.content_type,
                self.properties.content_encoding,
                max_size=self.max_body_size,
            )
        payload: P = self._payload
        return payload

    @payload.setter
    def payload(self, value: P) -> None:
        self._payload = value

    @property
    def state(self) -> SettleState:
        """How the message was settled, or PENDING."""
        return self._state

    @property
    def settled(self) -> bool:
        """True once any settlement happened."""
        return self._state is not SettleState.PENDING

    def _claim(self, new: SettleState, action: str) -> bool:
        # The state flips before the broker call is awaited, so two concurrent settlements
        # cannot both reach the broker.
        if self._state is not SettleState.PENDING:
            logger.warning(
                "ignoring %s of message %s: already settled (%s)",
                action,
                self.id,
                self._state.value,
            )
            return False
        self._state = new
        return True

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message.

        Downstream publishes of this message still in flight (`publish()` run as a task) are
        waited for first; if one of them was not confirmed (even one whose error the
        handler caught), the message goes back to its queue instead of being acked."""
        if not self._claim(SettleState.ACKED, "ack"):
            return
        downstream = self._downstream
        if downstream is not None and not downstream.settled:
            try:
                await downstream.confirmed()
            except PublishNotConfirmed as exc:
                await self._requeue_unpublished(exc)
                return
            except BaseException:
                self._state = SettleState.PENDING  # cancelled: settling is left to the canceller
                raise
        await self._settler.ack_message(self)

    async def publish(
        self,
        payload: Any,
        *,
        routing_key: str,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        expiration: float | None = None,
        persistent: bool = True,
    ) -> str:
        """Publish a message downstream of this one, through the backend it came from, and
        wait for the broker's confirm; returns the new message's id.

        The id is derived from this message's id and the publish's index
        (`f"{message.id}:{index}"`, 0 first), so a retry of this message publishes the same
        ids again: downstream delivery is at-least-once, and a `DeduplicationMiddleware`
        downstream drops the repeats. The arguments and the encoding are
        `Publisher.publish()`'s.

        Every publish is confirmed before this returns, so before this message can be
        acked. One that is not raises `PublishNotConfirmed` in the handler: the message
        fails like any other failure (retried, then dead-lettered, by the middleware); a
        handler that catches it and returns has its message sent back to the queue by
        `ack()`, never acked.

        Raises:
            TypeError: the payload cannot be encoded (nothing was sent).
            PublishNotConfirmed: the broker did not confirm the publish.
            RuntimeError: this message is settled already.
        """
        from .publisher import OutboundMessage, outbound  # publisher imports this module

        if self.settled:
            raise RuntimeError(
                f"message {self.id} is settled already ({self._state.value}): publish "
                "downstream from the handler, before it returns"
            )
        send = getattr(self._settler, "publish", None)
        if send is None:
            raise TypeError(f"{type(self._settler).__name__} cannot publish: it is no Backend")
        downstream = self._downstream
        if downstream is None:
            downstream = self._downstream = _Downstream()
        message_id = f"{self.id}:{downstream.published}"
        downstream.published += 1
        body, properties = outbound(
            OutboundMessage(
                payload,
                routing_key,
                exchange,
                headers,
                message_id,
                priority,
                expiration,
                persistent,
            )
        )
        downstream.started()
        try:
            await send(routing_key, body, properties, exchange=exchange)
        except BaseException as exc:
            downstream.finished(exc)
            raise
        downstream.finished(None)
        return message_id

    async def nack(self, *, requeue: bool = True) -> None:
        """Negatively acknowledge; with `requeue` the broker delivers it again."""
        state = SettleState.REQUEUED if requeue else SettleState.REJECTED
        if self._claim(state, "nack"):
            await self._settler.nack_message(self, requeue=requeue)

    async def reject(self) -> None:
        """Reject without requeue: the broker discards it, or dead-letters it through the
        queue's dead-letter exchange."""
        await self.nack(requeue=False)

    async def retry(self, delay: float) -> bool:
        """Publish a copy that comes back after `delay` seconds, then ack this delivery.

        The copy is confirmed before the original is acked: nothing is lost in between. If
        the copy cannot be confirmed, the original is requeued instead.

        Returns:
            True when the copy was confirmed, False when the original was requeued.
        """
        if not self._claim(SettleState.RETRIED, "retry"):
            return False
        self.retry_delay = delay
        return await self._republish(self._settler.publish_retry(self, delay=delay))

    async def dead_letter(
        self, reason: BaseException | str, *, final_attempt: int | None = None
    ) -> bool:
        """Publish a copy to the dead-letter queue with the diagnostic headers, then ack.

        Returns:
            True when the copy was confirmed, False when the original was requeued.
        """
        if not self._claim(SettleState.DEAD_LETTERED, "dead_letter"):
            return False
        headers = wire.dead_letter_headers(
            self.headers,
            routing_key=self.routing_key,
            exchange=self.exchange,
            queue=self.queue,
            reason=reason,
            final_attempt=self.attempt if final_attempt is None else final_attempt,
        )
        return await self._republish(self._settler.publish_dead_letter(self, headers))

    async def _republish(self, publish: Any) -> bool:
        try:
            await publish
        except PublishNotConfirmed as exc:
            if exc.requeue:
                await self._requeue_unpublished(exc)
            else:
                # The broker refuses every copy of it: rejected, the queue's dead-letter
                # exchange takes it (foxwork's queues dead-letter to Q-dlq).
                logger.error("message %s is rejected, not requeued: %s", self.id, exc)
                self._state = SettleState.REJECTED
                await self._settler.nack_message(self, requeue=False)
            return False
        except BackendError as exc:
            await self._requeue_unpublished(exc)
            return False
        except Exception as exc:
            # A backend that lets something else escape must not leave the delivery
            # unsettled: it would hold its prefetch slot until the channel closes.
            logger.error(
                "message %s: publishing its copy failed unexpectedly (%s: %s)",
                self.id,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            await self._requeue_unpublished(exc)
            return False
        except BaseException:
            # Cancelled mid-publish (shutdown): the original is still unacked, and settling
            # is left to whoever cancelled us.
            self._state = SettleState.PENDING
            raise
        await self._settler.ack_message(self)
        return True

    async def _requeue_unpublished(self, exc: BaseException) -> None:
        # Not confirmed (or not connected): the original goes back, nothing is lost.
        logger.warning("message %s goes back to its queue: %s", self.id, exc)
        self._state = SettleState.REQUEUED
        await self._settler.nack_message(self, requeue=True)
