"""Static checks of the public API's types, run by `mypy` (pytest never collects this file).

Each `assert_type` pins what a user's editor and type checker see. Each line ending in
`# type: ignore[...]` is a misuse that must stay a type error: with `warn_unused_ignores`
(part of `--strict`), mypy fails if one of them starts to type-check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_type

from pydantic import BaseModel

import foxwork
from foxwork import (
    DeadLetter,
    Drop,
    LoadBalancingStrategy,
    Message,
    MessageProperties,
    PoolState,
    RetryLater,
    SettleState,
    ShutdownReport,
    Worker,
    WorkerError,
    WorkerPool,
    WorkerPoolBuilder,
)
from foxwork.backends import Backend, MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    AckPolicy,
    CallNext,
    Middleware,
    RetryMiddleware,
)


class OrderPayload(BaseModel):
    sku: str
    qty: int


class OrderWorker(Worker[OrderPayload]):
    payload_model = OrderPayload
    processing_timeout = 10.0

    async def process(self, message: Message[OrderPayload]) -> None:
        # The payload arrives typed as the worker's model.
        assert_type(message.payload, OrderPayload)
        assert_type(message.payload.sku, str)
        assert_type(message.payload.qty, int)
        _ = message.payload.colour  # type: ignore[attr-defined]

        assert_type(message.id, str)
        assert_type(message.body, bytes)
        assert_type(message.properties, MessageProperties)
        assert_type(message.attempt, int)
        assert_type(message.queue, str)
        assert_type(message.routing_key, str)
        assert_type(message.redelivered, bool)
        assert_type(message.settled, bool)
        assert_type(message.state, SettleState)
        assert_type(message.poison, str | None)
        assert_type(await message.ack(), None)
        assert_type(await message.nack(requeue=False), None)
        assert_type(await message.reject(), None)
        assert_type(await message.retry(5.0), bool)
        assert_type(await message.dead_letter("unknown SKU"), bool)


class TextWorker(Worker[str]):
    async def process(self, message: Message[str]) -> None:
        assert_type(message.payload, str)
        assert_type(message.payload.upper(), str)


def worker_attributes(worker: OrderWorker, any_worker: Worker[Any]) -> None:
    assert_type(worker.id, str)
    assert_type(any_worker.processing_timeout, float | None)
    assert_type(Worker.payload_model, type[BaseModel] | None)
    assert_type(OrderWorker.payload_model, type[OrderPayload])


def properties_builders() -> None:
    props = MessageProperties().with_content_type("application/json")
    assert_type(props, MessageProperties)
    assert_type(props.with_priority(5).with_header("x-tenant", "acme"), MessageProperties)
    assert_type(props.headers, Mapping[str, Any])


def builder_methods_return_the_builder(worker: OrderWorker) -> None:
    builder = WorkerPoolBuilder("orders")
    assert_type(builder.add_worker(worker), WorkerPoolBuilder)
    assert_type(builder.add_workers([worker, TextWorker()]), WorkerPoolBuilder)
    assert_type(builder.with_middleware(AckNackMiddleware()), WorkerPoolBuilder)
    assert_type(builder.with_strategy(LoadBalancingStrategy.RANDOM), WorkerPoolBuilder)
    assert_type(builder.with_concurrency_limit(20), WorkerPoolBuilder)
    assert_type(builder.with_queues("orders", "refunds"), WorkerPoolBuilder)
    assert_type(builder.with_prefetch(40), WorkerPoolBuilder)
    assert_type(builder.with_unsettled_failure_policy(AckPolicy.REJECT), WorkerPoolBuilder)
    assert_type(builder.build(), WorkerPool)
    builder.with_concurrency_limit("20")  # type: ignore[arg-type]
    builder.with_strategy("random")  # type: ignore[arg-type]


async def function_middleware(message: Message[Any], call_next: CallNext) -> None:
    await call_next(message)


class ClassMiddleware:
    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        await call_next(message)


def not_a_middleware(message: Message[Any]) -> None:
    pass


def middleware_is_structural() -> None:
    # Functions and plain objects with the right signature are middleware; no base class.
    layers: list[Middleware] = [
        AckNackMiddleware(on_failure=AckPolicy.REQUEUE),
        RetryMiddleware(max_attempts=3, initial_backoff=0.5),
        function_middleware,
        ClassMiddleware(),
    ]
    wrong: list[Middleware] = [not_a_middleware]  # type: ignore[list-item]
    del layers, wrong


async def pool_api(backend: MemoryBackend) -> None:
    pool = WorkerPool(
        workers=[OrderWorker(), TextWorker()],
        middleware=[AckNackMiddleware(), RetryMiddleware()],
        strategy=LoadBalancingStrategy.LEAST_LOADED,
        concurrency_limit=20,
        queues=["orders"],
    )
    assert_type(pool.state, PoolState)
    assert_type(pool.in_flight, int)
    assert_type(pool.health(), dict[str, Any])
    assert_type(await pool.start(backend), None)
    assert_type(await pool.run(backend, queues=["orders"]), None)
    assert_type(await pool.shutdown(timeout=5.0), ShutdownReport)
    assert_type((await pool.shutdown()).requeued, int)
    WorkerPool([OrderWorker()])  # type: ignore[call-arg]
    WorkerPool(workers=[OrderWorker()], concurrency_limit="10")  # type: ignore[arg-type]
    WorkerPool(workers=[OrderPayload(sku="A", qty=1)])  # type: ignore[list-item]


async def memory_backend_api() -> None:
    backend: Backend = MemoryBackend(max_body_size=1024)
    async with MemoryBackend() as connected:
        assert_type(connected, Backend)
    assert_type(backend.is_connected, bool)
    memory = MemoryBackend()
    await memory.add_message("orders", {"sku": "A-1", "qty": 2})
    assert_type(await memory.join("orders", timeout=5.0), None)
    assert_type(memory.depth("orders"), int)


def worker_errors() -> None:
    errors: list[WorkerError] = [
        RetryLater(delay=30.0),
        RetryLater(1.5, reason="busy"),
        DeadLetter("unknown SKU"),
        Drop(),
    ]
    assert_type(RetryLater(delay=30.0).delay, float)
    assert_type(DeadLetter("poison").reason, str)
    del errors


def version() -> None:
    assert_type(foxwork.__version__, str)
