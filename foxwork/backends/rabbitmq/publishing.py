"""The publisher channels, and how copies the broker keeps refusing are bounded.

aiormq matches a `basic.return` to its publish by `message_id`: a channel remembers only
the latest delivery tag of each id. Two publishes of one id in flight on one channel (the
copies of a message a fanout exchange delivered to two queues, dead-lettered at once) would
have the return of the unroutable one charged to the other: the unroutable copy would count
as confirmed, and its original would be acked while the broker dropped the copy. So a
channel never carries two publishes of one id at a time (`PublisherChannels`); the broker
sends a publish's `basic.return` before its `basic.ack` on the same channel, and with one
publish per id per channel the return is attributed to exactly the publish it belongs to.

Publishes that find no channel open wait for one in the order they came, and a publish that
arrives while any of them still waits queues behind them, even once the channel is open:
the broker receives them in the order they were started (aiormq keeps a channel's publishes
in order from there). With a channel open and nobody waiting, a publish takes it at once.
Only a publish whose id is in flight on every channel lets others pass while it waits for
one of them to finish (the copies of one message are on different channels anyway).

A copy the broker refuses every time (for a property it validates, say) would send its
original back to the queue at once, forever. `RefusedCopies` counts refusals per message,
makes each requeue wait a growing pause, and past `REFUSED_COPY_LIMIT` tells the message
to stop requeueing: it is rejected, and the queue's dead-letter exchange takes it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

import aiormq
from aiormq.abc import AbstractChannel as RawChannel

from ..._turnstile import Turnstile
from ...errors import PublishNotConfirmed

__all__ = ["REFUSALS", "REFUSED_COPY_LIMIT", "CopyRefused", "PublisherChannels", "RefusedCopies"]

#: Publisher channels at most: as many publishes of one message id can be in flight at once
#: (one per queue a message was fanned out to); more wait for one of them to finish.
MAX_PUBLISHER_CHANNELS = 8
#: Refused copies of one message after which its original is rejected, not requeued.
REFUSED_COPY_LIMIT = 5
#: Seconds before the original of the first refused copy is requeued; doubles each time.
REFUSED_COPY_FIRST_PAUSE = 0.1
#: The longest pause before requeueing the original of a refused copy (seconds).
REFUSED_COPY_MAX_PAUSE = 2.0
#: Messages whose refusals are remembered (the oldest are forgotten first).
REFUSED_COPY_MEMORY = 10_000

#: Channel errors by which the broker refuses a publish for what it is, not for the state
#: of the broker: a copy refused so would be refused again.
REFUSALS = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
)


class CopyRefused(PublishNotConfirmed):
    """The broker refused a publish for what it is (or pamqp could not encode it): publishing
    it again would fail the same way."""


class _Lane:
    """One publisher channel and the message ids of the publishes in flight on it."""

    __slots__ = ("channel", "in_flight")

    def __init__(self, channel: RawChannel) -> None:
        self.channel = channel
        self.in_flight: set[str] = set()


class PublisherChannels:
    """Publisher channels on which no two publishes of one message id are in flight.

    Args:
        open_channel: opens a new channel in confirm mode (`basic.return` raising).
        limit: the most channels kept open at once.
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[RawChannel]],
        *,
        limit: int = MAX_PUBLISHER_CHANNELS,
    ) -> None:
        self._open_channel = open_channel
        self._limit = limit
        self._lanes: list[_Lane] = []
        # Publishes waiting for a channel to open, first come, first served.
        self._opening = Turnstile()
        self._freed: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    def forget(self) -> None:
        """Drop every channel (they died with their connection)."""
        self._lanes.clear()

    def channel_for(self, message_id: str | None) -> _Reservation:
        """A channel with no publish of `message_id` in flight, reserved for it until the
        `async with` block exits (after the broker answered, or the publish failed).

        Without a message id aiormq gives the publish a random one: any channel will do.
        """
        return _Reservation(self, message_id)

    def _release(self, lane: _Lane, message_id: str) -> None:
        lane.in_flight.discard(message_id)
        freed = self._freed.pop(message_id, None)
        if freed is not None and not freed.done():
            freed.set_result(None)

    def _free_lane(self, message_id: str | None) -> _Lane | None:
        for lane in self._lanes:
            if lane.channel.is_closed:
                self._lanes = [live for live in self._lanes if not live.channel.is_closed]
                return self._free_lane(message_id)
            if not message_id or message_id not in lane.in_flight:
                return lane
        return None

    async def _acquire(self, message_id: str | None) -> _Lane:
        while True:
            if self._opening.queued:
                # Publishes wait for a channel: this one goes behind them.
                lane = await self._lane_in_turn(message_id)
            else:
                lane = self._free_lane(message_id)
                if lane is None and len(self._lanes) < self._limit:
                    lane = await self._lane_in_turn(message_id)
            if lane is not None:
                if message_id:
                    # Reserved before any await: no other publish of this id can take it.
                    lane.in_flight.add(message_id)
                return lane
            # Every channel has a publish of this id in flight: wait for one to finish.
            assert message_id
            freed = self._freed.get(message_id)
            if freed is None:
                freed = self._freed[message_id] = asyncio.get_running_loop().create_future()
            await asyncio.wait((freed,))

    async def _lane_in_turn(self, message_id: str | None) -> _Lane | None:
        """A free channel, opened if need be, once the publishes queued before had theirs;
        None when every channel has a publish of `message_id` in flight."""
        async with self._opening.turn():
            # Publishes that arrive together share the channel the first one opens.
            lane = self._free_lane(message_id)
            if lane is None and len(self._lanes) < self._limit:
                lane = _Lane(await self._open_channel())
                self._lanes.append(lane)
            return lane


class _Reservation:
    """`async with channels.channel_for(message_id) as channel:` (a class rather than a
    generator: this is on the path of every publish)."""

    __slots__ = ("_channels", "_lane", "_message_id")
    _lane: _Lane

    def __init__(self, channels: PublisherChannels, message_id: str | None) -> None:
        self._channels = channels
        self._message_id = message_id

    async def __aenter__(self) -> RawChannel:
        self._lane = await self._channels._acquire(self._message_id)
        return self._lane.channel

    async def __aexit__(self, *exc_info: object) -> None:
        if self._message_id:
            self._channels._release(self._lane, self._message_id)


class RefusedCopies:
    """Refused copies per message id: the pause before each requeue, and the limit."""

    def __init__(self) -> None:
        self._counts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def confirmed(self, message_id: str) -> None:
        """A copy of the message was confirmed: its refusals are forgotten."""
        if self._counts:
            self._counts.pop(message_id, None)

    def refused(self, message_id: str) -> tuple[int, float]:
        """Count one more refused copy; returns the count and the pause (seconds) to wait
        before the original goes back to its queue."""
        count = self._counts.pop(message_id, 0) + 1
        self._counts[message_id] = count
        if len(self._counts) > REFUSED_COPY_MEMORY:
            self._counts.popitem(last=False)
        pause = min(REFUSED_COPY_FIRST_PAUSE * 2 ** min(count - 1, 16), REFUSED_COPY_MAX_PAUSE)
        return count, pause
