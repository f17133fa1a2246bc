"""`PublisherChannels` and `Turnstile`: publishes waiting for a channel to open take it in
the order they came, and one that arrives while any of them waits queues behind them.

The channels here are stand-ins recording which publish took them, in what order: what
the broker then does with a channel's publishes is covered by tests/rabbitmq/
test_publish_order.py.
"""

from __future__ import annotations

import asyncio

from foxwork._turnstile import Turnstile
from foxwork.backends.rabbitmq.publishing import PublisherChannels


class Channel:
    """A stand-in for an open aiormq channel: records the publishes that took it."""

    def __init__(self) -> None:
        self.is_closed = False
        self.taken: list[str] = []


class Opener:
    """Opens `Channel`s, each once `release` is set; `was_opened` is set by the first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.was_opened = asyncio.Event()
        self.opened: list[Channel] = []

    async def __call__(self) -> Channel:
        await self.release.wait()
        channel = Channel()
        self.opened.append(channel)
        self.was_opened.set()
        return channel


async def take(channels: PublisherChannels, message_id: str) -> None:
    async with channels.channel_for(message_id) as channel:
        channel.taken.append(message_id)  # type: ignore[attr-defined]


async def test_a_publish_arriving_once_the_channel_is_open_waits_behind_those_queued() -> None:
    # Given publishes waiting while the first channel opens
    opener = Opener()
    channels = PublisherChannels(opener)  # type: ignore[arg-type]
    first = [asyncio.ensure_future(take(channels, f"m-{n}")) for n in range(10)]
    await asyncio.sleep(0)

    # When the channel opens, and more publishes arrive while the first ones resume
    opener.release.set()
    await opener.was_opened.wait()
    later = [asyncio.ensure_future(take(channels, f"m-{n}")) for n in range(10, 20)]
    await asyncio.gather(*first, *later)

    # Then all took the one channel, in the order they came
    [channel] = opener.opened
    assert channel.taken == [f"m-{n}" for n in range(20)]


async def test_with_a_channel_open_and_nobody_waiting_a_publish_takes_it_at_once() -> None:
    opener = Opener()
    opener.release.set()
    channels = PublisherChannels(opener)  # type: ignore[arg-type]
    await take(channels, "m-0")

    # A publish that finds the channel free takes it without yielding to the loop
    entered = channels.channel_for("m-1").__aenter__()
    try:
        entered.send(None)
    except StopIteration as done:
        assert done.value is opener.opened[0]
    else:
        entered.close()
        raise AssertionError("channel_for waited although the channel was free")


async def test_two_publishes_of_one_id_still_go_on_two_channels() -> None:
    opener = Opener()
    opener.release.set()
    channels = PublisherChannels(opener)  # type: ignore[arg-type]
    taken: list[object] = []
    both, held = asyncio.Event(), asyncio.Event()

    async def hold(message_id: str) -> None:
        async with channels.channel_for(message_id) as channel:
            taken.append(channel)
            if len(taken) == 2:
                both.set()
            await held.wait()

    tasks = [asyncio.ensure_future(hold("same")) for _ in range(2)]
    await both.wait()
    held.set()
    await asyncio.gather(*tasks)

    assert taken[0] is not taken[1] and len(opener.opened) == 2


async def test_a_turnstile_lets_callers_through_in_the_order_they_came() -> None:
    gate = Turnstile()
    passed: list[int] = []
    ready = asyncio.Event()

    async def caller(n: int) -> None:
        async with gate.turn():
            await ready.wait()
            passed.append(n)

    tasks = [asyncio.ensure_future(caller(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert gate.queued == 5
    ready.set()
    await asyncio.gather(*tasks)

    assert passed == list(range(5)) and gate.queued == 0
