"""The `Backend` base class: what the pool needs from a broker, and what a backend promises.

A backend has two faces:

- `Backend` (this module): connect, close, declare a queue's topology, consume it into an
  `Intake` with a prefetch limit, publish with confirms, flush settlements, report health.
- `foxwork.message.Settler`: every `Message` a backend creates carries the backend as its
  settler, and settles itself through it at most once (`ack_message`, `nack_message`,
  `publish_retry`, `publish_dead_letter`). The pool never settles through the backend.

What every backend guarantees, whatever the broker:

- At-least-once. A delivery is gone from the broker only after it was acked, or after a
  copy of it (retry or dead letter) was confirmed and then it was acked. A delivery that
  is not settled when its consumer, channel or connection ends comes back to its queue,
  marked `redelivered` and `came_back_unsettled`; one put back by a nack is `redelivered`
  only.
- Settle once, never raise for a dead channel: a settlement of a delivery whose channel
  died is logged and counted, and the broker delivers the message again.
- Copies are built by core code and only routed by the backend. `publish_retry` publishes
  a copy with `retry_properties(message)` that comes back to `message.queue` after the
  delay (rounded to its tier, `wire.delay_tier_ms`: one queue per tier, so a short delay
  never waits behind a long one); `publish_dead_letter` publishes a copy with
  `copy_properties(message, headers)` to the queue's dead-letter queue (the headers come
  from `Message.dead_letter`).
  Each returns once the broker confirmed the copy, and raises `PublishNotConfirmed`
  otherwise (with `requeue=False` when the broker would refuse it forever); the message
  then acks, or requeues, its original.
- A consumer hands deliveries to its `Intake` one at a time, in order (`Intake`), holds at
  most `prefetch` unsettled, and never loses one it received: what it could not hand over
  goes back to the queue when it is cancelled.
- A consumer that stops by itself reports it through `Consumer.on_gone`; whoever owns its
  recovery re-establishes it (`Consumer`). Reconnecting is `ResilientBackend`'s: a backend
  reports a lost connection to the callbacks of `add_connection_lost_callback` and does not
  reconnect by itself.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from .. import wire
from ..message import Message, MessageProperties
from ..telemetry import inject_context

__all__ = [
    "Backend",
    "ConnectionLostCallback",
    "Consumer",
    "ConsumerGoneCallback",
    "Intake",
    "copy_properties",
    "retry_properties",
]

logger = logging.getLogger("foxwork.backends")

#: Called with the error (or None) when a backend's connection dies unexpectedly.
ConnectionLostCallback = Callable[[BaseException | None], None]
#: Called with a consumer that stopped by itself while the connection is up.
ConsumerGoneCallback = Callable[["Consumer"], None]


class Intake(Protocol):
    """Where a consumer hands its deliveries: a `WorkerPool` is one.

    A consumer hands over one delivery at a time and in the order the broker sent them:
    the next only once the previous one was taken. Taking a message means the intake owns
    its settlement from then on (it settles it, or it cancels and the backend puts it back).
    """

    async def dispatch(self, message: Message[Any]) -> None:
        """Take `message`, waiting for room first: the consumer hands over nothing more
        until this returns (that is the pool's backpressure)."""

    def try_dispatch(self, message: Message[Any]) -> bool:
        """Take `message` now if there is room, without waiting: True when it was taken,
        False (having taken nothing) otherwise; the consumer then awaits `dispatch()` with
        it, still in order. For backends that receive deliveries in a callback that must
        not wait (the fast path: no queue and no task switch between broker and pool)."""


class Consumer(abc.ABC):
    """A running subscription to one queue.

    A consumer that stops by itself while the connection is up (the broker cancelled it:
    its queue was deleted, or the queue's node went down) turns inactive and reports it to
    `on_gone`, once; it does not subscribe again by itself. Whoever owns its recovery sets
    `on_gone` and re-establishes it: the backend that made it when used on its own, or a
    `ResilientBackend` wrapping that backend (it sets `on_gone` after the backend did, and
    so takes recovery over). A consumer gone without a report (its channel closed, say) is
    found by `ResilientBackend`'s watchdog through `active`.
    """

    queue: str
    #: Called with the consumer when it stopped by itself (see the class docstring).
    on_gone: ConsumerGoneCallback | None = None

    @property
    @abc.abstractmethod
    def active(self) -> bool:
        """True while deliveries flow (or can flow) to the intake."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop delivering. Deliveries received but not yet handed to the intake go back
        to the queue. Must be idempotent."""


class Backend(abc.ABC):
    """Base of `MemoryBackend`, `RabbitMQBackend` and `ResilientBackend`.

    A backend that creates messages also implements `foxwork.message.Settler` for them (see
    the module docstring for what that promises). Usable as an async context manager:
    `async with backend: ...` connects and closes.
    """

    #: Queues this backend was configured to consume; `WorkerPool.run()` uses them when
    #: the pool names none.
    queues: tuple[str, ...] = ()

    async def __aenter__(self) -> Backend:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """True while the backend can consume and publish."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect. Raises `ConnectionLost` (`AccessRefused` when the broker refused the
        login or the virtual host), or `ConfigurationError`, when it cannot. Must be
        idempotent."""

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every settlement handed over so far has gone to the broker, for at
        most `timeout` seconds (None: no limit); False if some had not when it passed.

        A backend that sends its settlements at once has nothing to wait for (the default).
        `RabbitMQBackend` writes acks a few loop turns after `ack()`, several to a frame;
        the pool flushes when its shutdown has drained the messages in flight.
        """
        return True

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel consumers (their unsettled and not yet handed-over deliveries go back to
        their queues), send the settlements handed over so far (as `flush`, bounded), and
        close the connection. Must be idempotent; not a connection loss (no callback)."""

    @abc.abstractmethod
    async def declare(self, queue: str) -> None:
        """Declare the main, retry and dead-letter topology of `queue`. Idempotent; raises
        `TopologyConflict` when an existing queue has other arguments."""

    @abc.abstractmethod
    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        """Start delivering messages of `queue` to `intake`, at most `prefetch` unsettled
        at a time; returns the running `Consumer` (the first delivery may be handed over
        before this returns).

        Each delivery goes to `intake.try_dispatch(message)` first where the backend
        receives it in a callback that must not wait; when that returns False (or always,
        for a backend with a task of its own per consumer) the consumer awaits
        `intake.dispatch(message)`, and hands over nothing more until it returns. Raises
        `ConnectionLost` when not connected."""

    @abc.abstractmethod
    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        """Publish a message (mandatory: an unroutable one is not confirmed) and wait for
        the broker's confirm. Raises `PublishNotConfirmed` when it is not confirmed, and
        `ConnectionLost` when not connected."""

    async def queue_depth(self, queue: str) -> int | None:
        """How many messages of `queue` wait to be delivered to a consumer, or None when the
        backend cannot tell (the default). What counts is the backend's (RabbitMQ: the
        queue's ready messages; delivered but unacked and delayed retries are not counted).

        Sampled at a low rate for the `foxwork.queue.depth` gauge; never on a message's
        path. Raises `BackendError` (`ConnectionLost` when not connected) when asking fails.
        """
        return None

    def add_connection_lost_callback(self, callback: ConnectionLostCallback) -> None:
        """Call `callback(exc)` when the connection dies unexpectedly (not on `close()`)."""
        callbacks: list[ConnectionLostCallback] = self.__dict__.setdefault(
            "_connection_lost_callbacks", []
        )
        callbacks.append(callback)

    def _notify_connection_lost(self, exc: BaseException | None) -> None:
        for callback in self.__dict__.get("_connection_lost_callbacks", ()):
            try:
                callback(exc)
            except Exception:
                logger.exception("connection-lost callback %r failed", callback)

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot for `WorkerPool.health()`: at least `type` (the
        class name) and `connected`; a backend adds its own (`consumers`: queue → active,
        counters, a redacted `url`). Never contains secrets."""
        return {"type": type(self).__name__, "connected": self.is_connected}


def copy_properties(message: Message[Any], headers: dict[str, Any]) -> MessageProperties:
    """Properties of a copy foxwork publishes (retry or dead letter): the originals, the
    message id made explicit (so the copy keeps the message's identity), new headers, and
    no expiration (a copy must not expire in `Q-dlq` or a retry queue).

    The headers also get the current trace context (the span of the failed attempt, under
    `TracingMiddleware`), so the next attempt and the dead letter continue its trace.
    """
    return _copy_with_headers(message, dict(headers))


def retry_properties(message: Message[Any]) -> MessageProperties:
    """Properties of the retry copy of `message`, complete: a backend only routes it.

    The copy carries `x-retry-attempt` = `message.attempt` and the route the message was
    first published with (`wire.retry_headers`), and none of the headers the broker set on
    this delivery (`wire.BROKER_HEADERS`: a stale `x-delivery-count` would count deliveries
    the copy never had); the rest as `copy_properties`.
    """
    # The delivery's headers without the broker's, copied once: a retry copy is built per
    # failure, on the path of a failure storm.
    headers = wire.retry_headers(
        message.headers,
        message.attempt,
        routing_key=message.routing_key,
        exchange=message.exchange,
        drop=_BROKER_HEADERS,
    )
    return _copy_with_headers(message, headers)


_BROKER_HEADERS = frozenset(wire.BROKER_HEADERS)


def _copy_with_headers(message: Message[Any], headers: dict[str, Any]) -> MessageProperties:
    """`copy_properties` with `headers` a dict of its own, which it injects into.

    Built field by field rather than with `dataclasses.replace` (twice as slow); the unit
    tests compare every field of a copy, so a field added to `MessageProperties` fails
    them until it is added here.
    """
    props = message.properties
    return MessageProperties(
        props.content_type,
        props.content_encoding,
        props.priority,
        None,  # expiration
        props.message_type,
        props.user_id,
        props.app_id,
        props.cluster_id,
        props.reply_to,
        props.correlation_id,
        message.id,  # message_id
        props.timestamp,
        inject_context(headers),
        props.delivery_mode,
    )
