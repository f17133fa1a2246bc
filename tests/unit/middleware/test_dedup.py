"""DeduplicationMiddleware and MemoryDedupStore: a processed message is acked and skipped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foxwork import ConfigurationError, Message, MessageProperties, SettleState, Worker
from foxwork.backends import MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    DeduplicationMiddleware,
    DedupStore,
    MemoryDedupStore,
    RetryMiddleware,
)
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import (
    FailingWorker,
    RecordingSettler,
    RecordingWorker,
    eventually,
    make_message,
)


class Boom(Exception):
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_id(message_id: str) -> MessageProperties:
    return MessageProperties(message_id=message_id)


# -- MemoryDedupStore --------------------------------------------------------------------


def test_the_memory_store_is_a_dedup_store() -> None:
    assert isinstance(MemoryDedupStore(), DedupStore)


def test_a_memory_store_needs_room_for_at_least_one_key() -> None:
    with pytest.raises(ConfigurationError, match="max_size=0"):
        MemoryDedupStore(max_size=0)


async def test_a_marked_key_is_seen_until_its_ttl_expires() -> None:
    # Given
    clock = FakeClock()
    store = MemoryDedupStore(clock=clock)

    # When
    await store.mark("m-1", 10.0)
    seen_before = await store.seen("m-1")
    clock.now += 10.0
    seen_after = await store.seen("m-1")

    # Then
    assert (seen_before, seen_after) == (True, False)
    assert await store.seen("m-2") is False
    assert len(store) == 0


async def test_beyond_max_size_the_least_recently_used_key_is_forgotten() -> None:
    # Given a store for two keys, holding "a" and "b", "a" looked up last
    store = MemoryDedupStore(max_size=2, clock=FakeClock())
    await store.mark("a", 60)
    await store.mark("b", 60)
    await store.seen("a")

    # When
    await store.mark("c", 60)

    # Then
    assert [await store.seen(key) for key in ["a", "b", "c"]] == [True, False, True]
    assert len(store) == 2


async def test_a_forgotten_key_is_not_seen() -> None:
    store = MemoryDedupStore()
    await store.mark("a", 60)

    await store.forget("a")

    assert await store.seen("a") is False


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"), [("ttl", 0), ("ttl", -1.0), ("store", object()), ("key", "id")]
)
def test_an_invalid_argument_is_refused_naming_it_and_its_value(
    argument: str, value: object
) -> None:
    kwargs: dict[str, Any] = {argument: value}
    with pytest.raises(ConfigurationError) as caught:
        DeduplicationMiddleware(**kwargs)
    assert f"{argument}={value!r}" in str(caught.value)


# -- the layer, directly -----------------------------------------------------------------


async def test_a_duplicate_is_acked_and_the_rest_of_the_chain_skipped() -> None:
    # Given a message id processed before
    dedup = DeduplicationMiddleware()
    calls: list[Message[Any]] = []

    async def call_next(message: Message[Any]) -> None:
        calls.append(message)

    first = make_message()
    await dedup(first, call_next)
    settler = RecordingSettler()
    duplicate: Message[Any] = Message(b"{}", settler=settler, properties=with_id(first.id))

    # When
    await dedup(duplicate, call_next)

    # Then it is acked, and it is not a failure
    assert calls == [first]
    assert duplicate.state is SettleState.ACKED
    assert settler.names == ["ack"]


async def test_a_failed_message_is_not_remembered() -> None:
    # Given
    store = MemoryDedupStore()
    dedup = DeduplicationMiddleware(store=store)
    message = make_message()

    # When
    async def failing(msg: Message[Any]) -> None:
        raise Boom

    with pytest.raises(Boom):
        await dedup(message, failing)

    # Then
    assert await store.seen(message.id) is False


async def test_a_message_an_inner_layer_put_back_is_not_remembered() -> None:
    # Given
    store = MemoryDedupStore()
    dedup = DeduplicationMiddleware(store=store)
    message = make_message()

    # When an inner layer requeues the message and returns
    async def requeueing(msg: Message[Any]) -> None:
        await msg.nack(requeue=True)

    await dedup(message, requeueing)

    # Then
    assert await store.seen(message.id) is False


async def test_a_custom_key_decides_what_is_a_duplicate() -> None:
    # Given a key that is the "order" header
    dedup = DeduplicationMiddleware(key=lambda m: str(m.headers["order"]))
    calls: list[str] = []

    async def call_next(message: Message[Any]) -> None:
        calls.append(message.id)

    # When two messages with different ids carry the same order
    first = make_message(headers={"order": 7})
    second = make_message(headers={"order": 7})
    await dedup(first, call_next)
    await dedup(second, call_next)

    # Then the second is a duplicate
    assert calls == [first.id]
    assert second.state is SettleState.ACKED


async def test_a_store_that_cannot_remember_does_not_fail_a_processed_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a store whose mark() fails
    class Forgetful(MemoryDedupStore):
        async def mark(self, key: str, ttl: float) -> None:
            raise ConnectionError("store unreachable")

    dedup = DeduplicationMiddleware(store=Forgetful())
    message = make_message()

    # When
    async def call_next(msg: Message[Any]) -> None:
        pass

    await dedup(message, call_next)

    # Then the message succeeds (it was processed), and the problem is logged
    assert message.state is SettleState.PENDING
    assert "could not remember" in caplog.text


# -- end to end on MemoryBackend ---------------------------------------------------------


async def test_a_message_delivered_twice_is_processed_once(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given the same message id published twice
    worker = RecordingWorker()
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), DeduplicationMiddleware()], concurrency_limit=1
    )
    await memory_backend.add_message(queue_name, {"n": 1}, with_id("order-1"))
    await memory_backend.add_message(queue_name, {"n": 1}, with_id("order-1"))
    await memory_backend.add_message(queue_name, {"n": 2}, with_id("order-2"))

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then the duplicate was acked without processing; nothing failed or was dead-lettered
    assert worker.payloads == [{"n": 1}, {"n": 2}]
    assert memory_backend.depth(queue_name) == 0
    assert memory_backend.dead_letters(queue_name) == []
    assert pool.failed == 0


async def test_a_retried_message_is_processed_again_not_skipped(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a worker that fails the first attempt
    worker = FailingWorker(Boom("flaky"), times=1)
    pool = make_pool(
        worker,
        middleware=[
            AckNackMiddleware(),
            DeduplicationMiddleware(),
            RetryMiddleware(max_attempts=3, initial_backoff=0.01, jitter=0),
        ],
    )
    await memory_backend.add_message(queue_name, {"n": 1}, with_id("order-1"))

    # When
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the retried copy (same id) was processed on its second attempt
    assert worker.attempts == [1, 2]
    assert worker.succeeded.is_set()


class BlockingWorker(Worker[Any]):
    """Blocks each call until released; fails the first call when `fail_first`."""

    def __init__(self, *, fail_first: bool = False) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.calls = 0
        self.release = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.calls += 1
        await self.release.wait()
        if self.fail_first and self.calls == 1:
            raise Boom("first attempt failed")


@pytest.mark.parametrize(
    ("fail_first", "calls"),
    [(False, 1), (True, 2)],
    ids=["first-succeeds-duplicate-skipped", "first-fails-duplicate-processed"],
)
async def test_a_concurrent_duplicate_waits_for_the_first_to_finish(
    fail_first: bool,
    calls: int,
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
) -> None:
    # Given two deliveries of one message id in flight at once
    worker = BlockingWorker(fail_first=fail_first)
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), DeduplicationMiddleware()], concurrency_limit=2
    )
    await memory_backend.add_message(queue_name, {"n": 1}, with_id("order-1"))
    await memory_backend.add_message(queue_name, {"n": 1}, with_id("order-1"))
    await pool.start(memory_backend)
    await eventually(lambda: worker.calls == 1 and pool.in_flight == 2)
    for _ in range(10):
        await asyncio.sleep(0)  # turns of the loop: the duplicate's task reaches its wait
    calls_while_first_runs = worker.calls

    # When the first finishes
    worker.release.set()
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the duplicate never ran beside it: skipped after a success, processed after a
    # failure
    assert calls_while_first_runs == 1
    assert worker.calls == calls
    assert memory_backend.depth(queue_name) == 0
