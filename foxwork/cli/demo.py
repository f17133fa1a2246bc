"""The example pool behind `foxwork demo`: an order service on the in-memory backend.

A queue of orders runs through `AckNackMiddleware` and `RetryMiddleware` into a few
`OrderWorker`s. Most orders go through at once. Some meet a flaky inventory service
(a `ConnectionError`, retried after a backoff) or a busy warehouse (`RetryLater`), and are
retried until they succeed. One order names an unknown SKU and is dead-lettered at once
(`DeadLetter`); one is malformed, fails payload validation and is dead-lettered as a
`PoisonMessage`, never reaching `process()`.

What happens to each order is drawn from the seed, and the pool balances ROUND_ROBIN
with no retry jitter, so a seed replays the same run: the same orders, failures, retries,
dead letters and deliveries per worker. (Only the ok/failed split per worker can vary with
timing: a retried copy may come back before or after another order is picked up.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from typing import Any, TextIO

from pydantic import BaseModel, Field

from ..backends.memory import MemoryBackend, StoredMessage
from ..builder import WorkerPoolBuilder
from ..deadletter import DeadLetterInfo, describe
from ..errors import ConfigurationError, DeadLetter, RetryLater
from ..message import Message
from ..middleware import AckNackMiddleware, RetryMiddleware
from ..pool import WorkerPool
from ..strategies import LoadBalancingStrategy
from ..worker import Worker

__all__ = ["DemoResult", "Order", "OrderWorker", "build_pool", "format_summary", "run_demo"]

QUEUE = "orders"
DEFAULT_MESSAGES = 40
DEFAULT_WORKERS = 3
#: The unknown-SKU order and the malformed one are among the messages.
MIN_MESSAGES = 2
MAX_MESSAGES = 10_000
MAX_WORKERS = 64
#: SKUs the warehouse knows; any other is a permanent failure.
CATALOGUE = ("AB-12", "CD-34", "EF-56", "GH-78", "KL-90")
UNKNOWN_SKU = "ZZ-404"
#: Seconds an order takes to process, drawn between these.
WORK_TIME = (0.05, 0.25)
#: Seconds a busy warehouse asks for with `RetryLater`.
BUSY_DELAY = 0.25
#: Seconds the whole run may take before the demo gives up.
RUN_TIMEOUT = 120.0
#: Seconds between two progress updates on a terminal, and between two plain lines.
TTY_REFRESH = 0.1
PLAIN_REFRESH = 0.5

_FIRST_ORDER_ID = 1001
_TIMEOUT, _BUSY = "timeout", "busy"


class Order(BaseModel):
    """The payload of one order message."""

    order_id: int
    sku: str
    quantity: int = Field(gt=0)


@dataclasses.dataclass(frozen=True)
class _Fate:
    work: float
    failures: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Plan:
    bodies: tuple[dict[str, Any], ...]
    fates: dict[int, _Fate]


def _make_plan(messages: int, seed: int) -> _Plan:
    rng = random.Random(seed)
    unknown, malformed = rng.sample(range(messages), 2)
    bodies: list[dict[str, Any]] = []
    fates: dict[int, _Fate] = {}
    for index in range(messages):
        order_id = _FIRST_ORDER_ID + index
        body: dict[str, Any] = {
            "order_id": order_id,
            "sku": rng.choice(CATALOGUE),
            "quantity": rng.randint(1, 5),
        }
        failures: tuple[str, ...] = ()
        if index == unknown:
            body["sku"] = UNKNOWN_SKU
        elif index == malformed:
            body["quantity"] = "two"
        else:
            failed_attempts = rng.choices((0, 1, 2), weights=(70, 20, 10))[0]
            failures = tuple(rng.choice((_TIMEOUT, _BUSY)) for _ in range(failed_attempts))
        bodies.append(body)
        fates[order_id] = _Fate(work=rng.uniform(*WORK_TIME), failures=failures)
    return _Plan(bodies=tuple(bodies), fates=fates)


class OrderWorker(Worker[Order]):
    """Reserves stock for an order; its inventory service and warehouse are flaky.

    Args:
        id: the worker id.
        plan: what happens to each order.
    """

    payload_model = Order

    def __init__(self, id: str, plan: _Plan) -> None:
        super().__init__(id)
        self._plan = plan
        self.completed = 0

    async def process(self, message: Message[Order]) -> None:
        order = message.payload
        fate = self._plan.fates[order.order_id]
        await asyncio.sleep(fate.work)
        if order.sku not in CATALOGUE:
            raise DeadLetter(f"unknown SKU {order.sku!r}: not in the catalogue")
        if message.attempt <= len(fate.failures):
            if fate.failures[message.attempt - 1] == _BUSY:
                raise RetryLater(delay=BUSY_DELAY, reason="warehouse busy")
            raise ConnectionError("inventory service did not answer")
        self.completed += 1


def build_pool(plan: _Plan, workers: int) -> WorkerPool:
    """The demo pool: `workers` order workers behind AckNack and Retry middleware."""
    return (
        WorkerPoolBuilder("orders-demo")
        .add_workers(OrderWorker(f"order-worker-{n}", plan) for n in range(1, workers + 1))
        .with_middleware(AckNackMiddleware())
        .with_middleware(
            RetryMiddleware(
                max_attempts=4,
                initial_backoff=0.1,
                max_backoff=0.4,
                backoff_multiplier=2.0,
                jitter=0.0,
            )
        )
        .with_strategy(LoadBalancingStrategy.ROUND_ROBIN)
        .with_concurrency_limit(2 * workers)
        .with_queues(QUEUE)
        .build()
    )


@dataclasses.dataclass(frozen=True)
class WorkerCount:
    """Deliveries one worker handled."""

    worker_id: str
    ok: int
    failed: int

    @property
    def handled(self) -> int:
        return self.ok + self.failed


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What a demo run did."""

    seed: int
    orders: int
    completed: int
    retried: int
    dead_letters: tuple[DeadLetterInfo, ...]
    workers: tuple[WorkerCount, ...]
    elapsed: float


