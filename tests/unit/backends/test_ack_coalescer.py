"""`AckCoalescer` against a fake channel that plays the broker's side of acknowledgements.

The fake checks every frame as RabbitMQ does (an ack or nack of a tag that is not
outstanding is a channel error) and, in addition, that a multiple ack only reaches
deliveries whose ack was asked for: a multiple ack that covered a delivery still in flight,
or one being nacked, would be a lost message.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import aiormq
import pytest

from foxwork.backends.rabbitmq.acks import FLUSH_TURNS, MAX_ACK_DELAY, AckCoalescer


class BrokerSaysNo(AssertionError):
    """A frame RabbitMQ would answer with PRECONDITION_FAILED, or one that loses a message."""


class FakeChannel:
    """The channel of one consumer, and the broker's bookkeeping behind it."""

    number = 1

    def __init__(self) -> None:
        self.is_closed = False
        self.outstanding: set[int] = set()
        self.asked_to_ack: set[int] = set()
        self.acked: set[int] = set()
        self.nacked: dict[int, bool] = {}
        #: ("ack", tag, multiple) or ("nack", tag, requeue), in the order written.
        self.frames: list[tuple[str, int, bool]] = []
        #: When set, a nack waits for it before it is written.
        self.nack_gate: asyncio.Event | None = None
        self.fail_nacks = False
        #: Turns of the loop a nack takes to be written.
        self.nack_turns: Callable[[], int] = lambda: 1
        #: Close the channel just before the frame with this index is written.
        self.close_before_frame: int | None = None

    def deliver(self, acks: AckCoalescer, tag: int) -> None:
        self.outstanding.add(tag)
        acks.delivered(tag)

    def _write(self) -> None:
        if self.close_before_frame is not None and len(self.frames) >= self.close_before_frame:
            self.is_closed = True
        if self.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("channel closed")

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        await asyncio.sleep(0)  # handing a frame to the writer takes a turn of the loop
        self._write()
        if tag not in self.outstanding:
            raise BrokerSaysNo(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        covered = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        lost = covered - self.asked_to_ack
        if lost:
            raise BrokerSaysNo(f"ack {tag} (multiple={multiple}) would ack {sorted(lost)} too")
        self.outstanding -= covered
        self.acked |= covered
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        if self.nack_gate is not None:
            await self.nack_gate.wait()
        for _ in range(self.nack_turns()):
            await asyncio.sleep(0)
        if self.fail_nacks:
            raise aiormq.exceptions.ChannelInvalidStateError("nack failed")
        self._write()
        if tag not in self.outstanding:
            raise BrokerSaysNo(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        self.outstanding.discard(tag)
        self.nacked[tag] = requeue
        self.frames.append(("nack", tag, requeue))

    def ack_frames(self) -> list[tuple[int, bool]]:
        return [(tag, flag) for kind, tag, flag in self.frames if kind == "ack"]


def coalescer(
    on_failed: Callable[[Any, BaseException], None] | None = None,
) -> tuple[AckCoalescer, FakeChannel]:
    channel = FakeChannel()
    channel_any: Any = channel
    if on_failed is None:
        return AckCoalescer(channel_any), channel
    return AckCoalescer(channel_any, on_failed=on_failed), channel


async def ack(acks: AckCoalescer, channel: FakeChannel, tag: int) -> None:
    """Ack `tag` as the backend does, then wait until it is written (or failed)."""
    channel.asked_to_ack.add(tag)
    acks.ack(tag, tag)
    await acks.wait_idle()


async def test_acks_that_finish_together_share_one_multiple_ack_frame() -> None:
    # Given ten deliveries
    acks, channel = coalescer()
    for tag in range(1, 11):
        channel.deliver(acks, tag)

    # When all ten finish in the same turn of the loop
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(1, 11)))

    # Then one frame acked them all
    assert channel.ack_frames() == [(10, True)]
    assert channel.acked == set(range(1, 11)) and not channel.outstanding


async def test_a_lone_ack_is_sent_without_multiple() -> None:
    acks, channel = coalescer()
    channel.deliver(acks, 1)
    await ack(acks, channel, 1)
    assert channel.ack_frames() == [(1, False)]


