"""Publishes started in order reach the queue in that order, also those that wait for the
backend to open its publisher channel, or to check an exchange it has not published to yet;
and so do `Publisher.publish_many` and the spool drainer, which start many at once.

The publishes are started as tasks, in order: all at once, or half of them, then the rest
as soon as the channel is open (or the exchange checked), while most of the first half are
still waiting for it (as a caller that starts each publish as its input comes). No workaround of
`Publisher.publish_many` or of the spool drainer is involved: this is the backend alone.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from foxwork import OutboundMessage, Publisher, SpoolConfig
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.message import MessageProperties
from foxwork.spool import Drainer, Spool
from tests.harness.rabbitmq import find_free_port

from .support import RabbitProbe

#: Publishes started per test: enough that some arrive once the channel is open.
COUNT = 300

_exchange_numbers = itertools.count(1)


async def publish_in_order(
    publish: Callable[[int], Awaitable[None]], *, rest_once: Callable[[], bool] | None
) -> None:
    """Start `publish(0)`, `publish(1)`, … as tasks in that order, and await them all: all
    at once, or (`rest_once`) the first half, then the rest as soon as `rest_once()` is
    true, while most of the first half are still waiting."""
    tasks = [asyncio.ensure_future(publish(n)) for n in range(COUNT // 2)]
    if rest_once is not None:
        async with asyncio.timeout(10):
            # Looked at every turn of the loop: the waiters pass one per turn.
            while not rest_once():  # noqa: ASYNC110
                await asyncio.sleep(0)
        assert not any(task.done() for task in tasks[2:])
    tasks += [asyncio.ensure_future(publish(n)) for n in range(COUNT // 2, COUNT)]
    await asyncio.gather(*tasks)


@pytest.fixture
async def exchange(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> AsyncIterator[str]:
    """A direct exchange bound to `queue_name` (declared) with the queue's name, declared
    behind the backend's back: the backend has not published to it yet."""
    await backend.declare(queue_name)
    name = f"{queue_name}-ordered-{next(_exchange_numbers)}"
    async with probe.channel() as channel:
        declared = await channel.declare_exchange(name, durable=False, auto_delete=False)
        queue = await channel.declare_queue(queue_name, passive=True)
        await queue.bind(declared, routing_key=queue_name)
    yield name
    await probe.delete_exchanges(name)


async def numbers_in(probe: RabbitProbe, queue: str) -> list[int]:
    return [int(received.body) for received in await probe.take(queue)]


@pytest.mark.parametrize("later", [False, True], ids=["all-at-once", "rest-once-open"])
async def test_publishes_started_while_the_channel_opens_reach_the_queue_in_order(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str, later: bool
) -> None:
    # Given a connected backend that has no publisher channel open yet
    await backend.declare(queue_name)
    assert len(backend._publishers) == 0

    # When publishes to the queue are started in order
    async def publish(n: int) -> None:
        properties = MessageProperties(message_id=f"m-{n}")
        await backend.publish(queue_name, str(n).encode(), properties)

    def channel_open() -> bool:
        return len(backend._publishers) > 0

    await publish_in_order(publish, rest_once=channel_open if later else None)

    # Then the queue holds them in that order
    assert await numbers_in(probe, queue_name) == list(range(COUNT))


@pytest.mark.parametrize("later", [False, True], ids=["all-at-once", "rest-once-checked"])
async def test_publishes_to_an_exchange_not_used_yet_reach_the_queue_in_order(
    backend: RabbitMQBackend,
    probe: RabbitProbe,
    queue_name: str,
    exchange: str,
    later: bool,
) -> None:
    # Given a connected backend that has published neither on a channel nor to `exchange`
    assert len(backend._publishers) == 0 and exchange not in backend._exchanges

    # When publishes to that exchange are started in order
    async def publish(n: int) -> None:
        properties = MessageProperties(message_id=f"m-{n}")
        await backend.publish(queue_name, str(n).encode(), properties, exchange=exchange)

    def exchange_checked() -> bool:
        return exchange in backend._exchanges

    await publish_in_order(publish, rest_once=exchange_checked if later else None)

    # Then the queue holds them in that order
    assert await numbers_in(probe, queue_name) == list(range(COUNT))


async def test_publish_many_to_an_exchange_not_used_yet_keeps_the_order_given(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str, exchange: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given a publisher with a spool (not opened yet) over a backend that has not published
    publisher = Publisher(backend, spool=SpoolConfig(directory=tmp_path))
    items = [OutboundMessage(n, routing_key=queue_name, exchange=exchange) for n in range(COUNT)]

    # When the items are published at once, many confirms awaited together
    try:
        outcomes = await publisher.publish_many(items, max_in_flight=100)
    finally:
        await publisher.close()

    # Then each went straight to the broker, and the queue holds them in the order given
    assert all(outcome.confirmed for outcome in outcomes), outcomes[:3]
    assert await numbers_in(probe, queue_name) == list(range(COUNT))


async def test_the_drainer_replays_to_an_exchange_not_used_yet_in_spool_order(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str, exchange: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given messages for `exchange` spooled while no broker could be reached
    config = SpoolConfig(directory=tmp_path)
    unreachable = f"amqp://guest:guest@127.0.0.1:{find_free_port()}/"
    async with await Publisher.connect(unreachable, spool=config) as offline:
        items = [
            OutboundMessage(n, routing_key=queue_name, exchange=exchange) for n in range(COUNT)
        ]
        assert all(outcome.spooled for outcome in await offline.publish_many(items))

    # When a drainer replays them through a backend that has not published yet
    spool = await Spool.open(config)
    try:
        assert await asyncio.wait_for(Drainer(spool, backend).drain(), 30) == COUNT
    finally:
        await spool.close()

    # Then the queue holds them in the order they were spooled
    assert await numbers_in(probe, queue_name) == list(range(COUNT))
