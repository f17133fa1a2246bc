"""`RedisStreamsBackend.queue_depth`: the entries of a queue waiting to be delivered to its
consumer group (what `foxwork run --http-port` reports as `foxwork.queue.depth`), against
the session redis-server. The keys are changed behind the backend with a plain client."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from foxwork import MessageProperties
from foxwork.backends.redis import RedisStreamsBackend

from .conftest import BackendFactory, Holder

#: Entries each test publishes.
N = 12


async def publish(backend: RedisStreamsBackend, queue: str, count: int) -> None:
    for n in range(count):
        await backend.publish(queue, b"{}", MessageProperties(message_id=f"m{n}"))


async def test_depth_counts_the_entries_not_yet_delivered(
    make_backend: BackendFactory, queue_name: str
) -> None:
    # Given N entries in a declared queue, none read
    backend = await make_backend()
    await publish(backend, queue_name, N)
    assert await backend.queue_depth(queue_name) == N

    # When a consumer reads 5 of them (its prefetch) and holds them
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=5)
    await holder.wait_count(5)

    # Then 5 fewer wait
    assert await backend.queue_depth(queue_name) == N - 5

    # and as the consumer acks (settled entries are deleted) and reads on, the rest go
    for acked, held in ((5, 10), (10, N)):
        for message in holder.messages[acked - 5 : acked]:
            await message.ack()
        await holder.wait_count(held)
        assert await backend.queue_depth(queue_name) == N - held


async def test_depth_without_a_lag_is_the_length_less_the_pending_entries(
    make_backend: BackendFactory, queue_name: str, redis: Redis
) -> None:
    # Given N entries, 5 of them delivered and held
    backend = await make_backend()
    await publish(backend, queue_name, N)
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=5)
    await holder.wait_count(5)

    # When an entry not yet delivered is deleted, so that Redis can no longer tell the lag
    stream = backend.config.keys(queue_name).stream
    entries: Any = await redis.xrevrange(stream, count=1)
    await redis.xdel(stream, entries[0][0])
    [group] = await redis.xinfo_groups(stream)
    assert group["lag"] is None

    # Then the depth is the stream's length less its pending entries
    assert await backend.queue_depth(queue_name) == N - 5 - 1


async def test_depth_counts_no_entry_that_max_len_trimmed_away(
    make_backend: BackendFactory, queue_name: str, redis: Redis
) -> None:
    # Given a queue capped at 10 entries (approximately) whose consumer holds its first
    backend = await make_backend(max_len=10)
    await publish(backend, queue_name, 1)
    holder = Holder()
    await backend.consume(queue_name, holder, prefetch=1)
    await holder.wait_count(1)

    # When 300 more are published, trimming the oldest away (the one held among them)
    await publish(backend, queue_name, 300)
    stream = backend.config.keys(queue_name).stream
    length = await redis.xlen(stream)
    assert length < 300
    first: Any = await redis.xrange(stream, count=1)
    assert first[0][0] > holder.messages[0].raw.entry_id

    # Then the depth counts the entries there are, not every one added since the read
    # (Redis 7.0's lag does: 300)
    assert await backend.queue_depth(queue_name) == length


async def test_depth_of_a_queue_without_a_stream_or_group_is_unknown(
    make_backend: BackendFactory, queue_name: str, redis: Redis
) -> None:
    backend = await make_backend()
    assert await backend.queue_depth("no-such-queue") is None
    # a stream that no consumer group reads (not declared by foxwork)
    keys = backend.config.keys("bare")
    await redis.xadd(keys.stream, {"body": "{}"})
    try:
        assert await backend.queue_depth("bare") is None
    finally:
        await redis.delete(keys.stream)
