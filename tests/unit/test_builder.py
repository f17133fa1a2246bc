"""WorkerPoolBuilder only collects arguments; the WorkerPool constructor validates."""

from __future__ import annotations

from typing import Any

import pytest

from foxwork import (
    ConfigurationError,
    LoadBalancingStrategy,
    WorkerPool,
    WorkerPoolBuilder,
)
from foxwork.middleware import AckNackMiddleware, AckPolicy, RetryMiddleware

from .helpers import RecordingWorker


def settings(pool: WorkerPool) -> dict[str, Any]:
    """Every setting of `pool` (pools compare by identity, so they are compared here)."""
    return {
        "name": pool.name,
        "workers": pool.workers,
        "middleware": pool.middleware,
        "strategy": pool.strategy,
        "concurrency_limit": pool.concurrency_limit,
        "queues": pool.queues,
        "prefetch": pool.prefetch,
        "on_unsettled_failure": pool.on_unsettled_failure,
    }


def test_the_builder_and_the_constructor_build_pools_with_equal_settings() -> None:
    # Given the same workers and middleware
    a, b, c = RecordingWorker("a"), RecordingWorker("b"), RecordingWorker("c")
    ack, retry = AckNackMiddleware(), RetryMiddleware(max_attempts=3)

    # When one pool is built fluently and one with keywords
    built = (
        WorkerPoolBuilder("orders")
        .add_worker(a)
        .add_workers([b, c])
        .with_middleware(ack)
        .with_middleware(retry)
        .with_strategy(LoadBalancingStrategy.LEAST_LOADED)
        .with_concurrency_limit(20)
        .with_queues("orders", "refunds")
        .with_prefetch(40)
        .with_unsettled_failure_policy(AckPolicy.REJECT)
        .build()
    )
    constructed = WorkerPool(
        name="orders",
        workers=[a, b, c],
        middleware=[ack, retry],
        strategy=LoadBalancingStrategy.LEAST_LOADED,
        concurrency_limit=20,
        queues=["orders", "refunds"],
        prefetch=40,
        on_unsettled_failure=AckPolicy.REJECT,
    )

    # Then
    assert settings(built) == settings(constructed)
    assert built.middleware == (ack, retry)
    assert built.queues == ("orders", "refunds")


def test_builder_defaults_equal_constructor_defaults() -> None:
    worker = RecordingWorker()
    built = WorkerPoolBuilder().add_worker(worker).build()
    constructed = WorkerPool(workers=[worker])

    # A builder given no layer passes None: the standard chain, as the constructor gives.
    # Layers are new objects per pool, so their types are compared.
    assert [type(layer) for layer in built.middleware] == [
        type(layer) for layer in constructed.middleware
    ]
    assert built.middleware
    assert {**settings(built), "middleware": None} == {**settings(constructed), "middleware": None}


@pytest.mark.parametrize(
    "change",
    [
        {"concurrency_limit": 11},
        {"strategy": LoadBalancingStrategy.RANDOM},
        {"name": "other"},
        {"queues": ["other"]},
        {"middleware": [AckNackMiddleware()]},
    ],
)
def test_pools_differing_in_one_setting_have_different_settings(change: dict[str, Any]) -> None:
    # Given
    worker = RecordingWorker()
    base: dict[str, Any] = {"workers": [worker], "queues": ["orders"]}

    # Then
    assert settings(WorkerPool(**base)) != settings(WorkerPool(**{**base, **change}))


def test_every_builder_method_returns_the_builder_for_chaining() -> None:
    # Given
    builder = WorkerPoolBuilder()

    # When
    results = [
        builder.add_worker(RecordingWorker()),
        builder.add_workers([RecordingWorker()]),
        builder.with_middleware(AckNackMiddleware()),
        builder.with_strategy(LoadBalancingStrategy.RANDOM),
        builder.with_concurrency_limit(3),
        builder.with_queues("q"),
        builder.with_prefetch(5),
        builder.with_unsettled_failure_policy(AckPolicy.REQUEUE),
    ]

    # Then
    assert all(result is builder for result in results)


def test_the_first_middleware_added_is_the_outermost() -> None:
    # Given
    outer, inner = AckNackMiddleware(), RetryMiddleware()

    # When
    pool = (
        WorkerPoolBuilder()
        .add_worker(RecordingWorker())
        .with_middleware(outer)
        .with_middleware(inner)
        .build()
    )

    # Then
    assert pool.middleware == (outer, inner)


@pytest.mark.parametrize(
    ("configure", "message"),
    [
        (lambda b: b, "at least one worker: pass workers=\\[MyWorker\\(\\)\\]"),
        (
            lambda b: b.add_worker(RecordingWorker()).with_concurrency_limit(0),
            "concurrency_limit=0",
        ),
        (lambda b: b.add_worker(RecordingWorker()).with_middleware(42), "middleware\\[0\\] = 42"),
        (lambda b: b.add_worker(object()), "is not a foxwork.Worker"),
    ],
)
def test_the_builder_reports_bad_input_at_build_time(configure: Any, message: str) -> None:
    # Given a builder that accepted a bad value without complaint
    builder = configure(WorkerPoolBuilder())

    # When / Then build() refuses it with the constructor's message
    with pytest.raises(ConfigurationError, match=message):
        builder.build()
