"""`CircuitBreakerMiddleware`: stop calling a failing dependency, then probe it carefully."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .._checks import is_count, is_number
from ..errors import ConfigurationError, DeadLetter, Drop
from ..message import Message
from .base import CallNext, StoppedPools, holds_failed_probe, pool_key, probing

__all__ = [
    "CircuitBreakerMiddleware",
    "CircuitState",
    "CircuitTransition",
    "StateListener",
    "holds_failed_probe",  # defined in `base`, shared with `RetryMiddleware`; re-exported
]

logger = logging.getLogger("foxwork.circuit_breaker")

#: Consecutive failures that open the circuit.
DEFAULT_FAILURE_THRESHOLD = 5
#: Seconds the circuit stays OPEN before it lets probes through.
DEFAULT_RECOVERY_TIMEOUT = 30.0
#: Probe messages processed at once while HALF_OPEN.
DEFAULT_HALF_OPEN_MAX_REQUESTS = 1
#: Seconds a message is held at most before it goes back to its queue: well below
#: RabbitMQ's default consumer ack timeout (`consumer_timeout`, 30 minutes).
DEFAULT_MAX_HOLD = 25 * 60.0
#: State transitions kept in `CircuitBreakerMiddleware.transitions`.
TRANSITION_HISTORY = 100


class CircuitState(enum.Enum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    """Healthy: every message is processed; consecutive failures are counted."""
    OPEN = "open"
    """Tripped: messages are held, unprocessed, until `recovery_timeout` has passed."""
    HALF_OPEN = "half_open"
    """Recovering: a few probe messages run; one success closes, one failure reopens."""


class CircuitTransition(NamedTuple):
    """One change of state.

    Attributes:
        at: when it happened, in seconds since the epoch (`time.time()`).
        old: the state before.
        new: the state after.
    """

    at: float
    old: CircuitState
    new: CircuitState


#: Called with (old, new) on every change of state.
StateListener = Callable[[CircuitState, CircuitState], None]


def default_is_failure(exc: BaseException) -> bool:
    """Every exception counts against the dependency except `Drop` and `DeadLetter`
    (poison messages included): a bad message says nothing about the dependency's health."""
    return not isinstance(exc, Drop | DeadLetter)


