"""`WorkerPool`: intake, concurrency slots, the middleware chain, shutdown and health."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
from collections.abc import Sequence
from typing import Any

from . import logs, wire
from ._checks import is_count, is_int
from ._slots import Slots
from .backends.base import Backend, Consumer
from .errors import ConfigurationError, PoolStateError, RetryLater
from .message import Message, SettleState
from .middleware.base import CallNext, Middleware, build_chain, shutdown_all, startup_all
from .settlement import AckPolicy, check_policy, settle_failure
from .strategies import LoadBalancingStrategy, make_picker
from .worker import Worker

__all__ = ["PoolState", "ShutdownReport", "WorkerPool"]

logger = logging.getLogger("foxwork.pool")

#: Messages processed at once across all workers of a pool.
DEFAULT_CONCURRENCY_LIMIT = 10
#: Seconds `shutdown()` waits for in-flight messages before nacking them back.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: Seconds `shutdown()` then waits for the backend to send the settlements it was handed.
SETTLEMENT_FLUSH_TIMEOUT = 5.0


def standard_middleware() -> tuple[Middleware, ...]:
    """The chain of a pool built without `middleware=`: `AckNackMiddleware` (outermost:
    every delivery is settled), `MetricsMiddleware` (inside it, so a `Drop` is not counted
    as processed; outside the retry layer, so it counts retries and dead letters) and
    `RetryMiddleware`, with their defaults. New instances on every call: layers hold state
    (metrics series, crash counts), so pools never share them by default."""
    # Imported here: the core does not depend on the middleware package at import time.
    from .middleware.ack import AckNackMiddleware
    from .middleware.metrics import MetricsMiddleware
    from .middleware.retry import RetryMiddleware

    return (AckNackMiddleware(), MetricsMiddleware(), RetryMiddleware())


#: How a failed message ended, for the one log line of its failure.
_OUTCOMES = {
    SettleState.PENDING: "left unsettled",
    SettleState.ACKED: "acked",
    SettleState.REQUEUED: "requeued",
    SettleState.REJECTED: "rejected",
    SettleState.RETRIED: "retried",
    SettleState.DEAD_LETTERED: "dead-lettered",
}


#: Settlements of a `RetryLater` that are what the worker asked for: logged at INFO.
_RETRIED_LATER = frozenset({SettleState.RETRIED, SettleState.REQUEUED})


class PoolState(enum.Enum):
    """The pool's lifecycle: CREATED → RUNNING → DRAINING → STOPPED."""

    CREATED = "created"
    """Built, not yet running."""
    RUNNING = "running"
    """Consuming and processing."""
    DRAINING = "draining"
    """Intake stopped; finishing in-flight messages."""
    STOPPED = "stopped"
    """Done; every message it took was settled."""


@dataclasses.dataclass(frozen=True)
class ShutdownReport:
    """What `shutdown()` did.

    Attributes:
        finished: in-flight messages that completed within the deadline.
        requeued: in-flight messages cancelled at the deadline and nacked back to the queue.
    """

    finished: int = 0
    requeued: int = 0


class _WorkerStats:
    __slots__ = ("failed", "in_flight", "processed")

    def __init__(self) -> None:
        self.in_flight = 0
        self.processed = 0
        self.failed = 0


