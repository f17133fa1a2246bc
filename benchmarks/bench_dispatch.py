"""Dispatch overhead: MemoryBackend → WorkerPool → middleware chain → a no-op worker.

Measures microseconds per message through the pool with a six-layer chain against the same
pool with no middleware, and prints the difference: the cost of the chain. The budget is
15 µs per message.

The chain is the production order (AckNack → Tracing → CircuitBreaker → RateLimit → Retry)
plus deduplication, with settings under which no layer holds a message back: the rate
limit is far above the throughput, nothing fails, every message id is unique. Tracing uses
the global tracer provider, a no-op unless an OpenTelemetry SDK is installed; pass `--sdk`
to record spans with an SDK provider (no exporter), which measures span creation too. A
layer missing from `foxwork.middleware` is replaced by a pass-through layer.

`--breakdown` also times the bare pool plus each layer alone, to show where the cost is.

Usage:
    python -m benchmarks.bench_dispatch [N] [--rounds R] [--concurrency C] [--sdk] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from foxwork import Message, MessageProperties, Worker, WorkerPool
from foxwork import middleware as mw
from foxwork.backends import MemoryBackend
from foxwork.middleware import CallNext

QUEUE = "bench"
#: Messages per timed run unless given on the command line.
DEFAULT_MESSAGES = 50_000
#: Timed runs per variant; the median is reported.
DEFAULT_ROUNDS = 5
#: Messages processed at once.
DEFAULT_CONCURRENCY = 100
#: The chain's cost above the bare pool that the design allows, in µs per message.
BUDGET_US = 15.0


class NoopWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        pass


class PassThrough:
    """Stands for a middleware that does not exist (yet)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"PassThrough({self.name})"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        await call_next(message)


def _real_or_stand_in(name: str, make: Callable[[Any], Any]) -> Any:
    cls = getattr(mw, name, None)
    return make(cls) if cls is not None else PassThrough(name)


def build_chain(*, sdk: bool) -> list[Any]:
    """The six layers, outermost first."""
    tracer_provider = None
    if sdk:
        from opentelemetry.sdk.trace import TracerProvider

        tracer_provider = TracerProvider()
    return [
        mw.AckNackMiddleware(),
        _real_or_stand_in("TracingMiddleware", lambda c: c(tracer_provider=tracer_provider)),
        _real_or_stand_in("CircuitBreakerMiddleware", lambda c: c()),
        _real_or_stand_in("RateLimitMiddleware", lambda c: c(rate=1e9, burst=1e9)),
        mw.RetryMiddleware(),
        _real_or_stand_in("DeduplicationMiddleware", lambda c: c()),
    ]


async def preload(backend: MemoryBackend, messages: int, run: int) -> None:
    body = b'{"order":1}'
    base = MessageProperties(content_type="application/json")
    for n in range(messages):
        props = base.with_message_id(f"{run}-{n}")
        await backend.enqueue_with_properties(QUEUE, body, props)


async def timed_run(messages: int, middleware: Sequence[Any], concurrency: int, run: int) -> float:
    """Seconds to drain `messages` preloaded messages through a fresh pool."""
    backend = MemoryBackend()
    await backend.connect()
    await preload(backend, messages, run)
    pool = WorkerPool(
        workers=[NoopWorker() for _ in range(4)],
        middleware=middleware,
        concurrency_limit=concurrency,
        queues=[QUEUE],
    )
    gc.collect()
    started = time.perf_counter()
    await pool.start(backend)
    await backend.join(QUEUE, timeout=600)
    elapsed = time.perf_counter() - started
    await pool.shutdown(timeout=10)
    await backend.close()
    if pool.processed != messages or pool.failed:
        raise RuntimeError(f"expected {messages} processed, got {pool.health()}")
    return elapsed


def _single_layer(sdk: bool, index: int) -> Callable[[], list[Any]]:
    return lambda: [build_chain(sdk=sdk)[index]]


async def bench(
    messages: int, rounds: int, concurrency: int, sdk: bool, breakdown: bool = False
) -> dict[str, float]:
    variants: dict[str, Callable[[], list[Any]]] = {
        "bare pool": list,
        "6-layer chain": lambda: build_chain(sdk=sdk),
    }
    if breakdown:
        for index, layer in enumerate(build_chain(sdk=sdk)):
            name = type(layer).__name__.removesuffix("Middleware")
            variants[f"+ {name}"] = _single_layer(sdk, index)
    print(f"chain: {', '.join(type(m).__name__ for m in build_chain(sdk=sdk))}")
    print(f"{messages:,} messages, {rounds} rounds, concurrency {concurrency}")
    # Warm-up: imports, caches, allocator pools.
    for make in variants.values():
        await timed_run(min(messages, 5_000), make(), concurrency, run=-1)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(rounds):
        # Interleaved, so that drift (thermal, other load) hits both variants alike.
        for name, make in variants.items():
            seconds = await timed_run(messages, make(), concurrency, run)
            samples[name].append(seconds / messages * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        extra = ""
        if name.startswith("+ "):
            extra = f", layer alone costs {medians[name] - medians['bare pool']:+.2f} µs"
        print(
            f"{name:>16}: {medians[name]:6.2f} µs/message "
            f"({1e6 / medians[name]:,.0f} msg/s; rounds: {spread}{extra})"
        )
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("messages", nargs="?", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--sdk", action="store_true", help="trace with an SDK provider")
    parser.add_argument("--breakdown", action="store_true", help="time each layer alone")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rounds < 1 or args.concurrency < 1:
        parser.error("messages, --rounds and --concurrency must be at least 1")
    medians = asyncio.run(
        bench(args.messages, args.rounds, args.concurrency, args.sdk, args.breakdown)
    )
    cost = medians["6-layer chain"] - medians["bare pool"]
    verdict = "within" if cost < BUDGET_US else "OVER"
    print(f"{'chain cost':>16}: {cost:6.2f} µs/message ({verdict} the {BUDGET_US:g} µs budget)")
    return 0 if cost < BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