class _Progress:
    # One updating line on a terminal; a plain line now and then anywhere else.
    def __init__(
        self, out: TextIO, interactive: bool, orders: int, pool: WorkerPool, backend: MemoryBackend
    ) -> None:
        self._out = out
        self._interactive = interactive
        self._orders = orders
        self._pool = pool
        self._backend = backend
        self._started = time.perf_counter()
        self._last = ""

    def line(self) -> str:
        completed = sum(w.completed for w in self._pool.workers if isinstance(w, OrderWorker))
        dead = len(self._backend.dead_letters(QUEUE))
        return (
            f"orders {completed + dead}/{self._orders} done · "
            f"{self._backend.retried[QUEUE]} retried · {dead} dead-lettered · "
            f"{self._pool.in_flight} in flight · {time.perf_counter() - self._started:.1f} s"
        )

    def show(self, *, final: bool = False) -> None:
        line = self.line()
        if self._interactive:
            self._out.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        elif line != self._last or final:
            self._out.write(line + "\n")
        self._last = line
        self._out.flush()

    async def run(self) -> None:
        refresh = TTY_REFRESH if self._interactive else PLAIN_REFRESH
        while True:
            self.show()
            await asyncio.sleep(refresh)


async def run_demo(
    *,
    messages: int = DEFAULT_MESSAGES,
    workers: int = DEFAULT_WORKERS,
    seed: int | None = None,
    out: TextIO | None = None,
    interactive: bool | None = None,
) -> DemoResult:
    """Run the demo pool on a `MemoryBackend` until every order is settled.

    Args:
        messages: orders to feed, at least `MIN_MESSAGES`.
        workers: order workers in the pool.
        seed: the seed that decides what happens to each order; a random one when None.
        out: where progress goes (default: stdout).
        interactive: one updating line (True) or plain lines (False); default: whether
            `out` is a terminal.

    Raises:
        ConfigurationError: `messages` or `workers` is out of range.
        TimeoutError: the orders were not all settled within `RUN_TIMEOUT` seconds.
    """
    if not MIN_MESSAGES <= messages <= MAX_MESSAGES:
        raise ConfigurationError(
            f"messages={messages} must be between {MIN_MESSAGES} and {MAX_MESSAGES}: the "
            "demo needs room for its unknown-SKU order and its malformed one"
        )
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigurationError(f"workers={workers} must be between 1 and {MAX_WORKERS}")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 100_000)
    out = out or sys.stdout
    if interactive is None:
        interactive = out.isatty()
    plan = _make_plan(messages, seed)
    backend = MemoryBackend(queues=[QUEUE])
    for body in plan.bodies:
        await backend.add_message(QUEUE, body)
    pool = build_pool(plan, workers)
    out.write(
        f"foxwork demo: {messages} orders, {workers} worker(s) balanced round robin, seed {seed}\n"
    )
    started = time.perf_counter()
    progress = _Progress(out, interactive, messages, pool, backend)
    async with backend:
        await pool.start(backend)
        ticker = asyncio.create_task(progress.run())
        try:
            await backend.join(QUEUE, timeout=RUN_TIMEOUT)
        finally:
            ticker.cancel()
            await asyncio.wait([ticker])
            await pool.shutdown(timeout=1.0)
    elapsed = time.perf_counter() - started
    progress.show(final=True)
    health = pool.health()
    completed = sum(w.completed for w in pool.workers if isinstance(w, OrderWorker))
    return DemoResult(
        seed=seed,
        orders=messages,
        completed=completed,
        retried=backend.retried[QUEUE],
        dead_letters=tuple(_dead_letter_info(m) for m in backend.dead_letters(QUEUE)),
        workers=tuple(
            WorkerCount(worker_id=w["id"], ok=w["processed"], failed=w["failed"])
            for w in health["workers"]
        ),
        elapsed=elapsed,
    )


def _dead_letter_info(stored: StoredMessage) -> DeadLetterInfo:
    return describe(
        stored.body, stored.headers, message_id=stored.properties.message_id, queue=QUEUE
    )


def order_id(dead: DeadLetterInfo) -> int | None:
    """The order a dead letter of the demo was about, or None when its body says none."""
    try:
        return int(json.loads(dead.body)["order_id"])
    except (ValueError, KeyError, TypeError):
        return None


def format_summary(result: DemoResult) -> str:
    """The summary printed at the end of `foxwork demo`."""
    lines = [
        "",
        "Summary",
        f"  orders          {result.orders}",
        f"  completed       {result.completed}",
        f"  retried         {result.retried}",
        f"  dead-lettered   {len(result.dead_letters)}",
    ]
    for dead in result.dead_letters:
        number = order_id(dead)
        order = "?" if number is None else str(number)
        exception = dead.exception_type.rpartition(".")[2]
        lines.append(f"    order {order}: {exception}: {dead.reason}")
    lines.append("  worker              handled    ok  failed")
    for worker in result.workers:
        lines.append(
            f"    {worker.worker_id:<17} {worker.handled:>7} {worker.ok:>5} {worker.failed:>7}"
        )
    lines.append(f"  elapsed         {result.elapsed:.2f} s")
    lines.append(
        f"Replay this run: foxwork demo --messages {result.orders} "
        f"--workers {len(result.workers)} --seed {result.seed}"
    )
    return "\n".join(lines)
