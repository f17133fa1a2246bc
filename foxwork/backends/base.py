"""The `Backend` base class: what the pool needs from a broker.

A backend connects, declares the topology of a queue (main, retry, dead-letter), consumes
with a prefetch limit, publishes with confirms, and settles its own deliveries (it is the
`Settler` behind every `Message` it creates).
"""

from __future__ import annotations

import abc
import dataclasses
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

    Usable as an async context manager: `async with backend: ...` connects and closes.
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
        """Connect. Raises `ConnectionLost` (or `ConfigurationError`) when it cannot.
        Must be idempotent."""

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
        """Cancel consumers and close the connection. Must be idempotent."""

    @abc.abstractmethod
    async def declare(self, queue: str) -> None:
        """Declare the main, retry and dead-letter topology of `queue`. Idempotent; raises
        `TopologyConflict` when an existing queue has other arguments."""

    @abc.abstractmethod
    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        """Start delivering messages of `queue` to `intake`, at most `prefetch` unsettled
        at a time."""

    @abc.abstractmethod
    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        """Publish a message and wait for the broker's confirm. Raises
        `PublishNotConfirmed` when it is not confirmed."""

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
        """Connection state for `WorkerPool.health()`; never contains secrets."""
        return {"type": type(self).__name__, "connected": self.is_connected}


def copy_properties(message: Message[Any], headers: dict[str, Any]) -> MessageProperties:
    """Properties of a copy foxwork publishes (retry or dead letter): the originals, the
    message id made explicit (so the copy keeps the message's identity), new headers, and
    no expiration (a copy must not expire in `Q-dlq` or a retry queue).

    The headers also get the current trace context (the span of the failed attempt, under
    `TracingMiddleware`), so the next attempt and the dead letter continue its trace.
    """
    return dataclasses.replace(
        message.properties,
        message_id=message.id,
        headers=inject_context(dict(headers)),
        expiration=None,
    )


def retry_properties(message: Message[Any]) -> MessageProperties:
    """Properties of the retry copy of `message`, complete: a backend only routes it.

    The copy carries `x-retry-attempt` = `message.attempt` and the route the message was
    first published with (`wire.retry_headers`), and none of the headers the broker set on
    this delivery (`wire.BROKER_HEADERS`: a stale `x-delivery-count` would count deliveries
    the copy never had); the rest as `copy_properties`.
    """
    headers = {k: v for k, v in message.headers.items() if k not in wire.BROKER_HEADERS}
    headers = wire.retry_headers(
        headers, message.attempt, routing_key=message.routing_key, exchange=message.exchange
    )
    return copy_properties(message, headers)