async def test_a_delivery_still_in_flight_is_never_covered_by_a_multiple_ack() -> None:
    # Given ten deliveries, the first one still being processed
    acks, channel = coalescer()
    for tag in range(1, 11):
        channel.deliver(acks, tag)

    # When the nine others finish
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(2, 11)))

    # Then each was acked on its own, and the first is still outstanding
    assert channel.ack_frames() == [(tag, False) for tag in range(2, 11)]
    assert channel.outstanding == {1}

    # When it finishes too, and later deliveries finish together
    await ack(acks, channel, 1)
    for tag in range(11, 16):
        channel.deliver(acks, tag)
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(11, 16)))

    # Then a multiple ack covers the later ones (the acked tags below are no longer
    # outstanding, so it touches nothing else)
    assert channel.ack_frames()[-2:] == [(1, False), (15, True)]
    assert not channel.outstanding


async def test_acks_below_a_delivery_in_flight_still_share_a_frame() -> None:
    acks, channel = coalescer()
    for tag in range(1, 8):
        channel.deliver(acks, tag)
    # 1-4 finish, 5 is in flight, 6-7 finish
    await asyncio.gather(*(ack(acks, channel, tag) for tag in (1, 2, 3, 4, 6, 7)))
    assert channel.ack_frames() == [(4, True), (6, False), (7, False)]
    assert channel.outstanding == {5}


async def test_a_nack_not_yet_written_is_never_covered_by_a_multiple_ack() -> None:
    # Given five deliveries, and a nack (requeue) of the third that is slow to be written
    acks, channel = coalescer()
    for tag in range(1, 6):
        channel.deliver(acks, tag)
    channel.nack_gate = asyncio.Event()
    nack = asyncio.create_task(acks.nack(3, requeue=True))
    await asyncio.sleep(0)

    # When the others finish meanwhile
    await asyncio.gather(*(ack(acks, channel, tag) for tag in (1, 2, 4, 5)))

    # Then no ack reached the third, and its nack is not swallowed once written
    assert channel.ack_frames() == [(2, True), (4, False), (5, False)]
    assert channel.outstanding == {3}
    channel.nack_gate.set()
    await nack
    assert channel.nacked == {3: True}

    # and later acks may be multiple again: the nacked tag is no longer outstanding
    for tag in range(6, 9):
        channel.deliver(acks, tag)
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(6, 9)))
    assert channel.ack_frames()[-1] == (8, True)
    assert not channel.outstanding


async def test_a_nack_that_may_not_have_gone_out_is_never_covered_afterwards() -> None:
    # Given a nack that failed (it may or may not have reached the broker)
    acks, channel = coalescer()
    for tag in range(1, 4):
        channel.deliver(acks, tag)
    channel.fail_nacks = True
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await acks.nack(1, requeue=True)

    # When later deliveries finish together
    await asyncio.gather(*(ack(acks, channel, tag) for tag in (2, 3)))

    # Then each is acked on its own: nothing ever covers the first
    assert channel.ack_frames() == [(2, False), (3, False)]
    assert channel.outstanding == {1}


async def test_a_delivery_tag_that_skips_a_number_turns_coalescing_off() -> None:
    # Given deliveries 1, 2, then 4 (3 was never seen by the coalescer)
    acks, channel = coalescer()
    for tag in (1, 2):
        channel.deliver(acks, tag)
    channel.outstanding.add(3)
    channel.deliver(acks, 4)

    # When all it saw finish together
    await asyncio.gather(*(ack(acks, channel, tag) for tag in (1, 2, 4)))

    # Then every ack went out on its own, and 3 is untouched
    assert not acks.coalescing
    assert sorted(channel.ack_frames()) == [(1, False), (2, False), (4, False)]
    assert channel.outstanding == {3}


async def test_an_ack_on_a_closed_channel_raises_at_once() -> None:
    acks, channel = coalescer()
    channel.deliver(acks, 1)
    channel.is_closed = True
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await ack(acks, channel, 1)
    assert not channel.frames


async def test_when_the_channel_closes_mid_flush_every_unwritten_ack_is_reported() -> None:
    # Given six deliveries, the first in flight (so the others go out one frame each), and
    # a channel that closes after two frames
    failures: list[tuple[Any, BaseException]] = []
    acks, channel = coalescer(on_failed=lambda ref, exc: failures.append((ref, exc)))
    for tag in range(1, 7):
        channel.deliver(acks, tag)
    channel.close_before_frame = 2

    # When the other five finish together
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(2, 7)))

    # Then the two written acks went out and the three others were reported as failed,
    # each with what its ack() was given (their messages stay unacked: the broker
    # redelivers them)
    assert channel.acked == {2, 3}
    assert [ref for ref, _ in failures] == [4, 5, 6]
    assert all(isinstance(e, aiormq.exceptions.ChannelInvalidStateError) for _, e in failures)


