"""`AckCoalescer`: the acks of one consumer channel, sent as few `basic.ack` frames as is safe.

Every ack is a frame the client encodes and writes (a `send()` of its own when the socket is
idle) and the broker parses. Acks that complete within a few turns of the event loop share
a frame instead: one `basic.ack multiple=True` up to the highest of them, when that covers
no delivery still in flight. An ack waits at most `FLUSH_TURNS` turns and `MAX_ACK_DELAY`
seconds for company, and not at all when the channel's whole prefetch window is waiting for
acks (the broker sends nothing more until they arrive).

Why a multiple ack never acks too much (AMQP 0-9-1: `multiple` acks every *outstanding*
delivery of the channel with a tag up to and including the given one):

- Every delivery of the channel is registered (`delivered`) before anything can settle it,
  and tags must arrive as 1, 2, 3, ... (RabbitMQ numbers each channel's deliveries so). A
  tag that skips a number turns coalescing off for the channel: a delivery this class never
  saw is never covered.
- A delivery is *unfinished* from its registration until its ack is handed to the flush, or
  until its nack frame has been written. The flush covers only acks below the lowest
  unfinished tag, so a multiple ack reaches no delivery still being processed, being
  republished (its copy not yet confirmed), or whose nack has not gone out ahead of it. A
  nack that did not go out for sure (it failed or was cancelled) keeps its tag unfinished
  for the rest of the channel's life: nothing above it is covered any more.
- Acks above the lowest unfinished tag are sent one by one in the same flush: nothing waits
  for a slow message. One flush runs at a time per channel, so the frames of two flushes
  never overtake each other.

`ack()` hands the ack over and returns at once; the frame that carries it is written within
`FLUSH_TURNS` turns of the loop (`MAX_ACK_DELAY` seconds), and `wait_idle()` waits until
every ack handed over has been written, which the backend does before the pool's shutdown
returns and before the connection closes. An AMQP ack is never confirmed by the broker, so
waiting for the write told a caller nothing more than that the frame reached the socket;
not waiting saves each message a future and a wake-up. A connection loss loses the acks not
yet written, exactly as it did one by one: the broker redelivers those messages, and each
lost ack is reported to `on_failed`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel as RawChannel

__all__ = ["AckCoalescer"]

logger = logging.getLogger("foxwork.backends.rabbitmq")

#: Turns of the event loop an ack may wait for more acks to share its frame. Each turn runs
#: every task that was ready, so a busy consumer fills a frame with many acks.
FLUSH_TURNS = 8
#: Seconds after which an ack stops waiting for company (checked between turns).
MAX_ACK_DELAY = 0.002

#: Awaits one settlement on a channel (the backend's guard against a wedged writer).
SettleOn = Callable[[RawChannel, Awaitable[None]], Awaitable[None]]
#: Told of an ack that could not be written: what the caller passed to `ack()`, and why.
OnFailed = Callable[[Any, BaseException], None]
#: A delivery tag whose ack is waiting to be written, and what `ack()` was given with it.
_Pending = tuple[int, Any]


async def _plain(channel: RawChannel, settlement: Awaitable[None]) -> None:
    await settlement


def _log_failed(ref: Any, error: BaseException) -> None:
    logger.info("an ack could not be written (%s: %s)", type(error).__name__, error)


class AckCoalescer:
    """Coalesces the acks of one consumer channel (see the module docstring).

    Args:
        channel: the consumer's channel (one consumer per channel).
        prefetch: the channel's prefetch count (0: unlimited). When that many deliveries
            are unacked the broker sends no more, so their acks go out without waiting.
        settle_on: awaits a settlement on the channel; by default just awaits it.
        on_failed: told of each ack that could not be written, with what `ack()` was given
            for it; by default it is logged.
    """

    __slots__ = (
        "_channel",
        "_coalesce",
        "_flusher",
        "_last_tag",
        "_on_failed",
        "_pending",
        "_prefetch",
        "_settle_on",
        "_settled",
        "_unfinished",
        "frames",
        "multiple_frames",
    )

    def __init__(
        self,
        channel: RawChannel,
        *,
        prefetch: int = 0,
        settle_on: SettleOn = _plain,
        on_failed: OnFailed = _log_failed,
    ) -> None:
        self._channel = channel
        self._prefetch = prefetch
        self._settle_on = settle_on
        self._on_failed = on_failed
        # Registered tags not yet finished, in ascending order (an OrderedDict: its first
        # key is found in O(1) however many keys were deleted before it).
        self._unfinished: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._last_tag = 0
        self._coalesce = True
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        # Set when nothing is outstanding any more; made only while `wait_settled()` waits.
        self._settled: asyncio.Event | None = None
        #: `basic.ack` frames sent, and how many of them had `multiple` set.
        self.frames = 0
        self.multiple_frames = 0

    def __repr__(self) -> str:
        return (
            f"<AckCoalescer channel={self._channel.number} unfinished={len(self._unfinished)} "
            f"pending={len(self._pending)} coalescing={self._coalesce}>"
        )

    @property
    def channel(self) -> RawChannel:
        return self._channel

    @property
    def coalescing(self) -> bool:
        """False once a tag skipped a number: every ack then goes out on its own."""
        return self._coalesce

    def delivered(self, tag: int) -> None:
        """Register a delivery of the channel; call it in the order deliveries arrive."""
        if tag != self._last_tag + 1 and self._coalesce:
            self._coalesce = False
            logger.warning(
                "delivery tag %d on channel %d follows %d: acks on this channel are no longer "
                "coalesced",
                tag,
                self._channel.number,
                self._last_tag,
            )
        if tag > self._last_tag:
            self._last_tag = tag
        self._unfinished[tag] = None

    def ack(self, tag: int, ref: Any = None) -> None:
        """Hand over the ack of `tag`: it is written with the acks of the next few loop
        turns. `ref` is what `on_failed` gets if it cannot be written.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: the channel is closed already.
        """
        channel = self._channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel} closed")
        self._unfinished.pop(tag, None)
        self._pending.append((tag, ref))
        if self._flusher is None:
            # A task's first step runs in the next turn of the loop: every ack made in this
            # turn is in the batch by then.
            self._flusher = asyncio.create_task(self._flush())

    async def nack(self, tag: int, *, requeue: bool) -> None:
        """Nack `tag` at once (never coalesced), then let later multiple acks cover it."""
        channel = self._channel
        await self._settle_on(channel, channel.basic_nack(tag, requeue=requeue))
        # Written: a multiple ack sent from now on no longer finds it outstanding. (On an
        # error it stays unfinished: it may still be outstanding, so it is never covered.)
        self._unfinished.pop(tag, None)
        self._check_settled()

    async def wait_settled(self) -> None:
        """Wait until every delivery registered so far is settled and its ack written (a
        nack that failed keeps its delivery unsettled)."""
        while self._unfinished or self._pending or self._flusher is not None:
            if self._settled is None or self._settled.is_set():
                self._settled = asyncio.Event()
            await self._settled.wait()

    def _check_settled(self) -> None:
        if self._settled is not None and not (
            self._unfinished or self._pending or self._flusher is not None
        ):
            self._settled.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every ack handed over so far was written (or failed), for at most
        `timeout` seconds; returns False when some are still waiting."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._flusher is not None:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait((self._flusher,), timeout=left)
        return True

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                # Let the messages already running finish and join the batch: a few turns of
                # the loop at most, and none when the broker waits for these very acks.
                deadline = loop.time() + MAX_ACK_DELAY
                for _ in range(FLUSH_TURNS):
                    if self._window_full() or loop.time() >= deadline:
                        break
                    await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                # Taken together with the batch, before any await: a tag acked after this
                # point was unfinished now, so it lies above everything this flush covers.
                if self._coalesce:
                    lowest = next(iter(self._unfinished), None)
                    covered = [i for i in batch if lowest is None or i[0] < lowest]
                    alone = [i for i in batch if lowest is not None and i[0] > lowest]
                else:
                    covered, alone = [], batch
                await self._send(covered, alone)
        finally:
            self._flusher = None
            # Cancelled (the loop is closing): nobody is left to send the rest.
            self._pending = []
            self._check_settled()

    def _window_full(self) -> bool:
        # The broker sends no more until some of these acks arrive: waiting gains nothing.
        prefetch = self._prefetch
        return 0 < prefetch <= len(self._unfinished) + len(self._pending)

    async def _send(self, covered: list[_Pending], alone: list[_Pending]) -> None:
        written = 0  # of covered + alone, in that order
        try:
            if covered:
                top = max(tag for tag, _ in covered)
                await self._write(top, multiple=len(covered) > 1)
                written = len(covered)
            for tag, _ in alone:
                await self._write(tag, multiple=False)
                written += 1
        except Exception as exc:
            for _, ref in [*covered, *alone][written:]:
                self._on_failed(ref, exc)

    async def _write(self, tag: int, *, multiple: bool) -> None:
        channel = self._channel
        await self._settle_on(channel, channel.basic_ack(tag, multiple=multiple))
        self.frames += 1
        if multiple:
            self.multiple_frames += 1
