"""`MemoryBackend`: an in-process broker with RabbitMQ's retry and dead-letter semantics.

Real product code, not a test helper: the embedded demo runs on it, and so can an
application's own tests. It keeps the observable behaviour of the RabbitMQ topology:
a retried copy comes back to its queue after the delay tier with `x-retry-attempt`, a dead
letter lands in `Q-dlq` with the diagnostic headers, a nack with requeue redelivers with
`redelivered=True`, and at most `prefetch` deliveries per consumer are unsettled at a time.
Nothing survives the process.

Retry delays run on a `RetryClock`: the event loop's clock by default; a test can pass a
clock of its own (`foxwork.testing.VirtualClock`) and release the delayed copies when it
chooses, without waiting for them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .. import codec, wire
from ..errors import ConfigurationError, ConnectionLost, PublishNotConfirmed
from ..message import Message, MessageProperties
from .base import Backend, Consumer, Intake, copy_properties, retry_properties

# RetryClock and ScheduledRetry are for tests: foxwork.testing exports them.
__all__ = ["MemoryBackend", "StoredMessage"]

logger = logging.getLogger("foxwork.backends.memory")


@dataclasses.dataclass
class StoredMessage:
    """A message sitting in a memory queue."""

    body: bytes
    properties: MessageProperties
    routing_key: str
    exchange: str = ""
    redelivered: bool = False
    #: Put back by a nack (foxwork's own requeue), not by a lost connection.
    handed_back: bool = False

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.headers

    @property
    def payload(self) -> Any:
        """The decoded body, as a worker without a payload model sees it: JSON → objects,
        text → str, anything else bytes.

        Raises:
            PoisonMessage: the body does not match its content type.
        """
        return codec.decode(
            self.body,
            self.properties.content_type,
            self.properties.content_encoding,
            max_size=max(len(self.body), wire.DEFAULT_MAX_BODY_SIZE),
        )


@dataclasses.dataclass(eq=False)  # each is one copy: compared by identity
class ScheduledRetry:
    """A retried copy the memory broker holds for its delay (the retry queue, in RabbitMQ).

    Attributes:
        queue: the queue it comes back to.
        message: the copy, with `x-retry-attempt` set.
        delay: the delay asked for, in seconds (jitter included).
        held: the delay it is held for: `delay` rounded to its tier, as on RabbitMQ.
        due: the clock's time at which it comes back.
        released: whether it came back to its queue already.
    """

    queue: str
    message: StoredMessage
    delay: float
    held: float
    due: float
    released: bool = False

    @property
    def attempt(self) -> int:
        """The attempt its next delivery will be (failed attempts + 1)."""
        return wire.parse_retry_attempt(self.message.headers) + 1


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class RetryClock(Protocol):
    """When the delayed copies of a `MemoryBackend` come back to their queues.

    The default is the running event loop's clock. A clock of one's own (a virtual clock
    in tests) must call every callback exactly once, in the order of their due times, on
    the event loop's thread.
    """

    def time(self) -> float:
        """The current time, in seconds (any origin)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Cancellable:
        """Call `callback()` once `delay` seconds have passed on this clock."""
        ...


class _LoopClock:
    """The running event loop's clock."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Cancellable:
        return asyncio.get_running_loop().call_later(delay, callback)


class _Queue:
    __slots__ = ("_changed", "_on_change", "messages", "name", "retries", "unacked")

    def __init__(self, name: str, on_change: Callable[[], None]) -> None:
        self.name = name
        self.messages: collections.deque[StoredMessage] = collections.deque()
        self.unacked = 0
        #: Retried copies held for their delay, in the order they were published.
        self.retries: list[ScheduledRetry] = []
        # Created only while someone waits, so a change nobody waits for costs nothing.
        self._changed: asyncio.Event | None = None
        self._on_change = on_change

    @property
    def delayed(self) -> int:
        return len(self.retries)

    async def wait_changed(self) -> None:
        """Wait for the next change (consumers and join() wait here)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        self._on_change()

    @property
    def idle(self) -> bool:
        return not self.messages and not self.unacked and not self.delayed


class _MemoryConsumer(Consumer):
    def __init__(self, backend: MemoryBackend, queue: _Queue, intake: Intake, prefetch: int):
        self.queue = queue.name
        self._backend = backend
        self._queue = queue
        self._intake = intake
        self._prefetch = prefetch
        self.unacked = 0
        self._task = asyncio.create_task(self._hand_over(), name=f"foxwork-memory-{queue.name}")

    @property
    def active(self) -> bool:
        return not self._task.done()

    async def _hand_over(self) -> None:
        queue = self._queue
        while True:
            if not queue.messages or self.unacked >= self._prefetch:
                await queue.wait_changed()
                continue
            stored = queue.messages.popleft()
            message = self._backend._deliver(stored, queue, self)
            # The fast path first, as RabbitMQ's consumer takes it: straight into the pool
            # while it has room; otherwise wait for room, in order.
            if self._intake.try_dispatch(message):
                continue
            try:
                await self._intake.dispatch(message)
            except asyncio.CancelledError:
                if message.worker is None and not message.settled:
                    # Taken from the queue but never handed over: it goes back.
                    self._backend._requeue(message)
                raise

    async def cancel(self) -> None:
        if self._task.done():
            return
        self._task.cancel()
        await asyncio.wait([self._task])


