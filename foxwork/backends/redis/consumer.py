"""`RedisConsumer`: one queue's reader in the consumer group, in a task of its own.

On start it takes back this consumer's own pending entries (left by an earlier run of the
process under the same consumer name: they came back unsettled), then reads new ones
(XREADGROUP `>`), never holding more unsettled entries than the prefetch: each read asks
for min(batch size, free room) entries, and while entries are in flight it waits until
that is at least half a batch (settlements free room a few entries at a time: a read for
one or two entries would cost a round trip and a reply for almost nothing). Each entry
read goes to the pool at once, without waiting, as long as the pool has room.

Every `claim_idle` / 3 seconds it keeps its own in-flight entries fresh (XCLAIM JUSTID
resets their idle time without counting a delivery, so no other consumer takes over an
entry that is merely slow) and takes over entries idle longer than `claim_idle` (their
consumer is taken for dead). Taking over is XPENDING (which gives each entry's delivery
count) then XCLAIM.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Protocol

from redis.exceptions import ResponseError

from ...message import Message
from ..base import Consumer, Intake
from .config import RedisStreamsConfig, StreamKeys
from .connection import CONNECTION_ERRORS, Client

__all__ = ["CONNECTION_ERRORS", "ConsumerHost", "QueueState", "RedisConsumer"]

logger = logging.getLogger("foxwork.backends.redis")

#: Seconds `cancel()` waits, beyond one block time, for the loop to stop by itself.
CANCEL_GRACE = 5.0


class QueueState:
    """What a backend tracks of one queue across consumers and reconnects: the entries it
    holds unsettled (received, not yet acked or put back)."""

    __slots__ = ("_changed", "in_flight", "keys")

    def __init__(self, keys: StreamKeys) -> None:
        self.keys = keys
        self.in_flight: set[bytes] = set()
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """Wake whoever waits for room."""
        self._changed.set()

    def release(self, entry_id: bytes) -> bool:
        """Forget a settled entry; False when it was not held."""
        if entry_id not in self.in_flight:
            return False
        self.in_flight.discard(entry_id)
        self._changed.set()
        return True

    async def wait_changed(self, timeout: float) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass


class ConsumerHost(Protocol):
    """What a `RedisConsumer` needs from its backend."""

    config: RedisStreamsConfig

    @property
    def client(self) -> Client:
        """The live client. Raises `ConnectionLost` when there is none."""

    def message_of(
        self, state: QueueState, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> Message[Any]:
        """The `Message` of an entry, delivered `deliveries` times (this one included;
        0 for a new entry)."""

    async def dead_letter_crash_loop(
        self, state: QueueState, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        """Dead-letter an entry delivered more often than the delivery limit."""

    async def recreate_group(self, keys: StreamKeys) -> None:
        """Create the consumer group again (it vanished: FLUSHALL, or the key was deleted)."""

    def lost(self, exc: BaseException) -> None:
        """Report a dead connection."""


class RedisConsumer(Consumer):
    """One queue's reader (see the module docstring)."""

    def __init__(
        self, host: ConsumerHost, state: QueueState, intake: Intake, prefetch: int
    ) -> None:
        self.queue = state.keys.queue
        self._host = host
        self._state = state
        self._intake = intake
        self._prefetch = prefetch
        self._config = host.config
        self._batch = self._config.batch_size
        #: The fewest entries a read asks for while some are in flight (see `_wanted`).
        self._min_read = max(1, min(self._batch, prefetch) // 2)
        self._cancelled = False
        self._handing_over = False
        self._task = asyncio.create_task(self._run(), name=f"foxwork-redis-{self.queue}")

    @property
    def active(self) -> bool:
        return not self._cancelled and not self._task.done()

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        task = self._task
        if task.done():
            return
        if not self._handing_over:
            # Between Redis commands the loop sees the flag itself within one block time:
            # cancelling a task inside redis-py's send can be lost on Python 3.11
            # (asyncio.wait_for may swallow it), and would cost the connection anyway.
            self._state.wake()
            await asyncio.wait([task], timeout=self._config.block_ms / 1000 + CANCEL_GRACE)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except CONNECTION_ERRORS as exc:
            logger.warning("the consumer of %r lost its connection: %s", self.queue, exc)
            self._host.lost(exc)
        except Exception:
            logger.exception("the consumer of %r failed", self.queue)
        if not self._cancelled and self.on_gone is not None:
            self.on_gone(self)

    def _room(self) -> int:
        return self._prefetch - len(self._state.in_flight)

    def _wanted(self) -> int:
        """How many new entries to ask for now; 0: wait for room first."""
        in_flight = len(self._state.in_flight)
        wanted = min(self._prefetch - in_flight, self._batch)
        if wanted < self._min_read and in_flight:
            return 0
        return max(0, wanted)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.claim_idle / 3
        await self._take_over_own_pending()
        next_tick = loop.time()
        while not self._cancelled:
            try:
                if loop.time() >= next_tick:
                    await self._keep_alive()
                    await self._take_over_idle()
                    next_tick = loop.time() + interval
                count = self._wanted()
                if count <= 0:
                    await self._state.wait_changed(max(0.0, next_tick - loop.time()))
                    continue
                await self._read_new(count)
            except ResponseError as exc:
                # NOGROUP: the group is gone; UNBLOCKED: the stream was deleted under a read.
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                await self._host.recreate_group(self._state.keys)

    async def _read_new(self, count: int) -> None:
        keys = self._state.keys
        reply: Any = await self._host.client.xreadgroup(
            self._config.group,
            self._config.consumer,
            {keys.stream: ">"},
            count=count,
            block=self._config.block_ms,
        )
        if not reply:
            return
        state = self._state
        held = state.in_flight
        message_of = self._host.message_of
        messages = []
        for entry_id, fields in reply[0][1]:
            held.add(entry_id)
            messages.append(message_of(state, entry_id, fields, 0))
        await self._hand_over(messages)

    async def _take_over_own_pending(self) -> None:
        """Entries this consumer name holds pending and this process does not: they were
        checked out by an earlier run (or a consumer that lost its connection)."""
        start = "-"
        while not self._cancelled:
            room = self._room()
            if room <= 0:
                await self._state.wait_changed(1.0)
                continue
            rows = await self._pending(start, room, consumer=self._config.consumer)
            if not rows:
                return
            start = "(" + rows[-1]["message_id"].decode()
            await self._take_over(rows, min_idle_ms=0)

    async def _take_over_idle(self) -> None:
        """Entries idle longer than `claim_idle`, whoever's they are (a dead consumer's)."""
        room = self._room()
        if room <= 0:
            return
        idle_ms = round(self._config.claim_idle * 1000)
        # Entries this process holds are kept fresh, but may still show up: ask for more.
        rows = await self._pending("-", room + len(self._state.in_flight), idle_ms=idle_ms)
        held = self._state.in_flight
        rows = [r for r in rows if r["message_id"] not in held][:room]
        await self._take_over(rows, min_idle_ms=idle_ms)

    async def _pending(
        self, start: str, count: int, *, consumer: str | None = None, idle_ms: int | None = None
    ) -> list[dict[str, Any]]:
        rows: Any = await self._host.client.xpending_range(
            self._state.keys.stream,
            self._config.group,
            min=start,
            max="+",
            count=count,
            consumername=consumer,
            idle=idle_ms,
        )
        return list(rows)

    async def _take_over(self, rows: list[dict[str, Any]], *, min_idle_ms: int) -> None:
        held = self._state.in_flight
        deliveries = {
            r["message_id"]: int(r["times_delivered"]) + 1
            for r in rows
            if r["message_id"] not in held
        }
        if not deliveries:
            return
        keys = self._state.keys
        claimed: Any = await self._host.client.xclaim(
            keys.stream, self._config.group, self._config.consumer, min_idle_ms, list(deliveries)
        )
        limit = self._config.delivery_limit
        messages = []
        for entry_id, fields in claimed:
            if entry_id is None or fields is None:
                continue  # deleted from the stream (trimmed): nothing left to deliver
            count = deliveries.get(entry_id, 1)
            if limit is not None and count > limit:
                await self._host.dead_letter_crash_loop(self._state, entry_id, fields, count)
                continue
            self._state.in_flight.add(entry_id)
            messages.append(self._host.message_of(self._state, entry_id, fields, count))
        if messages:
            logger.warning(
                "consumer %s took over %d pending entr%s of %r (their consumer died or lost "
                "its connection before settling them)",
                self._config.consumer,
                len(messages),
                "y" if len(messages) == 1 else "ies",
                self.queue,
            )
        await self._hand_over(messages)

    async def _keep_alive(self) -> None:
        """Reset the idle time of the entries this process holds, without counting a
        delivery, so that no other consumer takes over an entry that is merely slow."""
        ids: list[Any] = list(self._state.in_flight)
        if ids:
            await self._host.client.xclaim(
                self._state.keys.stream,
                self._config.group,
                self._config.consumer,
                0,
                ids,
                justid=True,
            )

    async def _hand_over(self, messages: list[Message[Any]]) -> None:
        # One at a time and in order: the fast path while the pool has room (no await, so
        # nothing can cancel it halfway), else wait.
        if not self._cancelled:
            try_dispatch = self._intake.try_dispatch
            for index, message in enumerate(messages):
                if not try_dispatch(message):
                    await self._hand_over_waiting(messages[index:])
                    return
            return
        await self._hand_over_waiting(messages)

    async def _hand_over_waiting(self, messages: list[Message[Any]]) -> None:
        waiting = collections.deque(messages)
        self._handing_over = True
        try:
            while waiting and not self._cancelled:
                message = waiting[0]
                if not self._intake.try_dispatch(message):
                    await self._intake.dispatch(message)
                waiting.popleft()
        finally:
            self._handing_over = False
            # Received but never handed over (cancelled): back to the stream.
            for message in waiting:
                if message.worker is None and not message.settled:
                    await message.nack(requeue=True)