async def test_an_ack_is_handed_over_at_once_and_written_within_a_few_turns() -> None:
    # Given a delivery
    acks, channel = coalescer()
    channel.deliver(acks, 1)
    channel.asked_to_ack.add(1)

    # When it is acked, Then ack() returns before anything is written
    acks.ack(1)
    assert channel.frames == []
    # and waiting for the coalescer sees it written
    assert await acks.wait_idle(timeout=5) is True
    assert channel.ack_frames() == [(1, False)]


async def test_an_ack_waits_for_company_a_few_turns_at_most() -> None:
    # Given a delivery that finishes while others stay in flight
    acks, channel = coalescer()
    for tag in range(1, 4):
        channel.deliver(acks, tag)
    loop = asyncio.get_running_loop()
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    began = loop.time()

    # When it is acked
    await ack(acks, channel, 1)
    counter.cancel()

    # Then the ack left after a bounded number of turns (the flush task's first step, the
    # turns it waits, and the write), well within the delay bound
    assert channel.ack_frames() == [(1, False)]
    assert turns <= FLUSH_TURNS + 3
    assert loop.time() - began < MAX_ACK_DELAY + 0.05


async def test_acks_do_not_wait_when_the_whole_prefetch_window_waits_for_them() -> None:
    # Given a channel with a prefetch of 3, and its 3 deliveries (the broker sends no more
    # until one is acked)
    channel = FakeChannel()
    channel_any: Any = channel
    acks = AckCoalescer(channel_any, prefetch=3)
    for tag in range(1, 4):
        channel.deliver(acks, tag)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())

    # When all three finish
    await asyncio.gather(*(ack(acks, channel, tag) for tag in range(1, 4)))
    counter.cancel()

    # Then their frame left at once, without waiting for company (the turns are the acks,
    # the flush's first step, the write, the flush's end and the wake-ups of the waiters)
    assert channel.ack_frames() == [(3, True)]
    assert turns <= 6 < FLUSH_TURNS


async def test_waiting_for_unwritten_acks_gives_up_after_the_timeout() -> None:
    # Given an ack whose frame cannot be written (the writer is stuck)
    acks, channel = coalescer()
    channel.deliver(acks, 1)
    stuck = asyncio.Event()

    async def never_written(tag: int, multiple: bool = False) -> None:
        await stuck.wait()

    channel_any: Any = channel
    channel_any.basic_ack = never_written
    waiting = asyncio.create_task(ack(acks, channel, 1))
    await asyncio.sleep(0)

    # When someone waits for the acks to be written, Then it gives up after the timeout
    assert await acks.wait_idle(timeout=0.05) is False
    # and once the writer moves again, every ack is written
    stuck.set()
    assert await acks.wait_idle(timeout=5) is True
    await waiting


@pytest.mark.parametrize("seed", range(40))
async def test_random_interleavings_never_ack_a_message_that_was_not_finished(seed: int) -> None:
    """Deliveries arrive while others finish (ack, nack with or without requeue, slow or
    quick) in random order; the fake broker checks every frame. In the end exactly the
    messages asked to be acked are acked, exactly those nacked are nacked, and those still
    in flight are outstanding."""
    rng = random.Random(seed)
    acks, channel = coalescer()
    channel.nack_turns = lambda: rng.randrange(4)
    in_flight: list[int] = []
    tasks: list[asyncio.Task[None]] = []
    nacked: dict[int, bool] = {}
    next_tag = 1

    async def finish(tag: int, how: str, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        if how == "ack":
            await ack(acks, channel, tag)
        else:
            await acks.nack(tag, requeue=how == "requeue")

    for _ in range(400):
        if rng.random() < 0.55 or not in_flight:
            channel.deliver(acks, next_tag)
            in_flight.append(next_tag)
            next_tag += 1
        else:
            tag = in_flight.pop(rng.randrange(len(in_flight)))
            how = rng.choices(("ack", "requeue", "reject"), weights=(8, 1, 1))[0]
            if how != "ack":
                nacked[tag] = how == "requeue"
            tasks.append(asyncio.create_task(finish(tag, how, rng.randrange(12))))
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    await acks.wait_idle()

    assert channel.acked == channel.asked_to_ack
    assert channel.nacked == nacked
    assert channel.outstanding == set(in_flight)
    # and it did coalesce
    assert len(channel.ack_frames()) < len(channel.acked)
