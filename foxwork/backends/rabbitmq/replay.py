"""One run of `DeadLetterQueue.replay()`: read the DLQ in passes, publish each chosen dead
letter back to its queue with publisher confirms, and remove it only once its copy is
confirmed. An interrupted replay leaves every message in the DLQ or in the queue, at worst
in both, never in neither.

Without a rate limit, the DLQ is read a window at a time and up to `_REPLAY_WINDOW` copies
are in flight on the publishing channel: the broker confirms them in order, and each dead
letter is removed as soon as its own copy is confirmed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiolimiter import AsyncLimiter

from ...deadletter import REPLAY_DROPPED_HEADERS, REPLAY_IDS_KEPT, ReplayResult
from ...errors import ConnectionLost
from ._io import TRANSPORT_ERRORS
from .convert import copyable_user_id

if TYPE_CHECKING:
    from ...deadletter import DeadLetterInfo
    from .dlq import DeadLetterQueue

__all__ = ["Replay", "ReplayResult"]

logger = logging.getLogger("foxwork.dlq")

#: Seconds a replay keeps the dead letters it passed over checked out while it waits on
#: the rate limit; past that it hands them back before waiting. Well inside RabbitMQ's
#: acknowledgement timeout (30 minutes by default), which would close the channel.
_HOLD_LIMIT = 300.0
#: Passes in a row a replay starts again after losing its channel to the DLQ without
#: getting any further, before it stops.
_MAX_FRUITLESS_PASSES = 3
#: Seconds a replay waits for the broker to confirm one copy.
_CONFIRM_TIMEOUT = 10.0
#: Copies a replay without a rate limit has in flight (published, confirm awaited).
_REPLAY_WINDOW = 256


@dataclasses.dataclass
class _Pending:
    """A dead letter read and not yet settled, in DLQ order: its copy in flight (`copy`),
    or left in place (`copy` is None)."""

    message: AbstractIncomingMessage
    letter: DeadLetterInfo
    copy: asyncio.Task[bool] | None


class _PassEnd(enum.Enum):
    """Why one pass of a replay over the DLQ ended."""

    #: Every dead letter there at the start was read, or the limit was reached.
    DONE = enum.auto()
    #: It handed back what it held, to wait on the rate limit with nothing checked out.
    RELEASED = enum.auto()
    #: Its channel to the DLQ broke (the dead letters it held went back to the DLQ).
    LOST = enum.auto()


class Replay:
    """One run of `DeadLetterQueue.replay()`: its choices, its channels and its tally.

    It reads the DLQ in passes, each on a channel of its own. Dead letters it leaves in
    place (not chosen, failed, or a dry run) stay checked out until the pass ends, since a
    queue cannot be read past a message without holding it; the broker puts them back in
    order when the pass's channel closes. The next pass holds that many from the head
    again, then reads on where the last one stopped.
    """

    def __init__(
        self,
        dlq: DeadLetterQueue,
        *,
        chosen: Callable[[DeadLetterInfo], bool],
        limit: int | None,
        limiter: AsyncLimiter | None,
        dry_run: bool,
        on_progress: Callable[[int, int], None] | None,
        user: str,
        read_bound: int | None = None,
    ) -> None:
        self._dlq = dlq
        self._chosen = chosen
        self._limit = limit
        self._limiter = limiter
        self._dry_run = dry_run
        self._on_progress = on_progress
        self._user = user
        #: At most this many dead letters are chosen of those read (a limit without a
        #: filter): reading stops there, the rest is never handed out.
        self._read_bound = read_bound
        #: Copies in flight at most: one with a rate limit (each waits its turn).
        self._window = 1 if limiter is not None else _REPLAY_WINDOW
        self._publisher: AbstractChannel | None = None
        self._replayed: list[str] = []
        self._failed: list[str] = []
        self._replayed_count = 0
        self._failed_count = 0
        self._reasons: dict[str, str] = {}
        #: Dead letters of this pass read and not yet settled, in DLQ order.
        self._pending: collections.deque[_Pending] = collections.deque()
        #: Copies in `_pending`.
        self._flying = 0
        #: Dead letters at the head of the DLQ this run left there, in order.
        self._passed = 0
        #: Dead letters this run removed (their copies confirmed).
        self._removed = 0
        #: Dead letters in the DLQ when the run began (None until the first pass looked).
        self._total: int | None = None
        #: A rate-limit slot taken while nothing was checked out, for the next copy.
        self._slot = False
        #: What a pass lost with its channel had read and not settled, in DLQ order: the
        #: id of each, and whether its copy was confirmed (then only its removal was lost).
        #: They are back in the DLQ right after the ones passed over; the next pass removes
        #: the confirmed ones as long as the ids it reads match.
        self._unsettled: collections.deque[tuple[str, bool]] = collections.deque()
        self._stopped = ""

    @property
    def _read(self) -> int:
        return self._passed + self._removed

    def _finished(self) -> bool:
        if self._stopped:
            return True
        if self._limit is not None and self._replayed_count + self._flying >= self._limit:
            return True
        return self._total is not None and self._read >= self._total

    async def run(self) -> ReplayResult:
        fruitless = 0
        try:
            while not self._finished():
                before = self._read
                end = await self._pass()
                if end is _PassEnd.DONE:
                    break
                if end is _PassEnd.RELEASED:
                    # Nothing is checked out now: wait here, and keep the slot.
                    assert self._limiter is not None
                    await self._limiter.acquire()
                    self._slot = True
                if end is _PassEnd.LOST:
                    fruitless = 0 if self._read > before else fruitless + 1
                    if fruitless > _MAX_FRUITLESS_PASSES:
                        self._stopped = (
                            "the channel to the dead-letter queue kept closing; "
                            "see the log for the broker's reason"
                        )
        finally:
            if self._publisher is not None:
                await _close_quietly(self._publisher)
        total = self._total or 0
        return ReplayResult(
            replayed=self._replayed,
            failed=self._failed,
            skipped=max(total - self._replayed_count - self._failed_count, 0),
            dry_run=self._dry_run,
            stopped=self._stopped,
            reasons=self._reasons,
            total_replayed=self._replayed_count,
            total_failed=self._failed_count,
        )

    def _record(self, ids: list[str], letter: DeadLetterInfo) -> None:
        if len(ids) < REPLAY_IDS_KEPT:
            ids.append(letter.id)
            self._reasons[letter.id] = letter.reason

    async def _pass(self) -> _PassEnd:
        try:
            browse = await self._dlq._channel()
        except ConnectionLost as exc:
            self._stopped = str(exc)
            return _PassEnd.DONE
        try:
            try:
                return await self._read_on(browse)
            finally:
                await self._drain()
        except TRANSPORT_ERRORS as exc:
            logger.warning(
                "the channel reading %s closed (%s: %s); reading on from the start",
                self._dlq.name,
                type(exc).__name__,
                exc,
            )
            return _PassEnd.LOST
        finally:
            # Everything not acked (passed over, failed, a dry run) goes back to the DLQ.
            await _close_quietly(browse)

    async def _read_on(self, browse: AbstractChannel) -> _PassEnd:
        queue = await self._dlq._existing_queue(browse)
        if self._total is None:
            self._total = queue.declaration_result.message_count or 0
        total = self._total
        held_since = time.monotonic()
        held = 0
        rehold = self._passed
        async with contextlib.aclosing(self._messages(browse, queue)) as messages:
            async for message in messages:
                # The dead letters earlier passes left at the head: held again to read past.
                if held < rehold:
                    held += 1
                    continue
                letter = self._dlq._describe(message)
                if self._unsettled:
                    expected, confirmed = self._unsettled.popleft()
                    if expected != letter.id:
                        self._unsettled.clear()
                    elif confirmed and letter.id:
                        # Its copy is confirmed already (and counted): only remove it now.
                        await message.ack()
                        self._removed += 1
                        continue
                if not self._chosen(letter) or self._dry_run:
                    self._pending.append(_Pending(message, letter, None))
                elif not await self._wait_for_slot(held_since):
                    return _PassEnd.RELEASED
                else:
                    # The channel is opened here, not in each copy's task: every copy of a
                    # window goes out on the one channel, in DLQ order.
                    try:
                        publisher = await self._open_publisher()
                    except ConnectionLost as exc:
                        self._stopped = str(exc)
                        return _PassEnd.DONE
                    copy = asyncio.ensure_future(self._replay_one(message, letter, publisher))
                    self._pending.append(_Pending(message, letter, copy))
                    self._flying += 1
                while self._flying >= self._window or (self._pending and not self._flying):
                    await self._settle_oldest()
                if self._finished():
                    return _PassEnd.DONE
        if held < rehold:
            self._dlq._count_unread(total - self._removed - held, total)
        else:
            await self._drain()
            self._dlq._count_unread(total - self._read, total)
        return _PassEnd.DONE

    def _messages(
        self, browse: AbstractChannel, queue: AbstractQueue
    ) -> AsyncGenerator[AbstractIncomingMessage]:
        """The dead letters left to read in this pass, from the head (the passed over
        included): one `basic.get` each with a rate limit (nothing read ahead of need),
        else a window at a time."""
        assert self._total is not None
        count = self._total - self._removed
        if self._read_bound is not None:
            chosen_left = self._read_bound - self._replayed_count
            count = min(count, self._passed + len(self._unsettled) + chosen_left)
        if self._window == 1:
            return _one_by_one(queue, count)
        return self._dlq._stream(browse, queue, count)

    async def _settle_oldest(self) -> None:
        """Settle the oldest dead letter read: remove it once its copy is confirmed, else
        leave it in place (the broker puts it back, in order, when the pass ends)."""
        pending = self._pending.popleft()
        letter = pending.letter
        if pending.copy is None:
            if self._dry_run and self._chosen(letter):
                self._replayed_count += 1
                self._record(self._replayed, letter)
            self._passed += 1
        else:
            self._flying -= 1
            replayed = await pending.copy
            if not replayed and self._window > 1 and not self._stopped:
                # A copy in a window also fails when another closed the channel: it gets a
                # turn of its own on a fresh one before it counts as failed.
                replayed = await self._replay_one(pending.message, letter, alone=True)
            if replayed:
                self._replayed_count += 1
                self._record(self._replayed, letter)
                # The copy is confirmed: only now does the dead letter go. Should the
                # channel be gone, the dead letter is back in the DLQ, right after the ones
                # passed over, and the next pass removes it.
                self._unsettled.appendleft((letter.id, True))
                await pending.message.ack()
                self._unsettled.popleft()
                self._removed += 1
            else:
                self._failed_count += 1
                self._record(self._failed, letter)
                self._passed += 1
        if self._on_progress is not None and self._total is not None:
            self._on_progress(self._read, self._total)

    async def _drain(self) -> None:
        """Settle every dead letter read; when the pass's channel is gone, wait for the
        copies in flight and note, in order, which were confirmed (see `_unsettled`)."""
        try:
            while self._pending:
                await self._settle_oldest()
        except TRANSPORT_ERRORS:
            # The one whose removal failed is first in `_unsettled` already.
            self._flying = 0
            for pending in self._pending:
                confirmed = False
                if pending.copy is not None:
                    confirmed = await pending.copy
                    if confirmed:
                        self._replayed_count += 1
                        self._record(self._replayed, pending.letter)
                self._unsettled.append((pending.letter.id, confirmed))
            self._pending.clear()
            raise

    async def _wait_for_slot(self, held_since: float) -> bool:
        """Wait for the rate limit to allow the next copy; False when the pass must first
        hand back what it holds (the dead letter at hand, and the ones it passed over when
        it has held them for `_HOLD_LIMIT`) and wait with nothing checked out."""
        if self._slot:
            self._slot = False
            return True
        if self._limiter is None or self._limiter.has_capacity():
            if self._limiter is not None:
                await self._limiter.acquire()
            return True
        if self._passed and time.monotonic() - held_since < _HOLD_LIMIT:
            await self._limiter.acquire()
            return True
        return False

    async def _open_publisher(self) -> AbstractChannel:
        if self._publisher is None or self._publisher.is_closed:
            if self._publisher is not None:
                await _close_quietly(self._publisher)
                self._publisher = None
            self._publisher = await self._dlq._channel(confirms=True)
        return self._publisher

    async def _replay_one(
        self,
        message: AbstractIncomingMessage,
        letter: DeadLetterInfo,
        publisher: AbstractChannel | None = None,
        *,
        alone: bool = False,
    ) -> bool:
        headers = {k: v for k, v in letter.headers.items() if k not in REPLAY_DROPPED_HEADERS}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id or None,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            # The broker refuses a copy naming another user than the one publishing it.
            user_id=copyable_user_id(message.user_id, self._user),
        )
        try:
            if publisher is None:
                publisher = await self._open_publisher()
        except ConnectionLost as exc:
            self._stopped = str(exc)
            return False
        try:
            await publisher.default_exchange.publish(
                copy, routing_key=letter.queue, mandatory=True, timeout=_CONFIRM_TIMEOUT
            )
        except (aio_pika.exceptions.DeliveryError, TimeoutError, *TRANSPORT_ERRORS) as exc:
            # Not confirmed: the dead letter stays. A refusal that closed the channel is
            # the broker's verdict on this copy; the next one gets a fresh channel. In a
            # window, the copy gets a turn alone before it counts as failed.
            logger.log(
                logging.WARNING if alone or self._window == 1 else logging.DEBUG,
                "dead letter %r was not replayed (its copy was not confirmed: %s: %s); "
                "it stays in %s",
                letter.id,
                type(exc).__name__,
                exc,
                self._dlq.name,
            )
            return False
        return True


async def _one_by_one(queue: AbstractQueue, count: int) -> AsyncGenerator[AbstractIncomingMessage]:
    """At most `count` dead letters from the head, one `basic.get` each, only when asked
    for the next: nothing is checked out ahead of need."""
    for _ in range(count):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return
        yield message


async def _close_quietly(channel: AbstractChannel) -> None:
    """Close `channel`; one the broker or a lost connection closed already is fine."""
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await channel.close()
