"""BatchMiddleware: messages parked into batches, each settled by its batch's outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from foxwork import ConfigurationError, Message, MessageProperties, SettleState
from foxwork.backends import MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    BatchHandler,
    BatchMiddleware,
    BatchResult,
    RetryMiddleware,
)
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import WAIT, RecordingWorker, eventually, make_message


class Boom(Exception):
    pass


class RecordingHandler:
    """Records every batch; `outcome(batch, call_number)` may raise or return a result."""

    def __init__(
        self, outcome: Callable[[Sequence[Message[Any]], int], BatchResult | None] | None = None
    ) -> None:
        self.batches: list[list[Message[Any]]] = []
        self.outcome = outcome
        self.called = asyncio.Event()

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    async def process_batch(self, batch: Sequence[Message[Any]]) -> BatchResult | None:
        self.batches.append(list(batch))
        self.called.set()
        if self.outcome is not None:
            return self.outcome(batch, len(self.batches))
        return None


def unused_worker() -> RecordingWorker:
    """The pool needs a worker; with batching the handler replaces it."""
    return RecordingWorker()


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"),
    [("batch_size", 0), ("batch_size", 1.5), ("flush_interval", 0), ("flush_interval", -1.0)],
)
def test_an_invalid_argument_is_refused_naming_it_and_its_value(
    argument: str, value: object
) -> None:
    kwargs: dict[str, Any] = {argument: value}
    with pytest.raises(ConfigurationError) as caught:
        BatchMiddleware(RecordingHandler(), **kwargs)
    assert f"{argument}={value!r}" in str(caught.value)


def test_a_handler_without_process_batch_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="process_batch"):
        BatchMiddleware(object())  # type: ignore[arg-type]


def test_a_handler_with_process_batch_is_a_batch_handler() -> None:
    assert isinstance(RecordingHandler(), BatchHandler)


# -- end to end on MemoryBackend ---------------------------------------------------------


async def test_1000_messages_reach_the_handler_in_exactly_10_batches_of_100(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a pool with more concurrency than a batch needs
    handler = RecordingHandler()
    worker = unused_worker()
    pool = make_pool(
        worker,
        middleware=[AckNackMiddleware(), BatchMiddleware(handler, batch_size=100)],
        concurrency_limit=250,
    )
    for n in range(1000):
        await memory_backend.add_message(queue_name, {"n": n})

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then every batch filled up (none waited for the interval), and the worker was unused
    assert handler.sizes == [100] * 10
    assert sorted(m.payload["n"] for b in handler.batches for m in b) == list(range(1000))
    assert worker.payloads == []
    assert pool.processed == 1000


async def test_a_batch_that_does_not_fill_is_flushed_after_the_interval(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given batches of 200 flushed after 0.2 s. The messages come in two waves, the second
    # only after the first batch was flushed, so the count of batches does not depend on
    # how fast the pool takes the messages: 100 then 50, each flushed by the interval.
    handler = RecordingHandler()
    pool = make_pool(
        unused_worker(),
        middleware=[
            AckNackMiddleware(),
            BatchMiddleware(handler, batch_size=200, flush_interval=0.2),
        ],
        concurrency_limit=200,
    )
    for n in range(100):
        await memory_backend.add_message(queue_name, {"n": n})

    # When the first wave is taken
    started = time.monotonic()
    await run_until_idle(pool, memory_backend, queue_name)
    first_wave = time.monotonic() - started
    for n in range(100, 150):
        await memory_backend.add_message(queue_name, {"n": n})
    await run_until_idle(pool, memory_backend, queue_name)

    # Then
    assert handler.sizes == [100, 50]
    assert first_wave >= 0.2


async def test_shutdown_flushes_the_pending_batch(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given three messages parked in a batch that would wait a minute to fill
    handler = RecordingHandler()
    batching = BatchMiddleware(handler, batch_size=100, flush_interval=60)
    pool = make_pool(
        unused_worker(),
        middleware=[AckNackMiddleware(), batching],
        concurrency_limit=100,
    )
    for n in range(3):
        await memory_backend.add_message(queue_name, {"n": n})
    await pool.start(memory_backend)
    await eventually(lambda: batching.pending == 3)

    # When
    report = await pool.shutdown(timeout=WAIT)

    # Then the batch was handed over at once, and every message acked
    assert handler.sizes == [3]
    assert report.finished == 3
    assert report.requeued == 0
    assert memory_backend.depth(queue_name) == 0


async def test_a_pool_too_small_to_fill_a_batch_is_reported_once(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given batches of 10 but only 4 concurrency slots
    handler = RecordingHandler()
    pool = make_pool(
        unused_worker(),
        middleware=[
            AckNackMiddleware(),
            BatchMiddleware(handler, batch_size=10, flush_interval=0.02),
        ],
        concurrency_limit=4,
    )
    for n in range(20):
        await memory_backend.add_message(queue_name, {"n": n})

    # When
    with caplog.at_level(logging.WARNING, logger="foxwork.batch"):
        await run_until_idle(pool, memory_backend, queue_name)

    # Then
    assert handler.sizes == [4] * 5
    warnings = [r for r in caplog.records if r.name == "foxwork.batch"]
    assert len(warnings) == 1
    assert "batch_size=10" in warnings[0].getMessage()
    assert "at least 10" in warnings[0].getMessage()


# -- parked messages, directly -----------------------------------------------------------


async def test_success_returns_normally_for_every_message_and_settles_nothing_itself() -> None:
    # Given
    handler = RecordingHandler()
    batching = BatchMiddleware(handler, batch_size=3, flush_interval=60)
    messages = [make_message() for _ in range(3)]

    # When
    await asyncio.wait_for(asyncio.gather(*(batching(m, _never_called) for m in messages)), WAIT)

    # Then the outer layer (AckNack) acks each one
    assert handler.batches == [messages]
    assert {m.state for m in messages} == {SettleState.PENDING}


async def test_a_raising_handler_fails_every_message_of_its_batch() -> None:
    # Given
    def outcome(batch: Sequence[Message[Any]], call: int) -> None:
        raise Boom("down")

    batching = BatchMiddleware(RecordingHandler(outcome), batch_size=3, flush_interval=60)

    # When
    results = await asyncio.wait_for(
        asyncio.gather(
            *(batching(make_message(), _never_called) for _ in range(3)), return_exceptions=True
        ),
        WAIT,
    )

    # Then
    assert [type(r) for r in results] == [Boom, Boom, Boom]


async def test_a_cancelled_first_message_hands_the_flush_to_the_next_one() -> None:
    # Given three parked messages
    handler = RecordingHandler()
    batching = BatchMiddleware(handler, batch_size=10, flush_interval=60)
    messages = [make_message() for _ in range(3)]
    tasks = [asyncio.create_task(batching(m, _never_called)) for m in messages]
    await eventually(lambda: batching.pending == 3)

    # When the first one (which would flush the batch) is cancelled, and shutdown flushes
    tasks[0].cancel()
    await eventually(lambda: batching.pending == 2)
    await batching.shutdown()
    await asyncio.wait_for(asyncio.gather(*tasks[1:]), WAIT)

    # Then the batch went to the handler without the cancelled message
    assert handler.batches == [messages[1:]]
    assert tasks[0].cancelled()


async def test_a_flush_cancelled_mid_handler_cancels_every_message_of_the_batch() -> None:
    # Given a batch in a handler that hangs
    started = asyncio.Event()

    class Hanging:
        async def process_batch(self, batch: Sequence[Message[Any]]) -> None:
            started.set()
            await asyncio.Event().wait()

    batching = BatchMiddleware(Hanging(), batch_size=3, flush_interval=60)
    tasks = [asyncio.create_task(batching(make_message(), _never_called)) for _ in range(3)]
    async with asyncio.timeout(WAIT):
        await started.wait()

    # When the flushing message is cancelled (the shutdown deadline)
    tasks[0].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)

    # Then every message of the batch is cancelled too (the pool nacks them back)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def _never_called(message: Message[Any]) -> None:
    raise AssertionError("the batch handler replaces the rest of the chain")


async def test_a_message_that_does_not_decode_is_dead_lettered_alone_not_with_its_batch(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a batch of three, one of which is not valid JSON
    handler = RecordingHandler()
    pool = make_pool(
        unused_worker(),
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=3, initial_backoff=0.01, jitter=0),
            BatchMiddleware(handler, batch_size=2, flush_interval=WAIT),
        ],
        concurrency_limit=3,
    )
    await memory_backend.add_message(queue_name, {"n": 1})
    await memory_backend.enqueue_with_properties(
        queue_name, b"{not json", MessageProperties(content_type="application/json")
    )
    await memory_backend.add_message(queue_name, {"n": 2})

    # When
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the good two made a batch; the bad one went to the DLQ without a retry
    assert [[m.payload for m in b] for b in handler.batches] == [[{"n": 1}, {"n": 2}]]
    dead = memory_backend.dead_letters(queue_name)
    assert [d.body for d in dead] == [b"{not json"]
    assert dead[0].headers["x-exception-type"] == "foxwork.errors.PoisonMessage"
    assert memory_backend.retried[queue_name] == 0