class MemoryBackend(Backend):
    """An in-process broker for tests, demos and development.

    Args:
        queues: queues to create now (others are created by `declare()` or `add_message()`).
        max_body_size: bodies larger than this (bytes) are dead-lettered unread.
        clock: the clock retry delays run on (see `RetryClock`); the event loop's by
            default.

    Example:
        backend = MemoryBackend()
        await backend.add_message("orders", {"sku": "A-1", "qty": 2})
        pool = WorkerPool(workers=[OrderWorker()], queues=["orders"])
        await pool.start(backend)
        await backend.join("orders", timeout=5)
        print(backend.dead_letters("orders"))
    """

    def __init__(
        self,
        *,
        queues: tuple[str, ...] | list[str] = (),
        max_body_size: int = wire.DEFAULT_MAX_BODY_SIZE,
        clock: RetryClock | None = None,
    ) -> None:
        if max_body_size < 1:
            raise ConfigurationError(f"max_body_size={max_body_size} must be at least 1 byte")
        self.queues = tuple(queues)
        self.max_body_size = max_body_size
        self._queues: dict[str, _Queue] = {}
        self._deliveries: dict[int, tuple[_Queue, _MemoryConsumer, StoredMessage]] = {}
        self._tags = itertools.count(1)
        self._consumers: list[_MemoryConsumer] = []
        self.clock: RetryClock = clock if clock is not None else _LoopClock()
        self._timers: set[_Cancellable] = set()
        self._changed: asyncio.Event | None = None
        self._connected = False
        #: Copies published for a retry, per queue (a test and demo convenience).
        self.retried: collections.Counter[str] = collections.Counter()
        for name in queues:
            self._queue(name)

    def __repr__(self) -> str:
        return f"<MemoryBackend queues={sorted(self._queues)} connected={self._connected}>"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self, exc: BaseException | None = None) -> None:
        """Simulate a dropped connection: consumers stop, unsettled deliveries go back to
        their queues (as with a dead AMQP channel), and connection-lost callbacks fire.
        Messages in queues survive; `connect()` reconnects."""
        await self.close()
        self._notify_connection_lost(exc or ConnectionLost("MemoryBackend.disconnect()"))

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        # As on a closed AMQP channel, unsettled deliveries go back to their queues.
        for queue, _consumer, stored in self._deliveries.values():
            queue.unacked -= 1
            stored.redelivered = True
            stored.handed_back = False
            queue.messages.appendleft(stored)
            queue.notify()
        self._deliveries.clear()
        # Delayed retries are held "by the broker": they survive a closed connection.
        self._connected = False

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name, self._notify_any)
        return queue

    def _notify_any(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for_change(self) -> None:
        """Wait for the next change in any queue: a message enqueued, delivered, settled,
        or a delayed copy scheduled or released."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    async def declare(self, queue: str) -> None:
        self._queue(queue)
        self._queue(wire.dead_letter_queue_name(queue))

    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        self._require_connection()
        consumer = _MemoryConsumer(self, self._queue(queue), intake, prefetch)
        self._consumers.append(consumer)
        return consumer

    def _require_connection(self) -> None:
        if not self._connected:
            raise ConnectionLost("MemoryBackend is not connected: call connect() first")

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        self._require_connection()
        self._put(routing_key, body, properties, exchange)

    def _put(
        self, routing_key: str, body: bytes, properties: MessageProperties | None, exchange: str
    ) -> None:
        queue = self._queues.get(routing_key)
        if exchange or queue is None:
            # Only the default exchange exists here; like a mandatory publish to RabbitMQ,
            # an unroutable message is not confirmed.
            raise PublishNotConfirmed(
                f"unroutable: no queue {routing_key!r} on exchange {exchange!r}"
            )
        queue.messages.append(
            StoredMessage(body, properties or MessageProperties(), routing_key, exchange)
        )
        queue.notify()

    async def add_message(
        self, queue: str, payload: Any, properties: MessageProperties | None = None
    ) -> None:
        """Encode `payload` (JSON for objects, bytes and str as they are) and enqueue it."""
        body, content_type = codec.encode(payload)
        props = properties or MessageProperties()
        if props.content_type is None:
            props = props.with_content_type(content_type)
        await self.enqueue_with_properties(queue, body, props)

    async def enqueue_with_properties(
        self, queue: str, body: bytes, properties: MessageProperties
    ) -> None:
        """Enqueue a raw body with exactly these properties (creating the queue). Works
        before `connect()`, to preload queues."""
        self._queue(queue)
        self._put(queue, body, properties, "")

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        self._require_connection()
        stored = StoredMessage(message.body, retry_properties(message), message.queue)
        self.retried[message.queue] += 1
        self._schedule_retry(self._queue(message.queue), stored, delay)

    def _schedule_retry(self, queue: _Queue, stored: StoredMessage, delay: float) -> ScheduledRetry:
        # Held for the delay of its tier, as a RabbitMQ retry queue holds it.
        held = wire.delay_tier_ms(delay) / 1000
        retry = ScheduledRetry(queue.name, stored, delay, held, self.clock.time() + held)
        queue.retries.append(retry)

        def due() -> None:
            self._timers.discard(timer)
            queue.retries.remove(retry)
            retry.released = True
            queue.messages.append(stored)
            queue.notify()

        timer = self.clock.call_later(held, due)
        self._timers.add(timer)
        return retry

    async def publish_dead_letter(self, message: Message[Any], headers: dict[str, Any]) -> None:
        self._require_connection()
        dlq = self._queue(wire.dead_letter_queue_name(message.queue))
        dlq.messages.append(
            StoredMessage(message.body, copy_properties(message, headers), dlq.name)
        )
        dlq.notify()

    # -- settlement ------------------------------------------------------------------

    def _deliver(
        self, stored: StoredMessage, queue: _Queue, consumer: _MemoryConsumer
    ) -> Message[Any]:
        tag = next(self._tags)
        queue.unacked += 1
        consumer.unacked += 1
        self._deliveries[tag] = (queue, consumer, stored)
        return Message(
            stored.body,
            settler=self,
            properties=stored.properties,
            queue=queue.name,
            routing_key=stored.routing_key,
            exchange=stored.exchange,
            redelivered=stored.redelivered,
            came_back_unsettled=stored.redelivered and not stored.handed_back,
            delivery_tag=tag,
            max_body_size=self.max_body_size,
        )

    def _settle(self, message: Message[Any]) -> StoredMessage | None:
        entry = self._deliveries.pop(message.delivery_tag, None)
        if entry is None:
            logger.info(
                "delivery %d of message %s is gone; not settled", message.delivery_tag, message.id
            )
            return None
        queue, consumer, stored = entry
        queue.unacked -= 1
        consumer.unacked -= 1
        queue.notify()
        return stored

    def _requeue(self, message: Message[Any]) -> None:
        stored = self._settle(message)
        if stored is not None:
            stored.redelivered = stored.handed_back = True
            queue = self._queue(message.queue)
            queue.messages.appendleft(stored)
            queue.notify()

    async def ack_message(self, message: Message[Any]) -> None:
        self._settle(message)

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None:
        if requeue:
            self._requeue(message)
        else:
            self._settle(message)

    # -- inspection (tests, demo, tooling) -------------------------------------------

    def messages(self, queue: str) -> list[StoredMessage]:
        """The messages waiting in `queue` (not the unacked or delayed ones)."""
        return list(self._queue(queue).messages)

    def unacked(self, queue: str) -> int:
        """Deliveries of `queue` handed to a consumer and not settled yet."""
        return self._queue(queue).unacked

    def pending_retries(self, queue: str) -> list[ScheduledRetry]:
        """The retried copies of `queue` held for their delay, in the order published."""
        return list(self._queue(queue).retries)

    def dead_letters(self, queue: str) -> list[StoredMessage]:
        """The dead letters of `queue` (the contents of `Q-dlq`)."""
        return self.messages(wire.dead_letter_queue_name(queue))

    async def queue_depth(self, queue: str) -> int | None:
        """The messages waiting in `queue` to be delivered (not the unacked or delayed
        ones, unlike `depth`); None for a queue that was never declared."""
        self._require_connection()
        q = self._queues.get(queue)
        return None if q is None else len(q.messages)

    def depth(self, queue: str) -> int:
        """Messages waiting + unacked + delayed for `queue`."""
        q = self._queue(queue)
        return len(q.messages) + q.unacked + q.delayed

    async def join(self, queue: str, *, timeout: float | None = None) -> None:
        """Wait until `queue` is empty, nothing is unacked and no retry is pending.

        Raises:
            TimeoutError: still busy after `timeout` seconds; the message says how busy.
        """
        q = self._queue(queue)
        try:
            async with asyncio.timeout(timeout):
                while not q.idle:
                    await q.wait_changed()
        except TimeoutError:
            raise TimeoutError(
                f"queue {queue!r} not drained after {timeout} s: {len(q.messages)} ready, "
                f"{q.unacked} unacked, {q.delayed} delayed"
            ) from None
