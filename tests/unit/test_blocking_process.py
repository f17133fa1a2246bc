"""A blocking `def process` runs in a thread, which nothing can interrupt: its message keeps
its slot until the thread ends. A processing timeout fails the attempt only then, so two
attempts of one message never run at once, and shutdown counts the thread as in flight."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from foxwork import Message, PoolState, Worker
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from ..conftest import PoolFactory
from ..support.waiting import wait_until

#: Seconds a test thread may stay blocked before it gives up (a failed test never hangs).
BLOCK_LIMIT = 10.0


class BlockingWorker(Worker[Any]):
    """A plain `def process` whose first attempt blocks until `release` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("blocking", **kwargs)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.attempts: list[int] = []
        self.settled_when_thread_ended: list[bool] = []

    def process(self, message: Message[Any]) -> None:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.attempts.append(message.attempt)
        self.entered.set()
        try:
            if message.attempt == 1:
                self.release.wait(BLOCK_LIMIT)
        finally:
            with self.lock:
                self.running -= 1
                self.settled_when_thread_ended.append(message.settled)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def test_a_timed_out_blocking_attempt_keeps_its_slot_until_its_thread_ends(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a blocking worker with a short processing timeout, retried at once
    worker = BlockingWorker(processing_timeout=0.2)
    pool = make_pool(
        worker,
        middleware=[AckNackMiddleware(), RetryMiddleware(initial_backoff=0.01, jitter=0)],
    )
    await memory_backend.add_message(queue_name, {"order": 1})
    caplog.set_level(logging.INFO)
    await pool.start(memory_backend)
    try:
        # When its first attempt blocks past the timeout
        await wait_until(
            lambda: logged(caplog, "passed its processing_timeout") or len(worker.attempts) > 1,
            what="the timeout to pass",
        )

        # Then no second attempt started: the first still holds the message and its slot
        assert worker.attempts == [1]
        assert pool.in_flight == 1
        assert logged(caplog, "cannot be interrupted")
    finally:
        worker.release.set()

    # And once the thread ends, the attempt fails with the timeout and is retried
    await memory_backend.join(queue_name, timeout=5)
    assert worker.attempts == [1, 2]
    assert worker.most_running == 1
    assert worker.settled_when_thread_ended[0] is False
    assert logged(caplog, "ProcessingTimeout")


async def test_shutdown_counts_a_running_thread_as_in_flight_and_requeues_after_it_ends(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a blocking worker whose thread runs
    worker = BlockingWorker()
    pool = make_pool(worker)
    await memory_backend.add_message(queue_name, {"order": 1})
    caplog.set_level(logging.INFO)
    await pool.start(memory_backend)
    await asyncio.to_thread(worker.entered.wait, BLOCK_LIMIT)

    # When the pool shuts down with a deadline the thread outlives
    stopping = asyncio.create_task(pool.shutdown(timeout=0.1))
    try:
        await wait_until(
            lambda: stopping.done() or logged(caplog, "still runs in its thread"),
            what="the shutdown deadline to pass",
        )

        # Then the message is still in flight, unsettled, and the pool is still draining
        assert not stopping.done()
        assert pool.in_flight == 1
        assert pool.state is PoolState.DRAINING
    finally:
        worker.release.set()

    # And once the thread ended, the message went back to its queue
    report = await asyncio.wait_for(stopping, timeout=5)
    assert (report.finished, report.requeued) == (0, 1)
    assert worker.settled_when_thread_ended == [False]
    assert len(memory_backend.messages(queue_name)) == 1