class CircuitBreakerMiddleware:
    """Opens after consecutive failures, holds messages while open, then probes.

    CLOSED → OPEN after `failure_threshold` consecutive failures; OPEN → HALF_OPEN after
    `recovery_timeout` seconds; in HALF_OPEN at most `half_open_max_requests` probe
    messages run at once: a probe success closes the circuit (and resets the count), a
    probe failure reopens it. A success in CLOSED resets the count. Outcomes of messages
    that started before the last change of state are not counted.

    **While OPEN, messages wait inside this layer.** They are not processed, not settled
    and consume no retry attempt; they keep their pool concurrency slots, so once every
    slot is held the pool takes no more deliveries and the broker keeps the rest (prefetch
    backpressure). An open circuit therefore never burns messages into the DLQ and never
    spins on redelivery. When the circuit half-opens, held messages become probes in
    arrival order. When the pool shuts down, its held messages are nacked back to their
    queue at once (intake has stopped; nothing waits for the shutdown deadline).

    **A message is held for at most `max_hold` seconds**, then nacked back to its queue
    (no retry attempt used, never dead-lettered) and its slot freed; the broker delivers
    it again, and it is held again if the circuit is still open. An unsettled delivery
    kept longer than the broker's consumer ack timeout (RabbitMQ's `consumer_timeout`, 30
    minutes by default) makes the broker close the channel and redeliver it, so the held
    copy would be a stale duplicate: keep `max_hold` below that timeout. Each hand-back is
    one redelivery, which a quorum queue counts towards its `delivery_limit`; a message
    that does reach the worker later is processed once.

    **A failed probe is held again**, not settled and not re-raised: it reopens the circuit,
    is logged, and waits behind the other held messages for the next HALF_OPEN. So it
    consumes no retry attempt, and no redelivery either (a requeue would count towards a
    quorum queue's delivery limit and `RetryMiddleware`'s crash-loop detection, and could
    end in the DLQ on an open circuit). `RetryMiddleware` inside the breaker asks
    `holds_failed_probe()` and leaves such a failure to the breaker; a `RetryMiddleware`
    outside the breaker never sees it. Only failures per `is_failure` are held: a probe
    that raises `Drop` or `DeadLetter` is settled by the inner layers as usual. Keep
    `AckNackMiddleware` outside the breaker (as in the documented chain order), or it
    would settle a failed probe before the breaker can hold it.

    Every other failure is re-raised unchanged: the breaker is transparent.

    Shared state (on purpose, one breaker per dependency): `state`, `failure_count`,
    `transitions` and the held messages. Share an instance between pools to protect one
    dependency, use one instance per pool otherwise. The lifecycle is per pool: one pool's
    shutdown hands back that pool's held messages only; the other pools' stay held.

    Args:
        failure_threshold: consecutive failures in CLOSED that open the circuit.
        recovery_timeout: seconds in OPEN before probing.
        half_open_max_requests: probes processed at once in HALF_OPEN.
        is_failure: whether an exception counts against the dependency; by default
            everything but `Drop` and `DeadLetter`.
        on_state_change: called with (old, new) on every transition; more can be added
            with `add_listener()`.
        max_hold: seconds a message is held at most before it goes back to its queue;
            keep it below the broker's consumer ack timeout.

    Example:
        breaker = CircuitBreakerMiddleware(failure_threshold=5, recovery_timeout=30.0)
        breaker.add_listener(lambda old, new: log.warning("payments API %s", new.value))
        pool = WorkerPool(
            workers=[PaymentWorker()],
            middleware=[AckNackMiddleware(), breaker, RetryMiddleware()],
        )
    """

    def __init__(
        self,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        recovery_timeout: float = DEFAULT_RECOVERY_TIMEOUT,
        half_open_max_requests: int = DEFAULT_HALF_OPEN_MAX_REQUESTS,
        is_failure: Callable[[BaseException], bool] = default_is_failure,
        on_state_change: StateListener | None = None,
        max_hold: float = DEFAULT_MAX_HOLD,
    ) -> None:
        if not is_count(failure_threshold):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(failure_threshold={failure_threshold!r}): pass an "
                "int of at least 1 (consecutive failures that open the circuit)"
            )
        if not (is_number(recovery_timeout) and recovery_timeout > 0):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(recovery_timeout={recovery_timeout!r}): pass a "
                "positive number of seconds to stay OPEN before probing"
            )
        if not is_count(half_open_max_requests):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(half_open_max_requests={half_open_max_requests!r}): "
                "pass an int of at least 1 (probe messages at once while HALF_OPEN)"
            )
        if not callable(is_failure):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(is_failure={is_failure!r}): pass a callable "
                "taking the exception and returning True when it counts as a failure"
            )
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(on_state_change={on_state_change!r}): pass a "
                "callable taking (old_state, new_state), or None"
            )
        if not (is_number(max_hold) and max_hold > 0):
            raise ConfigurationError(
                f"CircuitBreakerMiddleware(max_hold={max_hold!r}): pass a positive number of "
                "seconds, below the broker's consumer ack timeout (RabbitMQ: 30 minutes)"
            )
        self.failure_threshold = failure_threshold
        self.recovery_timeout = float(recovery_timeout)
        self.half_open_max_requests = half_open_max_requests
        self.is_failure = is_failure
        self.max_hold = float(max_hold)
        self._listeners: list[StateListener] = []
        if on_state_change is not None:
            self._listeners.append(on_state_change)
        #: The last `TRANSITION_HISTORY` transitions, oldest first.
        self.transitions: collections.deque[CircuitTransition] = collections.deque(
            maxlen=TRANSITION_HISTORY
        )
        self._state = CircuitState.CLOSED
        self._failures = 0
        # Bumped on every transition: an outcome is counted only in the generation its
        # message was admitted in, so stragglers from an older state change nothing.
        self._generation = 0
        self._probes = 0
        # Held messages, oldest first; each future receives its admission.
        self._waiters: collections.deque[_Held] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        # Pools that stopped intake: their messages may not be held any more.
        self._stopped = StoppedPools()

    def __repr__(self) -> str:
        return (
            f"CircuitBreakerMiddleware(failure_threshold={self.failure_threshold}, "
            f"recovery_timeout={self.recovery_timeout}, "
            f"half_open_max_requests={self.half_open_max_requests})"
        )

    # -- observation -----------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state."""
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in the current CLOSED period."""
        return self._failures

    @property
    def held(self) -> int:
        """Messages waiting in this layer for the circuit to let them through."""
        return sum(not held.future.done() for held in self._waiters)

    def add_listener(self, listener: StateListener) -> None:
        """Call `listener(old, new)` on every change of state (for example to update a
        metrics gauge). A listener that raises is logged and does not stop the others."""
        if not callable(listener):
            raise ConfigurationError(
                f"add_listener({listener!r}): pass a callable taking (old_state, new_state)"
            )
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling a listener added before; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- the layer -------------------------------------------------------------------

    async def startup(self) -> None:
        self._stopped.started()

    async def shutdown(self) -> None:
        """A pool stopped intake: its held messages go back to their queues now, instead of
        waiting for the shutdown deadline (a nack, not a retry: no attempt is used up).
        Messages held for other pools sharing this breaker stay held."""
        pool = self._stopped.stopped()
        for held in [held for held in self._waiters if held.pool is pool]:
            self._release(held, "the pool is shutting down")

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        # When this delivery goes back to its queue rather than being held on: `max_hold`
        # after it first met a circuit that was not CLOSED (the broker's ack timeout runs
        # per delivery, across every hold and failed probe).
        deadline: float | None = None
        while True:
            if self._state is CircuitState.CLOSED:
                # The common case, without a coroutine: what `_admit` returns when CLOSED.
                probe, generation = False, self._generation
            else:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self.max_hold
                try:
                    probe, generation = await self._admit(deadline)
                except _Released as released:
                    logger.info(
                        "message %s held by the open circuit goes back to its queue (%s)",
                        message.id,
                        released,
                    )
                    await message.nack(requeue=True)
                    return
            # Set for a probe, and cleared under an outer breaker's probe; otherwise it is
            # None already and stays so.
            token = None
            if probe or probing.get() is not None:
                token = probing.set(self.is_failure if probe else None)
            try:
                await call_next(message)
            except Exception as exc:
                failure = True if self.is_failure(exc) else None
                self._record(generation, probe=probe, failure=failure)
                if probe and failure and not message.settled:
                    logger.warning(
                        "probe message %s failed (%s: %s); held for the next probe",
                        message.id,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                raise
            except BaseException:
                # Cancelled (shutdown deadline): says nothing about the dependency.
                self._record(generation, probe=probe, failure=None)
                raise
            else:
                self._record(generation, probe=probe, failure=False)
                return
            finally:
                if token is not None:
                    probing.reset(token)

    async def _admit(self, deadline: float | None) -> tuple[bool, int]:
        """Wait until this message may run. Returns whether it runs as a HALF_OPEN probe,
        and the generation it was admitted in.

        Raises:
            _Released: the message goes back to its queue instead (its pool is stopping,
                or it would be held past `deadline`).
        """
        state = self._state
        if state is CircuitState.CLOSED:
            return False, self._generation
        if self._stopped.stopping():
            raise _Released("the pool is shutting down")
        if (
            state is CircuitState.HALF_OPEN
            and not self._waiters
            and self._probes < self.half_open_max_requests
        ):
            self._probes += 1
            return True, self._generation
        # OPEN, or HALF_OPEN with every probe slot taken: hold the message, in arrival
        # order. `_wake()` hands it its admission, `_release()` sends it back. A
        # cancellation here (shutdown deadline) propagates; the pool nacks the message.
        loop = asyncio.get_running_loop()
        expired = f"held for max_hold={self.max_hold:g}s"
        if deadline is None:
            deadline = loop.time() + self.max_hold
        elif deadline <= loop.time():
            raise _Released(expired)
        held = _Held(loop.create_future(), pool_key())
        self._waiters.append(held)
        timer = loop.call_at(deadline, self._release, held, expired)
        try:
            return await held.future
        except asyncio.CancelledError:
            waiter = held.future
            if not waiter.done():
                self._waiters.remove(held)
            elif not waiter.cancelled() and waiter.exception() is None:
                # Admitted and cancelled in the same instant: give the probe slot back.
                probe, generation = waiter.result()
                self._record(generation, probe=probe, failure=None)
            raise
        finally:
            timer.cancel()

    def _release(self, held: _Held, why: str) -> None:
        """Send a held message back to its queue (its `_admit` raises `_Released`)."""
        if not held.future.done():
            self._waiters.remove(held)
            held.future.set_exception(_Released(why))

    def _wake(self) -> None:
        """Admit held messages as far as the current state allows, oldest first."""
        waiters = self._waiters
        if self._state is CircuitState.CLOSED:
            while waiters:
                waiter = waiters.popleft().future
                if not waiter.done():
                    waiter.set_result((False, self._generation))
        elif self._state is CircuitState.HALF_OPEN:
            while waiters and self._probes < self.half_open_max_requests:
                waiter = waiters.popleft().future
                if not waiter.done():
                    self._probes += 1
                    waiter.set_result((True, self._generation))

    def _record(self, generation: int, *, probe: bool, failure: bool | None) -> None:
        """Count one outcome: failure True/False, or None for neither (cancelled, or an
        exception that `is_failure` rejects)."""
        if generation != self._generation:
            return
        if probe:
            if failure:
                self._transition(CircuitState.OPEN)
            elif failure is False:
                self._transition(CircuitState.CLOSED)
            else:
                self._probes -= 1
                self._wake()
        elif failure:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._transition(CircuitState.OPEN)
        elif failure is False:
            self._failures = 0

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes = 0
        self._failures = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if new is CircuitState.OPEN:
            self._timer = asyncio.get_running_loop().call_later(
                self.recovery_timeout, self._half_open, self._generation
            )
        self.transitions.append(CircuitTransition(time.time(), old, new))
        log = logger.warning if new is CircuitState.OPEN else logger.info
        log("circuit %s -> %s", old.value, new.value)
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:
                logger.exception("circuit breaker listener %r failed", listener)
        self._wake()

    def _half_open(self, generation: int) -> None:
        self._timer = None
        if generation == self._generation and self._state is CircuitState.OPEN:
            self._transition(CircuitState.HALF_OPEN)


class _Held:
    """One held message: the future that receives its admission, and its pool's key."""

    __slots__ = ("future", "pool")

    def __init__(self, future: asyncio.Future[tuple[bool, int]], pool: object) -> None:
        self.future = future
        self.pool = pool


class _Released(Exception):
    """A held message goes back to its queue: its pool is shutting down, or it was held
    for `max_hold` seconds."""
