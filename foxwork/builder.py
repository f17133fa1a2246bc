"""`WorkerPoolBuilder`: fluent sugar that only collects arguments for `WorkerPool(...)`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .middleware.base import Middleware
from .pool import DEFAULT_CONCURRENCY_LIMIT, WorkerPool
from .settlement import AckPolicy
from .strategies import LoadBalancingStrategy
from .worker import Worker

__all__ = ["WorkerPoolBuilder"]


class WorkerPoolBuilder:
    """Builds a `WorkerPool` step by step; `build()` calls the constructor, which validates.

    Example:
        pool = (
            WorkerPoolBuilder("orders")
            .add_workers([OrderWorker(), OrderWorker()])
            .with_middleware(AckNackMiddleware())
            .with_middleware(RetryMiddleware(max_attempts=5))
            .with_strategy(LoadBalancingStrategy.LEAST_LOADED)
            .with_concurrency_limit(20)
            .with_queues("orders")
            .build()
        )
    """

    def __init__(self, name: str = "foxwork") -> None:
        self._name = name
        self._workers: list[Worker[Any]] = []
        # None until with_middleware() is called: build() then gives the standard chain.
        self._middleware: list[Middleware] | None = None
        self._strategy = LoadBalancingStrategy.ROUND_ROBIN
        self._concurrency_limit = DEFAULT_CONCURRENCY_LIMIT
        self._queues: list[str] = []
        self._prefetch: int | None = None
        self._on_unsettled_failure = AckPolicy.DEAD_LETTER

    def add_worker(self, worker: Worker[Any]) -> WorkerPoolBuilder:
        self._workers.append(worker)
        return self

    def add_workers(self, workers: Iterable[Worker[Any]]) -> WorkerPoolBuilder:
        self._workers.extend(workers)
        return self

    def with_middleware(self, middleware: Middleware) -> WorkerPoolBuilder:
        """Add a layer inside the ones added before (the first added is outermost).

        A builder never given a layer builds a pool with the standard chain, as
        `WorkerPool(...)` without `middleware=` does; once this is called, the pool has
        exactly the layers added.
        """
        if self._middleware is None:
            self._middleware = []
        self._middleware.append(middleware)
        return self

    def with_strategy(self, strategy: LoadBalancingStrategy) -> WorkerPoolBuilder:
        self._strategy = strategy
        return self

    def with_concurrency_limit(self, limit: int) -> WorkerPoolBuilder:
        self._concurrency_limit = limit
        return self

    def with_queues(self, *queues: str) -> WorkerPoolBuilder:
        self._queues.extend(queues)
        return self

    def with_prefetch(self, prefetch: int) -> WorkerPoolBuilder:
        self._prefetch = prefetch
        return self

    def with_unsettled_failure_policy(self, policy: AckPolicy) -> WorkerPoolBuilder:
        self._on_unsettled_failure = policy
        return self

    def build(self) -> WorkerPool:
        return WorkerPool(
            name=self._name,
            workers=self._workers,
            middleware=self._middleware,
            strategy=self._strategy,
            concurrency_limit=self._concurrency_limit,
            queues=self._queues,
            prefetch=self._prefetch,
            on_unsettled_failure=self._on_unsettled_failure,
        )
