"""A pool built without `middleware=` gets the standard chain; `middleware=[]` stays bare."""

from __future__ import annotations

import pytest

from foxwork import DeadLetter, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, MetricsMiddleware, RetryMiddleware
from foxwork.middleware.retry import DEFAULT_MAX_ATTEMPTS
from foxwork.pool import standard_middleware

from ..conftest import PoolFactory, run_until_idle
from .helpers import FailingWorker, RecordingWorker


def test_a_pool_without_middleware_argument_gets_ack_metrics_retry_in_that_order() -> None:
    # Given / When
    pool = WorkerPool(workers=[RecordingWorker()])

    # Then
    assert [type(layer) for layer in pool.middleware] == [
        AckNackMiddleware,
        MetricsMiddleware,
        RetryMiddleware,
    ]
    retry = pool.middleware[2]
    assert isinstance(retry, RetryMiddleware)
    assert retry.max_attempts == DEFAULT_MAX_ATTEMPTS


def test_two_pools_never_share_a_default_layer() -> None:
    first = WorkerPool(workers=[RecordingWorker()])
    second = WorkerPool(workers=[RecordingWorker()])
    shared = {id(layer) for layer in first.middleware} & {id(layer) for layer in second.middleware}
    assert shared == set()
    assert standard_middleware()[0] is not standard_middleware()[0]


@pytest.mark.parametrize("bare", [[], ()])
def test_an_empty_middleware_list_keeps_the_pool_bare(bare: list[object] | tuple[()]) -> None:
    pool = WorkerPool(workers=[RecordingWorker()], middleware=bare)  # type: ignore[arg-type]
    assert pool.middleware == ()


async def test_the_default_chain_retries_a_transient_error_and_the_message_succeeds(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a worker that loses its connection once, in a pool with the default chain
    worker = FailingWorker(ConnectionError("connection reset by peer"), times=1)
    pool = make_pool(worker)
    await memory_backend.add_message(queue_name, {"order": 1})

    # When the queue drains (the default first retry waits about a second)
    await run_until_idle(pool, memory_backend, queue_name, timeout=10, expect_failures=True)

    # Then it was retried, not dead-lettered, and succeeded on its second attempt
    assert worker.attempts == [1, 2]
    assert worker.succeeded.is_set()
    assert memory_backend.dead_letters(queue_name) == []
    # And the metrics layer of the chain counted the retry and the success
    metrics = pool.middleware[1]
    assert isinstance(metrics, MetricsMiddleware)
    series = metrics._metrics.series(queue_name, worker.id)
    assert (series.received, series.failed, series.retried, series.processed) == (2, 1, 1, 1)


async def test_the_default_chain_counts_a_dead_letter(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a worker whose error is no use retrying
    worker = FailingWorker(DeadLetter("unknown SKU"))
    pool = make_pool(worker)
    await memory_backend.add_message(queue_name, {"order": 1})

    # When
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then it went to the DLQ at once, counted as dead-lettered
    assert len(memory_backend.dead_letters(queue_name)) == 1
    metrics = pool.middleware[1]
    assert isinstance(metrics, MetricsMiddleware)
    series = metrics._metrics.series(queue_name, worker.id)
    assert (series.failed, series.dead_lettered, series.retried) == (1, 1, 0)
