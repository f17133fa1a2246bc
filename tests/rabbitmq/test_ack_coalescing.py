"""Coalesced acks on a real broker: a multiple ack never reaches a message still in flight
or a nack, and a channel that dies in the middle of a flush loses no message."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from aiormq.abc import AbstractChannel as RawChannel

from foxwork import Message, MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, AckPolicy

from .conftest import PoolStarter
from .support import RabbitProbe, Recorder, wait_until

JSON = MessageProperties(content_type="application/json")


async def publish(backend: RabbitMQBackend, queue: str, ids: list[str]) -> None:
    await backend.declare(queue)
    for message_id in ids:
        await backend.publish(queue, b"{}", JSON.with_message_id(message_id))


def ack_frames(backend: RabbitMQBackend) -> int:
    return sum(acks.frames for acks in backend._acks.values())


async def test_a_slow_message_is_never_acked_by_the_acks_of_the_messages_after_it(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a slow message delivered first (the lowest delivery tag), then fifty quick ones
    quick = [f"quick-{n}" for n in range(50)]
    await publish(backend, queue_name, ["slow", *quick])
    release = asyncio.Event()
    held: list[Message[Any]] = []

    async def behaviour(message: Message[Any]) -> None:
        if message.id == "slow":
            held.append(message)
            await release.wait()

    worker = Recorder(behaviour)
    pool = await start_pool(backend, worker, concurrency_limit=64)

    # When the quick ones finish while the slow one is still in flight
    await wait_until(_true(lambda: pool.processed == len(quick)), what="the quick ones are done")
    channel: RawChannel = held[0].raw.channel
    await channel.queue_declare(queue_name, passive=True)  # every ack before it is applied
    # and the connection closes before the slow one finishes
    await channel.connection.close()
    release.set()
    await wait_until(_true(lambda: backend.settle_failures == 1), what="the slow ack failed")

    # Then only the slow one comes back: every quick one was acked, the slow one never was
    await probe.wait_for_ready(queue_name, 1)
    [back] = await probe.peek(queue_name)
    assert back.message_id == "slow" and back.redelivered


async def test_a_nack_with_requeue_among_coalesced_acks_is_not_swallowed(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given 300 messages, every seventh of which fails its first delivery and is nacked
    # back to the queue (requeue policy), while the others are acked around it
    ids = [f"m-{n}" for n in range(300)]
    failing = set(ids[3::7])
    await publish(backend, queue_name, ids)

    async def behaviour(message: Message[Any]) -> None:
        if message.id in failing and not message.redelivered:
            raise RuntimeError("fails once")

    worker = Recorder(behaviour)
    await start_pool(
        backend,
        worker,
        middleware=[AckNackMiddleware(on_failure=AckPolicy.REQUEUE)],
        concurrency_limit=100,
    )

    # When everything has been processed
    await worker.wait_processed(*ids, timeout=30)

    # Then each failing message came back exactly once, nothing else came back, the
    # channel never failed, and the acks shared frames
    for message_id in ids:
        expected = [False, True] if message_id in failing else [False]
        assert [d.redelivered for d in worker.of(message_id)] == expected, message_id
    assert backend.settle_failures == 0
    assert backend.health()["consumers"] == {queue_name: True}
    assert ack_frames(backend) < len(ids) - len(failing)
    await probe.wait_for_ready(queue_name, 0)


async def test_a_channel_closed_in_the_middle_of_a_flush_loses_no_message(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a slow message first, so that the acks of the twenty after it go out one frame
    # each, and a channel that closes just before the third of those frames
    quick = [f"quick-{n}" for n in range(20)]
    await publish(backend, queue_name, ["slow", *quick])
    release = asyncio.Event()

    async def behaviour(message: Message[Any]) -> None:
        if message.id == "slow":
            await release.wait()

    writes = 0

    async def close_before_the_third_frame(
        channel: RawChannel, settlement: Awaitable[None]
    ) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            await channel.close()
        await settlement

    worker = Recorder(behaviour)
    await backend.declare(queue_name)
    pool = await start_pool(backend, worker, concurrency_limit=32)
    await worker.wait_for(lambda r: "slow" in [d.id for d in r.deliveries], what="slow arrives")
    [acks] = backend._acks.values()
    acks._settle_on = close_before_the_third_frame

    # When the quick ones finish, and then the slow one
    await worker.wait_processed(*quick)
    await wait_until(_true(lambda: pool.processed == len(quick)), what="the quick ones are done")
    release.set()
    await wait_until(_true(lambda: pool.in_flight == 0), what="the slow one is done")

    # Then two acks were written; every other settlement failed and was counted, and the
    # broker put those messages back in the queue: none was lost
    assert backend.settle_failures == len(quick) - 2 + 1
    await probe.wait_for_ready(queue_name, len(quick) - 2 + 1)
    back = {m.message_id for m in await probe.peek(queue_name)}
    assert "slow" in back and len(back) == len(quick) - 1


def _true(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())

    return check