class WorkerPool:
    """Runs messages through the middleware chain into a set of workers.

    Args:
        workers: the workers; at least one.
        middleware: the onion, outermost first (usually `AckNackMiddleware` first). Left
            out (None): the standard chain, `AckNackMiddleware` → `MetricsMiddleware` →
            `RetryMiddleware` with their defaults, new instances for each pool. `[]`: no
            middleware at all (a bare pool: successes are acked, failures settled by
            `on_unsettled_failure`).
        strategy: how a message's worker is chosen.
        concurrency_limit: messages processed at once across all workers.
        queues: the queues `run()` consumes; when empty, the backend's configured queues.
        prefetch: unsettled deliveries the broker hands over per queue; defaults to the
            concurrency limit (a larger value only helps when processing is very short).
        name: shown in logs and `health()`.
        on_unsettled_failure: how the pool settles a failed message that no middleware
            settled (the pool is the last safety net). Successes are acked.

    A pool is equal only to itself, whatever its settings: two pools built alike are two
    pools, each with its own state, and either can be a dict key or a set member.

    Example:
        pool = WorkerPool(
            workers=[OrderWorker(), OrderWorker()],
            middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=5)],
            concurrency_limit=20,
            queues=["orders"],
        )
        await pool.run(backend)
    """

    def __init__(
        self,
        *,
        workers: Sequence[Worker[Any]],
        middleware: Sequence[Middleware] | None = None,
        strategy: LoadBalancingStrategy = LoadBalancingStrategy.ROUND_ROBIN,
        concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT,
        queues: Sequence[str] = (),
        prefetch: int | None = None,
        name: str = "foxwork",
        on_unsettled_failure: AckPolicy = AckPolicy.DEAD_LETTER,
    ) -> None:
        workers = list(workers)
        if not workers:
            raise ConfigurationError(
                "WorkerPool needs at least one worker: pass workers=[MyWorker()] "
                "(or call add_worker() on the builder)"
            )
        for index, worker in enumerate(workers):
            if not isinstance(worker, Worker):
                raise ConfigurationError(
                    f"workers[{index}] = {worker!r} is not a foxwork.Worker: subclass Worker "
                    "and implement `async def process(self, message)`"
                )
            if not hasattr(worker, "_call"):
                raise ConfigurationError(
                    f"worker {type(worker).__name__} was not initialised: call "
                    "super().__init__() from its __init__"
                )
        ids = [w.id for w in workers]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"worker ids must be unique; got {ids}")
        if not is_int(concurrency_limit):
            raise ConfigurationError(
                f"concurrency_limit={concurrency_limit!r} must be an int of at least 1"
            )
        if concurrency_limit < 1:
            raise ConfigurationError(
                f"concurrency_limit={concurrency_limit} must be at least 1: it is how many "
                "messages are processed at once"
            )
        if prefetch is not None and not is_count(prefetch):
            raise ConfigurationError(
                f"prefetch={prefetch!r} must be an int of at least 1, or None for the "
                "concurrency limit"
            )
        if not isinstance(strategy, LoadBalancingStrategy):
            raise ConfigurationError(
                f"strategy={strategy!r} must be a LoadBalancingStrategy member, one of "
                f"{', '.join(s.name for s in LoadBalancingStrategy)}"
            )
        for queue in queues:
            if not isinstance(queue, str) or not queue:
                raise ConfigurationError(f"queues must be non-empty strings; got {queue!r}")
        check_policy(on_unsettled_failure, owner="WorkerPool", setting="on_unsettled_failure")
        self.name = name
        self.workers: tuple[Worker[Any], ...] = tuple(workers)
        self.middleware: tuple[Middleware, ...] = (
            standard_middleware() if middleware is None else tuple(middleware)
        )
        self.strategy = strategy
        self.concurrency_limit = concurrency_limit
        self.queues: tuple[str, ...] = tuple(queues)
        self.prefetch = prefetch or concurrency_limit
        self.on_unsettled_failure = on_unsettled_failure
        # Folded once: the per-message cost is one await per layer.
        self._chain: CallNext = build_chain(self.middleware, self._endpoint, pool=self)
        self._stats = [_WorkerStats() for _ in self.workers]
        self._in_flight_counts = [0] * len(self.workers)
        # Each worker's done-callback for its message tasks, made once rather than per message.
        self._task_done_for = tuple(
            functools.partial(self._task_done, index) for index in range(len(self.workers))
        )
        self._pick = make_picker(strategy, self._in_flight_counts)
        self._state = PoolState.CREATED
        self._backend: Backend | None = None
        self._consumers: list[Consumer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: Slots | None = None
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[ShutdownReport] | None = None
        self._cutoff: asyncio.TimerHandle | None = None
        self.received = 0

    def __repr__(self) -> str:
        return (
            f"<WorkerPool name={self.name!r} state={self._state.value} "
            f"workers={len(self.workers)} in_flight={len(self._tasks)} "
            f"processed={self.processed} failed={self.failed}>"
        )

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def in_flight(self) -> int:
        """Messages being processed right now."""
        return len(self._tasks)

    @property
    def processed(self) -> int:
        """Messages whose chain completed without an error."""
        return sum(s.processed for s in self._stats)

    @property
    def failed(self) -> int:
        """Messages whose chain raised (each was settled by a middleware or the pool)."""
        return sum(s.failed for s in self._stats)

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: state, per-worker load, backend connection."""
        backend = self._backend.health() if self._backend is not None else None
        consuming = [c.queue for c in self._consumers if c.active]
        return {
            "name": self.name,
            "state": self._state.value,
            "running": self._state is PoolState.RUNNING,
            "in_flight": len(self._tasks),
            "concurrency_limit": self.concurrency_limit,
            "received": self.received,
            "processed": self.processed,
            "failed": self.failed,
            "workers": [
                {
                    "id": w.id,
                    "in_flight": s.in_flight,
                    "processed": s.processed,
                    "failed": s.failed,
                }
                for w, s in zip(self.workers, self._stats, strict=True)
            ],
            "queues": list(self._consumer_queues()),
            "consuming": consuming,
            "backend": backend,
        }

    def _consumer_queues(self) -> tuple[str, ...]:
        return tuple(c.queue for c in self._consumers)

    # -- running ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._state is PoolState.RUNNING:
            raise PoolStateError(f"pool {self.name!r} is already running: run() was called twice")
        if self._state is not PoolState.CREATED:
            raise PoolStateError(
                f"pool {self.name!r} is {self._state.value}: a pool runs once; build a new one"
            )
        self._state = PoolState.RUNNING
        self._slots = Slots(self.concurrency_limit)
        self._stopped = asyncio.Event()

    async def start(self, backend: Backend, *, queues: Sequence[str] | None = None) -> None:
        """Connect (if needed), declare topology, and start consuming; returns at once.

        `run()` is `start()` plus waiting until `shutdown()`.
        """
        names = tuple(queues or self.queues or backend.queues)
        if not names:
            # Checked before the state changes, so the pool can still be started correctly.
            raise ConfigurationError(
                f"pool {self.name!r} has no queue to consume: pass queues=[...] to the pool "
                "or to run(), or configure them on the backend"
            )
        self._start()
        self._backend = backend
        try:
            for worker in self.workers:
                await worker.startup()
            await startup_all(self.middleware, pool=self)
            if not backend.is_connected:
                await backend.connect()
            for name in names:
                await backend.declare(name)
                consumer = await backend.consume(name, self, prefetch=self.prefetch)
                self._consumers.append(consumer)
        except BaseException:
            await self._finish()
            raise
        logger.info(
            "pool %r consuming %s with %d worker(s), concurrency %d",
            self.name,
            ", ".join(names),
            len(self.workers),
            self.concurrency_limit,
        )

    async def run(self, backend: Backend, *, queues: Sequence[str] | None = None) -> None:
        """Consume until `shutdown()` is called (or this task is cancelled, which shuts
        down with the default deadline)."""
        await self.start(backend, queues=queues)
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.shutdown())
            raise

    async def dispatch(self, message: Message[Any]) -> None:
        """Take one message: wait for a free concurrency slot, then process it in a task.

        Returns once processing has started, so a caller feeding messages one by one is
        held back while the pool is full (backpressure) instead of piling up tasks.

        Raises:
            PoolStateError: the pool is not running (never started, or stopped).
        """
        if self._state is not PoolState.RUNNING:
            if self._state is PoolState.DRAINING:
                # A delivery that raced with the stop of intake goes straight back.
                await message.nack(requeue=True)
                return
            raise PoolStateError(
                f"pool {self.name!r} is {self._state.value}: dispatch() needs a running pool "
                "(call start() or run() first; a stopped pool cannot be restarted)"
            )
        slots = self._slots
        assert slots is not None
        await slots.take()
        if self._state is not PoolState.RUNNING:
            slots.give_back()
            await message.nack(requeue=True)
            return
        self._begin(message)

    def try_dispatch(self, message: Message[Any]) -> bool:
        """Start processing `message` now if the pool is running and a slot is free.

        The non-waiting twin of `dispatch()`, for a backend that receives deliveries in a
        callback that must not wait: returns False, having taken nothing, when the pool is
        full, someone already waits for a slot, or the pool is not running. The caller then
        hands the message to `dispatch()` in order.
        """
        slots = self._slots
        if self._state is not PoolState.RUNNING or slots is None or not slots.try_take():
            return False
        self._begin(message)
        return True

    def _begin(self, message: Message[Any]) -> None:
        # The caller holds a slot for the message.
        self.received += 1
        index = self._pick()
        self._in_flight_counts[index] += 1
        message.worker = worker = self.workers[index]
        message.worker_id = worker.id
        task = asyncio.create_task(self._process(message, index))
        self._tasks.add(task)
        task.add_done_callback(self._task_done_for[index])

    def _task_done(self, index: int, task: asyncio.Task[None]) -> None:
        # A done-callback, not a `finally`: a task cancelled before it ever ran still
        # gives its slot back.
        self._tasks.discard(task)
        self._in_flight_counts[index] -= 1
        assert self._slots is not None
        self._slots.give_back()

    async def _endpoint(self, message: Message[Any]) -> None:
        worker = message.worker
        assert worker is not None
        await worker.handle(message)

    async def _process(self, message: Message[Any], index: int) -> None:
        stats = self._stats[index]
        stats.in_flight += 1
        # In the message's own task: every log line of its chain (and of the thread a
        # blocking `process` runs in) names the pool, queue, message, attempt and worker.
        logs.processing(self.name, message)
        try:
            await self._chain(message)
        except asyncio.CancelledError:
            if not message.settled:
                # Cancelled at the shutdown deadline: back to the queue, never dropped.
                await message.nack(requeue=True)
            raise
        except Exception as exc:
            stats.failed += 1
            by_pool = not message.settled
            if by_pool:
                await self._settle_safely(settle_failure(message, exc, self.on_unsettled_failure))
            self._log_failure(message, exc, by_pool=by_pool)
        else:
            stats.processed += 1
            if not message.settled:
                await self._settle_safely(message.ack())
        finally:
            stats.in_flight -= 1

    def _log_failure(self, message: Message[Any], exc: Exception, *, by_pool: bool) -> None:
        # One line per failure, saying how it ended; the full traceback only at DEBUG.
        state = message.state
        asked = isinstance(exc, RetryLater) and state in _RETRIED_LATER
        level = logging.INFO if asked else logging.WARNING
        if not logger.isEnabledFor(level):
            return
        debug = logger.isEnabledFor(logging.DEBUG)
        where = "" if asked or debug else logs.compact_traceback(exc)
        error = f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
        if state is SettleState.RETRIED and message.retry_delay is not None:
            outcome = f"retrying in {message.retry_delay:.3g} s"
        else:
            outcome = _OUTCOMES[state]
        if state is SettleState.DEAD_LETTERED:
            text = "message %s dead-lettered to %s: %s; attempt %d in worker %s"
            args: tuple[Any, ...] = (
                message.id,
                wire.dead_letter_queue_name(message.queue),
                error,
                message.attempt,
                message.worker_id,
            )
        elif asked:
            text = "message %s retries later on attempt %d in worker %s (%s); %s"
            args = (message.id, message.attempt, message.worker_id, exc, outcome)
        else:
            text = "message %s failed on attempt %d in worker %s: %s; %s"
            args = (message.id, message.attempt, message.worker_id, error, outcome)
        if by_pool:
            text += "; no middleware settled it: the pool did (on_unsettled_failure=%s)"
            args += (self.on_unsettled_failure.name,)
        logger.log(level, text, *args, exc_info=exc if debug else None)

    async def _settle_safely(self, settlement: Any) -> None:
        try:
            await settlement
        except Exception:
            logger.exception("settling a message failed; the broker will redeliver it")

    # -- stopping --------------------------------------------------------------------

    async def shutdown(self, timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> ShutdownReport:
        """Stop intake, wait up to `timeout` seconds for in-flight messages, then cancel
        the rest and nack them back to their queue. Safe to call more than once and from
        any task; every caller gets the same report. A later call with a shorter `timeout`
        (a second Ctrl-C) brings the deadline forward.
        """
        if self._state is PoolState.CREATED:
            self._state = PoolState.STOPPED
            return ShutdownReport()
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        elif not self._shutdown_task.done():
            self._cut_off_after(timeout)
        return await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, timeout: float | None) -> ShutdownReport:
        self._state = PoolState.DRAINING
        # Taken now, not after the awaits below: no task starts once DRAINING, and a cut-off
        # brought forward meanwhile (a second signal) must still be counted in the report.
        in_flight = set(self._tasks)
        logger.info("pool %r stopping: %d message(s) in flight", self.name, len(in_flight))
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.cancel()
        # Layers that park messages (batching) flush now that nothing new arrives.
        await shutdown_all(self.middleware, pool=self)
        self._cut_off_after(timeout)
        if in_flight:
            await asyncio.wait(in_flight)
        if self._cutoff is not None:
            self._cutoff.cancel()
        requeued = sum(1 for task in in_flight if task.cancelled())
        report = ShutdownReport(finished=len(in_flight) - requeued, requeued=requeued)
        if self._backend is not None:
            # Settlements a backend sends a moment later (coalesced acks) leave now.
            with contextlib.suppress(Exception):
                await self._backend.flush(SETTLEMENT_FLUSH_TIMEOUT)
        await self._finish()
        logger.info(
            "pool %r stopped: %d in-flight message(s) finished, %d nacked back to the queue",
            self.name,
            report.finished,
            report.requeued,
        )
        return report

    def _cut_off_after(self, timeout: float | None) -> None:
        # In-flight messages still running `timeout` seconds from now are cancelled (and so
        # nacked back to their queue); an earlier cut-off already set stays.
        if timeout is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(timeout, 0.0)
        if self._cutoff is not None:
            if self._cutoff.when() <= when:
                return
            self._cutoff.cancel()
        self._cutoff = loop.call_at(when, self._cut_off)

    def _cut_off(self) -> None:
        for task in self._tasks:
            if not task.done() and not task.cancelling():
                task.cancel()

    async def _finish(self) -> None:
        for worker in self.workers:
            try:
                await worker.shutdown()
            except Exception:
                logger.exception("worker %s shutdown() failed", worker.id)
        self._state = PoolState.STOPPED
        if self._stopped is not None:
            self._stopped.set()
