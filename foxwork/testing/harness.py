"""`TestHarness`: run a pool (or several) on an in-memory broker inside a test."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..backends.memory import MemoryBackend, ScheduledRetry, StoredMessage, _Queue
from ..errors import ConfigurationError, DeadLetter, Drop, PoisonMessage
from ..message import Message, SettleState
from ..middleware.base import CallNext, Middleware
from ..pool import WorkerPool
from ..publisher import Publisher, PublishReceipt
from ..worker import Worker
from ._clock import VirtualClock

__all__ = ["DEFAULT_TIMEOUT", "Failure", "TestHarness", "fresh_pool"]

#: Seconds (real ones) `join()` and `advance()` wait by default before a `TimeoutError`.
DEFAULT_TIMEOUT = 10.0
#: Seconds the harness gives its pools to finish in-flight messages when it exits.
SHUTDOWN_TIMEOUT = 5.0

#: States in which a failed message is gone for good: not retried, not put back.
_GONE = frozenset({SettleState.DEAD_LETTERED, SettleState.REJECTED, SettleState.ACKED})

Workers = Sequence[Worker[Any]] | Callable[[], Sequence[Worker[Any]]]
Layers = Sequence[Middleware] | Callable[[], Sequence[Middleware]]


class _HasPools(Protocol):
    @property
    def pools(self) -> Sequence[WorkerPool]: ...


def fresh_pool(
    pool: WorkerPool,
    *,
    workers: Workers | None = None,
    middleware: Layers | None = None,
) -> WorkerPool:
    """A new, not yet started `WorkerPool` with the settings of `pool`.

    A pool runs once; a module-level pool (the form `foxwork run` loads) is copied with
    this for every run. The copy gets every constructor setting of `pool` (strategy,
    concurrency limit, queues, prefetch, name, failure policy...) and, unless replaced, the
    same worker and middleware instances: their state (a counter on a worker, a circuit
    breaker's state) carries over from one run to the next, as it does for a pool that
    `foxwork run --concurrency` rebuilds. Pass `workers=` or `middleware=` (a list, or a
    function returning a new list on every call) for new ones.
    """
    settings: dict[str, Any] = {}
    for name in inspect.signature(WorkerPool.__init__).parameters:
        if name != "self" and hasattr(pool, name):
            settings[name] = getattr(pool, name)
    if workers is not None:
        settings["workers"] = workers() if callable(workers) else workers
    if middleware is not None:
        settings["middleware"] = middleware() if callable(middleware) else middleware
    return WorkerPool(**settings)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One attempt that raised, as the outermost layer of the chain saw it.

    Attributes:
        message: the delivery (its `state` says how it was settled).
        exception: what the worker (or a middleware) raised, with its traceback.
    """

    message: Message[Any]
    exception: Exception

    @property
    def queue(self) -> str:
        return self.message.queue

    @property
    def attempt(self) -> int:
        return self.message.attempt

    @property
    def final(self) -> bool:
        """Whether the message is gone: dead-lettered or rejected (not retried, not
        requeued, not still being settled)."""
        return self.message.state in _GONE

    @property
    def unexpected(self) -> bool:
        """Whether it is an error rather than an outcome the worker asked for: not a
        `DeadLetter` raised on purpose (a `PoisonMessage`, a payload that fails validation,
        is an error) and not a `Drop`."""
        exc = self.exception
        if isinstance(exc, Drop):
            return False
        return not isinstance(exc, DeadLetter) or isinstance(exc, PoisonMessage)


class _Outcome:
    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False


_outcome: contextvars.ContextVar[_Outcome | None] = contextvars.ContextVar(
    "foxwork_testing_outcome", default=None
)


class _Observer:
    """The outermost layer of a harness's pools: records what became of each message."""

    def __init__(self, harness: TestHarness) -> None:
        self._harness = harness

    def __repr__(self) -> str:
        return "<foxwork.testing observer>"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        harness = self._harness
        outcome = _Outcome()
        token = _outcome.set(outcome)
        harness._in_flight += 1
        try:
            await call_next(message)
        except Exception as exc:
            harness.failures.append(Failure(message, exc))
            raise
        else:
            target = harness._dropped if outcome.dropped else harness._processed
            target.append(message)
        finally:
            _outcome.reset(token)
            harness._in_flight -= 1
            harness.backend._notify_any()


class _DropSpotter:
    """The innermost layer: notes a `Drop` the worker raised (an outer layer acks it)."""

    def __repr__(self) -> str:
        return "<foxwork.testing drop spotter>"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        try:
            await call_next(message)
        except Drop:
            outcome = _outcome.get()
            if outcome is not None:
                outcome.dropped = True
            raise


class _HarnessBackend(MemoryBackend):
    """A `MemoryBackend` that keeps every retry it scheduled."""

    def __init__(self, *, clock: VirtualClock) -> None:
        super().__init__(clock=clock)
        self.retry_log: list[ScheduledRetry] = []

    def _schedule_retry(self, queue: _Queue, stored: StoredMessage, delay: float) -> ScheduledRetry:
        retry = super()._schedule_retry(queue, stored, delay)
        self.retry_log.append(retry)
        return retry


class TestHarness:
    """Runs a `WorkerPool` (a copy of it), or several, on an in-memory broker with a
    virtual clock for retry delays, for a test.

    `async with TestHarness(pool) as harness:` connects a `MemoryBackend`, starts a
    `fresh_pool()` copy of each pool (so a module-level pool runs in every test) and shuts
    them down on exit. Publish with `publish()` (the `Publisher` API of production), wait
    with `join()`, then look at `processed()`, `dead_letters()`, `retries()` and
    `failures`.

    Retry delays are virtual: a retried copy waits on the harness's clock, which moves
    only in `join()` (to each retry's due time in turn, unless `skip_delays=False`) and
    `advance()`. Everything else (a worker's `processing_timeout`, a circuit breaker's
    recovery timeout, a batch's flush interval) runs on real time.

    Args:
        target: a `WorkerPool`, a list of pools, or an `App` (its pools run on the queues
            it gives them).
        workers: new workers for the copy of a single pool (a list, or a function returning
            one); by default the pool's own instances (see `fresh_pool`).
        middleware: a new chain for the copy of a single pool, likewise.
        queues: the queues to consume, for a pool that names none.
        declare: other queues to create, for messages that handlers publish downstream
            (read them with `messages()`); the memory broker refuses a publish to a queue
            that does not exist, as RabbitMQ refuses a mandatory one.
        timeout: default seconds for `join()` and `advance()`.

    Example:
        async with TestHarness(pool) as harness:
            await harness.publish({"sku": "A-1"}, queue="orders")
            await harness.join()  # raises what a worker raised, if a message failed
            assert [m.payload for m in harness.processed("orders")] == [{"sku": "A-1"}]
    """

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(
        self,
        target: WorkerPool | Sequence[WorkerPool] | _HasPools,
        *,
        workers: Workers | None = None,
        middleware: Layers | None = None,
        queues: Sequence[str] = (),
        declare: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        originals = _pools_of(target)
        if len(originals) != 1 and (workers is not None or middleware is not None):
            raise ConfigurationError(
                "TestHarness(workers=..., middleware=...) replaces those of a single pool; "
                f"this target has {len(originals)}: build the pools you need and pass them"
            )
        self.clock = VirtualClock()
        backend = _HarnessBackend(clock=self.clock)
        self.backend: MemoryBackend = backend
        self._retry_log = backend.retry_log
        self.publisher = Publisher(self.backend)
        self.timeout = timeout
        #: Every attempt that raised, in order (see `Failure`).
        self.failures: list[Failure] = []
        self._processed: list[Message[Any]] = []
        self._dropped: list[Message[Any]] = []
        self._reported: set[int] = set()
        self._in_flight = 0
        self._declare = tuple(declare)
        # Each copy with the queues it consumes (an App names them per pool).
        self._bindings = tuple(
            (self._copy(pool, workers, middleware), tuple(names or pool.queues or queues))
            for pool, names in originals
        )
        #: The running copies, in the order of the target's pools.
        self.pools: tuple[WorkerPool, ...] = tuple(pool for pool, _ in self._bindings)

    def __repr__(self) -> str:
        return f"<TestHarness queues={list(self.queues)} time={self.clock.time():g}>"

    def _copy(
        self, pool: WorkerPool, workers: Workers | None, middleware: Layers | None
    ) -> WorkerPool:
        layers = middleware() if callable(middleware) else middleware
        chain = [_Observer(self), *(pool.middleware if layers is None else layers), _DropSpotter()]
        return fresh_pool(pool, workers=workers, middleware=chain)

    @property
    def pool(self) -> WorkerPool:
        """The running copy of the pool (when the harness runs one)."""
        if len(self.pools) != 1:
            raise ConfigurationError(
                f"the harness runs {len(self.pools)} pools: use harness.pools[i]"
            )
        return self.pools[0]

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues the harness's pools consume."""
        names: dict[str, None] = {}
        for _, queues in self._bindings:
            for name in queues:
                names[name] = None
        return tuple(names)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> TestHarness:
        await self.backend.connect()
        try:
            for name in self._declare:
                await self.backend.declare(name)
            for pool, queues in self._bindings:
                await pool.start(self.backend, queues=queues or None)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        try:
            for pool in self.pools:
                await pool.shutdown(SHUTDOWN_TIMEOUT)
        finally:
            await self.publisher.close()
            await self.backend.close()

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        payload: Any,
        queue: str | None = None,
        *,
        routing_key: str | None = None,
        exchange: str = "",
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        priority: int | None = None,
        expiration: float | None = None,
        persistent: bool = True,
    ) -> PublishReceipt:
        """Publish a message with `Publisher.publish()` (same encoding, headers and ids as
        in production) to `queue`: by default the only queue the harness consumes.
        `routing_key` is the same thing under `Publisher`'s name. Returns the message id.
        """
        if queue is not None and routing_key is not None and queue != routing_key:
            raise ConfigurationError(
                f"publish(queue={queue!r}, routing_key={routing_key!r}): pass one of them"
            )
        target = queue or routing_key or self._only_queue("publish(payload, queue=...)")
        return await self.publisher.publish(
            payload,
            routing_key=target,
            exchange=exchange,
            headers=headers,
            message_id=message_id,
            priority=priority,
            expiration=expiration,
            persistent=persistent,
        )

    def _only_queue(self, call: str) -> str:
        queues = self.queues
        if len(queues) != 1:
            raise ConfigurationError(
                f"the harness consumes {len(queues)} queues ({', '.join(queues)}): name one, "
                f"as in {call}"
            )
        return queues[0]

    # -- waiting ---------------------------------------------------------------------

    async def join(
        self, *, fail_fast: bool = True, skip_delays: bool = True, timeout: float | None = None
    ) -> None:
        """Wait until every queue the harness consumes is idle: nothing ready, nothing
        being processed, and (with `skip_delays`) no retry pending.

        Args:
            fail_fast: raise the exception of the first message that failed for good (see
                below) as soon as it did, instead of waiting on. False: wait on; the
                failures seen by then are not raised by a later call either.
            skip_delays: move the virtual clock to each pending retry's due time in turn,
                so that every retry runs now, in the order and at the virtual times it
                would have. False: return once nothing is ready or being processed,
                leaving the retries pending (see `retries()`, then `advance()`).
            timeout: real seconds; the harness's `timeout` when None.

        Raises:
            Exception: with `fail_fast`, the exception, with its traceback, behind the
                first message that failed for good (dead-lettered after its last attempt,
                or rejected) and not seen by an earlier `join()` or `advance()`. A
                `DeadLetter` the worker raised on purpose and a `Drop` are outcomes, not
                errors, and are not raised (a `PoisonMessage`, a payload that fails
                validation, is). When several messages failed, the first is raised; a note
                on it counts the others, and `failures` lists every failed attempt.
            TimeoutError: not idle after `timeout` seconds; the message says what is busy.
        """
        await self._run(None if skip_delays else self.clock.time(), fail_fast, timeout)

    async def advance(
        self, seconds: float, *, fail_fast: bool = True, timeout: float | None = None
    ) -> None:
        """Move the virtual clock `seconds` on, processing on the way every retry that
        comes due (and the retries those schedule, if due in time), each at its own time.

        Raises:
            as `join()`.
        """
        if not seconds >= 0:
            raise ConfigurationError(f"advance({seconds!r}): pass a number of seconds >= 0")
        await self._run(self.clock.time() + seconds, fail_fast, timeout)

    async def _run(self, until: float | None, fail_fast: bool, timeout: float | None) -> None:
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    await self._quiet(fail_fast)
                    due = self.clock.next_due
                    if due is None or (until is not None and due > until):
                        break
                    self.clock.advance_to(due)
        except TimeoutError:
            raise TimeoutError(f"not idle after {limit} s: {self._busy()}") from None
        if until is not None:
            self.clock.advance_to(until)
        if not fail_fast:
            # Seen by a caller who chose to look at them itself: not raised later either.
            self._reported.update(id(f) for f in self.failures if f.final)

    async def _quiet(self, fail_fast: bool) -> None:
        """Return once no message is ready or being processed in the consumed queues."""
        while True:
            if fail_fast:
                self._raise_failure()
            if self._in_flight == 0 and all(
                not self.backend.messages(name) and not self.backend.unacked(name)
                for name in self.queues
            ):
                return
            await self.backend.wait_for_change()

    def _busy(self) -> str:
        parts = [
            f"{name}: {len(self.backend.messages(name))} ready, "
            f"{self.backend.unacked(name)} unacked, "
            f"{len(self.backend.pending_retries(name))} retries pending"
            for name in self.queues
        ]
        return "; ".join(parts) + f"; {self._in_flight} in the middleware chain"

    def _raise_failure(self) -> None:
        found = [
            f for f in self.failures if f.final and f.unexpected and id(f) not in self._reported
        ]
        if not found:
            return
        first = found[0]
        self._reported.update(id(f) for f in found)
        exc = first.exception
        exc.add_note(
            f"foxwork.testing: message {first.message.id} of queue {first.queue!r} failed for "
            f"good on attempt {first.attempt} ({first.message.state.value})"
            + (
                f"; {len(found) - 1} more message(s) failed too: see harness.failures"
                if len(found) > 1
                else ""
            )
        )
        raise exc

    # -- looking ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The virtual time, in seconds since the harness was made."""
        return self.clock.time()

    def processed(self, queue: str | None = None) -> list[Message[Any]]:
        """Messages of `queue` (of every consumed queue when None) whose processing ended
        without an error, in the order they finished; a message dropped with `Drop` is in
        `dropped()` instead."""
        return self._select(self._processed, queue)

    def dropped(self, queue: str | None = None) -> list[Message[Any]]:
        """Messages whose worker raised `Drop`, in order."""
        return self._select(self._dropped, queue)

    @staticmethod
    def _select(found: list[Message[Any]], queue: str | None) -> list[Message[Any]]:
        return [m for m in found if queue is None or m.queue == queue]

    def dead_letters(self, queue: str | None = None) -> list[StoredMessage]:
        """The dead letters of `queue` (of every consumed queue when None): copies with
        the diagnostic headers (`x-failure-reason`, `x-exception-type`...) and a
        `payload`."""
        names = (queue,) if queue is not None else self.queues
        return [letter for name in names for letter in self.backend.dead_letters(name)]

    def retries(self, queue: str | None = None) -> list[ScheduledRetry]:
        """Every retry scheduled for `queue` (every queue when None), in order: its
        `attempt`, the `delay` asked for, the `held` tier delay, its `due` virtual time,
        and whether it was `released` to its queue yet."""
        return [r for r in self._retry_log if queue is None or r.queue == queue]

    def messages(self, queue: str) -> list[StoredMessage]:
        """The messages waiting in `queue`: what handlers published downstream to a queue
        no pool of the harness consumes."""
        return self.backend.messages(queue)


def _pools_of(target: object) -> tuple[tuple[WorkerPool, tuple[str, ...]], ...]:
    """The pools of `target`, each with the queues it consumes (empty: the pool's own)."""
    if isinstance(target, WorkerPool):
        return ((target, ()),)
    bindings = getattr(target, "bindings", None)
    if bindings is not None:  # an App: its pools with the queues it gave each
        found = tuple((b.pool, tuple(b.queues)) for b in bindings)
    else:
        pools = getattr(target, "pools", target)
        found = tuple((p, ()) for p in pools) if isinstance(pools, Sequence) else ()
    if not found or not all(isinstance(pool, WorkerPool) for pool, _ in found):
        raise ConfigurationError(
            f"TestHarness({target!r}): pass a WorkerPool, a list of pools, or an App"
        )
    return found
