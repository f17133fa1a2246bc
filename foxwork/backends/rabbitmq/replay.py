"""One run of `DeadLetterQueue.replay()`: read the DLQ in passes, publish each chosen dead
letter back to its queue with publisher confirms, and remove it only once its copy is
confirmed. An interrupted replay leaves every message in the DLQ or in the queue, at worst
in both, never in neither.

Without a rate limit, the DLQ is read a window at a time and up to `_REPLAY_WINDOW` copies
are in flight on the publishing channel: the broker confirms them in order, and each dead
letter is removed once its own copy is confirmed. While the pass holds no dead letter it
leaves in place, the removals of a run of confirmed copies go out as one `basic.ack` with
`multiple` set (up to `_ACK_BATCH` dead letters, all with their copies confirmed).
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
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiolimiter import AsyncLimiter
from aiormq.abc import DeliveredMessage

from ...deadletter import REPLAY_DROPPED_HEADERS, REPLAY_IDS_KEPT, ReplayResult
from ...errors import ConnectionLost
from ._batch import Outgoing, publish_batch
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
#: Copies published together, in one write (without a rate limit): when the window is
#: full, this many of the oldest are settled before the next batch goes out.
_PUBLISH_BATCH = 64
#: Dead letters with their copies confirmed removed by one `basic.ack` (`multiple` set)
#: at most, while the pass holds none it leaves in place.
_ACK_BATCH = 128


@dataclasses.dataclass
class _Copy:
    """A dead letter's copy: what goes out and, once it went, its confirmation (or why it
    could not go)."""

    outgoing: Outgoing
    #: The broker's answer, due by `deadline` (event loop time); None until published.
    confirmation: asyncio.Future[Any] | None = None
    deadline: float = 0.0
    #: Why it could not be published.
    failure: BaseException | None = None


@dataclasses.dataclass
class _Pending:
    """A dead letter read and not yet settled, in DLQ order: its copy to publish or in
    flight (`copy`), or left in place (`copy` is None)."""

    message: DeliveredMessage
    letter: DeadLetterInfo
    copy: _Copy | None


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
        #: Copies published together, in one write: one with a rate limit.
        self._batch = min(self._window, _PUBLISH_BATCH)
        #: Copies in `_pending` not published yet, in DLQ order.
        self._unsent: list[_Copy] = []
        self._publisher: AbstractChannel | None = None
        #: The publishing channel's own aiormq channel: copies go out on it directly.
        self._publishing: aiormq.abc.AbstractChannel | None = None
        self._replayed: list[str] = []
        self._failed: list[str] = []
        self._replayed_count = 0
        self._failed_count = 0
        self._reasons: dict[str, str] = {}
        #: Dead letters of this pass read and not yet settled, in DLQ order.
        self._pending: collections.deque[_Pending] = collections.deque()
        #: Copies in `_pending`.
        self._flying = 0
        #: Dead letters whose copies are confirmed, in DLQ order, not yet removed: the
        #: next `_remove_confirmed()` removes them with one `basic.ack` (`multiple` set).
        self._removable: list[tuple[DeliveredMessage, str]] = []
        #: Whether a `basic.ack` with `multiple` set removes only what it should: no
        #: dead letter the pass leaves in place has been read on its channel.
        self._multiple = False
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
        return self._passed + self._removed + len(self._removable)

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
        # The dead letters held again are on this channel, unacked, ahead of the rest. One
        # copy at a time (a rate limit), each dead letter goes before the next is read.
        self._multiple = rehold == 0 and self._window > 1
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
                        await ack(message)
                        self._removed += 1
                        continue
                if not self._chosen(letter) or self._dry_run:
                    self._pending.append(_Pending(message, letter, None))
                elif not await self._wait_for_slot(held_since):
                    return _PassEnd.RELEASED
                else:
                    copy = _Copy(self._outgoing(message, letter))
                    self._pending.append(_Pending(message, letter, copy))
                    self._unsent.append(copy)
                    self._flying += 1
                    if len(self._unsent) >= self._batch:
                        await self._send()
                if self._flying >= self._window:
                    # A batch's worth of the oldest is settled while the rest are in
                    # flight; the next batch then goes out in one write.
                    await self._send()
                    while self._flying > self._window - self._batch:
                        await self._settle_oldest()
                while self._pending and not self._flying:
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
    ) -> AsyncGenerator[DeliveredMessage]:
        """The dead letters left to read in this pass, from the head (the passed over
        included): one `basic.get` each with a rate limit (nothing read ahead of need),
        else a window at a time."""
        assert self._total is not None
        count = self._total - self._removed
        if self._read_bound is not None:
            chosen_left = self._read_bound - self._replayed_count
            count = min(count, self._passed + len(self._unsettled) + chosen_left)
        if self._window == 1:
            return _one_by_one(browse, queue, count)
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
            await self._leave(letter)
        else:
            self._flying -= 1
            copy = pending.copy
            if copy.confirmation is None and copy.failure is None:
                await self._send()
            replayed = await self._confirmed(copy, letter, alone=self._window == 1)
            if not replayed and self._window > 1 and not self._stopped:
                # A copy in a window also fails when another closed the channel: it gets a
                # turn of its own on a fresh one before it counts as failed.
                copy = _Copy(copy.outgoing)
                await self._publish([copy])
                replayed = await self._confirmed(copy, letter, alone=True)
            if replayed:
                self._replayed_count += 1
                self._record(self._replayed, letter)
                # The copy is confirmed: only now does the dead letter go.
                if self._multiple:
                    self._removable.append((pending.message, letter.id))
                    if len(self._removable) >= _ACK_BATCH:
                        await self._remove_confirmed()
                else:
                    # Should the channel be gone, the dead letter is back in the DLQ,
                    # right after the ones passed over, and the next pass removes it.
                    self._unsettled.appendleft((letter.id, True))
                    await ack(pending.message)
                    self._unsettled.popleft()
                    self._removed += 1
            else:
                self._failed_count += 1
                self._record(self._failed, letter)
                await self._leave(letter)
        if self._on_progress is not None and self._total is not None:
            self._on_progress(self._read, self._total)

    async def _leave(self, letter: DeadLetterInfo) -> None:
        """Leave `letter` in place: held on the pass's channel from now on, so the dead
        letters before it are removed first, and later ones one `basic.ack` each."""
        await self._remove_confirmed()
        self._multiple = False
        self._passed += 1

    async def _remove_confirmed(self) -> None:
        """Remove the dead letters whose copies are confirmed (`_removable`) with one
        `basic.ack`, `multiple` set: the pass's channel holds no dead letter before the
        last of them that is to stay."""
        if not self._removable:
            return
        last = self._removable[-1][0]
        removed = len(self._removable)
        # Should the channel be gone, they are back in the DLQ, in order, right after the
        # ones passed over, and the next pass removes them (their copies are confirmed).
        self._unsettled.extendleft((i, True) for _, i in reversed(self._removable))
        self._removable.clear()
        await ack(last, multiple=True)
        for _ in range(removed):
            self._unsettled.popleft()
        self._removed += removed

    async def _drain(self) -> None:
        """Settle every dead letter read; when the pass's channel is gone, wait for the
        copies in flight and note, in order, which were confirmed (see `_unsettled`)."""
        try:
            while self._pending:
                await self._settle_oldest()
            await self._remove_confirmed()
        except TRANSPORT_ERRORS:
            # Those whose removal failed are first in `_unsettled` already; those whose
            # removal was not sent yet come next.
            self._unsettled.extend((i, True) for _, i in self._removable)
            self._removable.clear()
            self._flying = 0
            # Copies not published yet never will be: their dead letters are back in the DLQ.
            self._unsent.clear()
            for pending in self._pending:
                confirmed = False
                copy = pending.copy
                if copy is not None and (copy.confirmation or copy.failure) is not None:
                    confirmed = await self._confirmed(copy, pending.letter, alone=True)
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

    async def _open_publisher(self) -> aiormq.abc.AbstractChannel:
        publishing = self._publishing
        if self._publisher is None or publishing is None or publishing.is_closed:
            if self._publisher is not None:
                await _close_quietly(self._publisher)
                self._publisher = self._publishing = None
            publisher = await self._dlq._channel(confirms=True)
            self._publisher = publisher
            try:
                publishing = await publisher.get_underlay_channel()
            except TRANSPORT_ERRORS as exc:
                raise ConnectionLost(f"lost the publishing channel: {exc}") from exc
            self._publishing = publishing
        return publishing

    def _outgoing(self, message: DeliveredMessage, letter: DeadLetterInfo) -> Outgoing:
        """The copy of a dead letter: its body and properties (those aio-pika would send
        for the same `aio_pika.Message`: an empty string is None, no priority is 0),
        persistent, without the failure's headers."""
        read = message.header.properties
        headers = {k: v for k, v in letter.headers.items() if k not in REPLAY_DROPPED_HEADERS}
        properties = aiormq.spec.Basic.Properties(
            headers=headers,
            content_type=read.content_type,
            content_encoding=read.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            priority=read.priority or 0,
            correlation_id=read.correlation_id or None,
            reply_to=read.reply_to or None,
            message_id=read.message_id or None,
            timestamp=read.timestamp,
            message_type=read.message_type or None,
            app_id=read.app_id or None,
            # The broker refuses a copy naming another user than the one publishing it.
            user_id=copyable_user_id(read.user_id or None, self._user),
        )
        return letter.queue, message.body, properties

    async def _send(self) -> None:
        """Publish the copies not published yet (`_unsent`), in one write."""
        unsent, self._unsent = self._unsent, []
        if unsent:
            await self._publish(unsent)

    async def _publish(self, copies: list[_Copy]) -> None:
        """Publish `copies` on the publishing channel, in order, in one write: each gets
        its confirmation, due in `_CONFIRM_TIMEOUT`, or the reason it could not go."""
        deadline = asyncio.get_running_loop().time() + _CONFIRM_TIMEOUT
        try:
            publishing = await self._open_publisher()
            confirmations = await publish_batch(publishing, [c.outgoing for c in copies])
        except ConnectionLost as exc:
            self._stopped = str(exc)
            for copy in copies:
                copy.failure = exc
            return
        except TRANSPORT_ERRORS as exc:
            # The channel closed (a refusal of an earlier copy): the next gets a fresh one.
            for copy in copies:
                copy.failure = exc
            return
        for copy, confirmation in zip(copies, confirmations, strict=True):
            copy.confirmation = confirmation
            copy.deadline = deadline

    async def _confirmed(self, copy: _Copy, letter: DeadLetterInfo, *, alone: bool) -> bool:
        """Whether the broker confirmed `copy` (in time)."""
        failure = copy.failure
        confirmation = copy.confirmation
        if failure is None and confirmation is not None and confirmation.done():
            # Answered already (the common case in a window): no timer needed.
            if confirmation.cancelled():
                failure = asyncio.CancelledError("the confirmation was cancelled")
            else:
                failure = confirmation.exception()
        elif failure is None:
            assert confirmation is not None
            try:
                async with asyncio.timeout_at(copy.deadline):
                    await confirmation
            except (aio_pika.exceptions.DeliveryError, TimeoutError, *TRANSPORT_ERRORS) as exc:
                failure = exc
        if failure is None:
            return True
        # Not confirmed: the dead letter stays. A refusal that closed the channel is the
        # broker's verdict on this copy; the next one gets a fresh channel. In a window,
        # the copy gets a turn alone before it counts as failed.
        logger.log(
            logging.WARNING if alone else logging.DEBUG,
            "dead letter %r was not replayed (its copy was not confirmed: %s: %s); it stays in %s",
            letter.id,
            type(failure).__name__,
            failure,
            self._dlq.name,
        )
        return False


async def _one_by_one(
    browse: AbstractChannel, queue: AbstractQueue, count: int
) -> AsyncGenerator[DeliveredMessage]:
    """At most `count` dead letters from the head, one `basic.get` each, only when asked
    for the next: nothing is checked out ahead of need."""
    for _ in range(count):
        message = await get_one(browse, queue)
        if message is None:
            return
        yield message


async def ack(message: DeliveredMessage, *, multiple: bool = False) -> None:
    """Remove a dead letter read unacknowledged (with `multiple`, every one its channel
    read up to it as well)."""
    tag = message.delivery_tag
    assert tag is not None
    await message.channel.basic_ack(tag, multiple=multiple)


async def get_one(channel: AbstractChannel, queue: AbstractQueue) -> DeliveredMessage | None:
    """The dead letter at the head of `queue`, left unacknowledged (one `basic.get`), or
    None when there is none ready."""
    underlay = await channel.get_underlay_channel()
    message = await underlay.basic_get(queue.name, no_ack=False, timeout=5)
    if isinstance(message.delivery, aiormq.spec.Basic.GetEmpty):
        return None
    return message


async def _close_quietly(channel: AbstractChannel) -> None:
    """Close `channel`; one the broker or a lost connection closed already is fine."""
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await channel.close()
