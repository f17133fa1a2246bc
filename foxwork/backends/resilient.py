"""`ResilientBackend`: wraps any backend and reconnects it forever.

It is the only owner of reconnection and of re-establishing consumers. It records what was
declared and consumed, and after every reconnect replays it: topology first, then consumers.
The pool keeps the consumer objects it was given; they switch to the new connection (or the
new subscription) underneath.

While the connection is up, a consumer that reports itself gone (`Consumer.on_gone`: the
broker cancelled it) is re-established at once, and a watchdog finds any other consumer that
is gone (its channel closed, its hand-over task dead): a consumer is never silently gone.
Both go through `_recovery.Restorer`, one attempt loop per consumer, waiting a jittered
backoff (`_backoff.Backoff`) between attempts, as the reconnect loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_fixed
from tenacity.wait import wait_base

from .._redact import redact
from ..errors import BackendError, ConfigurationError, ConnectionLost
from ..message import MessageProperties
from ._backoff import Backoff
from ._client_noise import fold_client_noise, unfold_client_noise
from ._recovery import Restorer
from .base import Backend, Consumer, Intake

__all__ = ["ConnectionState", "ReconnectStrategy", "ResilientBackend"]

logger = logging.getLogger("foxwork.backends.resilient")

#: Seconds between two watchdog checks of the consumers.
DEFAULT_WATCHDOG_INTERVAL = 5.0


class ConnectionState(enum.Enum):
    """Where a `ResilientBackend`'s connection stands."""

    DISCONNECTED = "disconnected"
    """Never connected yet, or lost; see `reconnect_attempts`."""
    CONNECTING = "connecting"
    """A connect attempt is under way."""
    CONNECTED = "connected"
    """Connected, topology declared, consumers subscribed."""
    CLOSED = "closed"
    """`close()` was called; no more reconnects."""


class ReconnectStrategy:
    """How long to wait between reconnect attempts. Use one of the nested classes."""

    @dataclasses.dataclass(frozen=True)
    class Exponential:
        """`initial` * `multiplier`**n seconds, capped at `max`, spread by ± `jitter_factor`.

        Example:
            ReconnectStrategy.Exponential(initial=1.0, max=60.0, multiplier=2.0)
        """

        initial: float = 1.0
        max: float = 60.0
        multiplier: float = 2.0
        jitter_factor: float = 0.1

        def __post_init__(self) -> None:
            if self.initial <= 0:
                raise ConfigurationError(f"Exponential(initial={self.initial!r}) must be > 0 s")
            if self.max < self.initial:
                raise ConfigurationError(
                    f"Exponential(max={self.max!r}) must be >= initial={self.initial!r}"
                )
            if self.multiplier < 1:
                raise ConfigurationError(
                    f"Exponential(multiplier={self.multiplier!r}) must be >= 1"
                )
            if not 0 <= self.jitter_factor <= 1:
                raise ConfigurationError(
                    f"Exponential(jitter_factor={self.jitter_factor!r}) must be between 0 and 1"
                )

        def wait(self) -> wait_base:
            return Backoff(self.initial, self.max, self.multiplier, self.jitter_factor).wait()

    @dataclasses.dataclass(frozen=True)
    class Fixed:
        """The same `delay` in seconds between attempts."""

        delay: float = 5.0

        def __post_init__(self) -> None:
            if self.delay < 0:
                raise ConfigurationError(f"Fixed(delay={self.delay!r}) must be >= 0 s")

        def wait(self) -> wait_base:
            return wait_fixed(self.delay)


Strategy = ReconnectStrategy.Exponential | ReconnectStrategy.Fixed
StateCallback = Callable[[ConnectionState, ConnectionState], None]


class _ResilientConsumer(Consumer):
    """The consumer the pool holds; the inner one is replaced after each reconnect, and
    whenever it is gone."""

    def __init__(self, queue: str, intake: Intake, prefetch: int, restorer: Restorer) -> None:
        self.queue = queue
        self.intake = intake
        self.prefetch = prefetch
        self.inner: Consumer | None = None
        self.cancelled = False
        self._restorer = restorer

    @property
    def active(self) -> bool:
        return not self.cancelled and self.inner is not None and self.inner.active

    async def cancel(self) -> None:
        self.cancelled = True
        await self._restorer.stop(self)
        if self.inner is not None:
            await self.inner.cancel()


class ResilientBackend(Backend):
    """Wraps a backend and keeps it connected until `close()`.

    The first connect fails fast (a wrong URL or bad credentials should stop a deployment)
    unless `fail_fast=False`; every later loss is retried forever with `strategy`.

    Args:
        backend: the backend to keep connected (RabbitMQ or memory).
        strategy: `ReconnectStrategy.Exponential(...)` (default) or `.Fixed(delay)`.
        fail_fast: the first `connect()` raises instead of retrying.
        watchdog_interval: seconds between checks that every consumer is alive.
        on_state_change: called with (old, new) `ConnectionState` on every change.

    Attributes:
        reconnect_attempts: connect attempts made since the connection was last lost.
        consecutive_failures: failed attempts in a row (0 while connected).
        last_error: the last connection error, redacted, or None.

    Example:
        backend = ResilientBackend(RabbitMQBackend(url=url, queue="orders"))
        await pool.run(backend)
    """

    def __init__(
        self,
        backend: Backend,
        *,
        strategy: Strategy | None = None,
        fail_fast: bool = True,
        watchdog_interval: float = DEFAULT_WATCHDOG_INTERVAL,
        on_state_change: StateCallback | None = None,
    ) -> None:
        if isinstance(backend, ResilientBackend):
            raise ConfigurationError("backend is already a ResilientBackend: wrap it only once")
        if watchdog_interval <= 0:
            raise ConfigurationError(f"watchdog_interval={watchdog_interval!r} must be > 0 s")
        self.backend = backend
        self.queues = backend.queues
        self.strategy: Strategy = strategy or ReconnectStrategy.Exponential()
        self.fail_fast = fail_fast
        self.watchdog_interval = watchdog_interval
        self.reconnect_attempts = 0
        self.consecutive_failures = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._state = ConnectionState.DISCONNECTED
        self._callbacks: list[StateCallback] = [on_state_change] if on_state_change else []
        self._declared: list[str] = []
        self._consumers: list[_ResilientConsumer] = []
        self._restorer = Restorer()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._folding = False
        backend.add_connection_lost_callback(self._on_lost)

    def __repr__(self) -> str:
        return f"<ResilientBackend {self.backend!r} state={self._state.value}>"

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED and self.backend.is_connected

    def add_state_callback(self, callback: StateCallback) -> None:
        """Call `callback(old, new)` on every `ConnectionState` change."""
        self._callbacks.append(callback)

    def _set_state(self, new: ConnectionState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        if new is ConnectionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        for callback in self._callbacks:
            try:
                callback(old, new)
            except Exception:
                logger.exception("state callback %r failed", callback)

    async def wait_connected(self) -> None:
        """Return once the backend is connected (again)."""
        await self._connected.wait()

    def health(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "connected": self.is_connected,
            "state": self._state.value,
            "reconnect_attempts": self.reconnect_attempts,
            "consecutive_failures": self.consecutive_failures,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "consumers": {c.queue: c.active for c in self._consumers},
            "backend": self.backend.health(),
        }

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        if self._state is ConnectionState.CLOSED:
            raise ConnectionLost("this ResilientBackend was closed; build a new one")
        if self.is_connected:
            return
        self._fold_client_noise(True)
        if self.fail_fast and self.reconnects == 0 and self.consecutive_failures == 0:
            self._set_state(ConnectionState.CONNECTING)
            try:
                await self.backend.connect()
            except BaseException as exc:
                self._record_failure(exc)
                self._set_state(ConnectionState.DISCONNECTED)
                self._fold_client_noise(False)
                raise
            self._connected_now()
        else:
            await self._reconnect_forever()
        self._start_watchdog()

    def _fold_client_noise(self, on: bool) -> None:
        # The client's own lines about a lost connection go to INFO while this backend
        # reports the loss (see `_client_noise`); once per backend.
        if on and not self._folding:
            fold_client_noise()
        elif not on and self._folding:
            unfold_client_noise()
        self._folding = on

    def _connected_now(self) -> None:
        self.consecutive_failures = 0
        self.reconnect_attempts = 0
        self._set_state(ConnectionState.CONNECTED)

    def _record_failure(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self.last_error = redact(f"{type(exc).__name__}: {exc}")

    async def flush(self, timeout: float | None = None) -> bool:
        return await self.backend.flush(timeout)

    async def close(self) -> None:
        self._set_state(ConnectionState.CLOSED)
        for task in (self._reconnect_task, self._watchdog_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        await self._restorer.stop()
        for consumer in self._consumers:
            consumer.cancelled = True
        try:
            await self.backend.close()
        finally:
            self._fold_client_noise(False)

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self._record_failure(exc or ConnectionLost("connection lost"))
        self.consecutive_failures = 0  # the loss itself is not a failed attempt
        self._set_state(ConnectionState.DISCONNECTED)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_forever(), name="foxwork-reconnect"
            )

    async def _before_sleep(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        # One WARNING line per failed attempt; the traceback only at DEBUG, so a long outage
        # does not flood the log.
        logger.warning(
            "reconnect attempt %d failed (%s); next in %.1f s",
            self.reconnect_attempts,
            self.last_error,
            wait,
            exc_info=exc if logger.isEnabledFor(logging.DEBUG) else None,
        )

    async def _reconnect_forever(self) -> None:
        retrying = AsyncRetrying(
            wait=self.strategy.wait(),
            retry=retry_if_exception_type((BackendError, OSError, TimeoutError)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._attempt()
        self.reconnects += 1
        logger.info(
            "reconnected after %d attempt(s); %d consumer(s) restored",
            self.reconnect_attempts,
            len(self._consumers),
        )
        self._connected_now()

    async def _attempt(self) -> None:
        if self._state is ConnectionState.CLOSED:
            raise asyncio.CancelledError
        self.reconnect_attempts += 1
        self._set_state(ConnectionState.CONNECTING)
        try:
            # Restores begun before the loss are over: the replay below subscribes again.
            await self._restorer.stop()
            await self.backend.connect()
            # Replay what was recorded: topology first, then consumers.
            for queue in self._declared:
                await self.backend.declare(queue)
            for consumer in self._consumers:
                if not consumer.cancelled:
                    await self._subscribe(consumer)
        except BaseException as exc:
            self._record_failure(exc)
            self._set_state(ConnectionState.DISCONNECTED)
            if isinstance(exc, BackendError | OSError | TimeoutError):
                with contextlib.suppress(Exception):
                    await self.backend.close()
            raise

    def _start_watchdog(self) -> None:
        if self._watchdog_task is None or self._watchdog_task.done():
            self._watchdog_task = asyncio.get_running_loop().create_task(
                self._watchdog(), name="foxwork-watchdog"
            )

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_interval)
            if not self.is_connected:
                continue
            for consumer in self._consumers:
                if not consumer.cancelled and not consumer.active and self._restore(consumer):
                    logger.warning("consumer of %r is gone; re-establishing it", consumer.queue)

    # -- consumer recovery: this layer owns it -----------------------------------------

    async def _subscribe(self, consumer: _ResilientConsumer) -> None:
        inner = await self.backend.consume(
            consumer.queue, consumer.intake, prefetch=consumer.prefetch
        )
        # Reported to this layer, not to the backend: one owner re-establishes consumers.
        inner.on_gone = functools.partial(self._on_gone, consumer)
        consumer.inner = inner

    def _on_gone(self, consumer: _ResilientConsumer, inner: Consumer) -> None:
        if consumer.inner is inner and self.is_connected:
            self._restore(consumer)

    def _restore(self, consumer: _ResilientConsumer) -> bool:
        """Start re-establishing `consumer` (False: already under way)."""
        return self._restorer.restore(
            consumer,
            functools.partial(self._renew, consumer),
            wanted=lambda: not consumer.cancelled and self.is_connected,
        )

    async def _renew(self, consumer: _ResilientConsumer) -> None:
        if consumer.inner is not None:
            await consumer.inner.cancel()
        await self.backend.declare(consumer.queue)
        await self._subscribe(consumer)

    # -- recorded operations ---------------------------------------------------------

    async def declare(self, queue: str) -> None:
        await self.backend.declare(queue)
        if queue not in self._declared:
            self._declared.append(queue)

    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        consumer = _ResilientConsumer(queue, intake, prefetch, self._restorer)
        await self._subscribe(consumer)
        self._consumers.append(consumer)
        return consumer

    # -- delegated -------------------------------------------------------------------

    async def queue_depth(self, queue: str) -> int | None:
        """The wrapped backend's `queue_depth`; None while not connected."""
        if not self.is_connected:
            return None
        return await self.backend.queue_depth(queue)

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        await self.backend.publish(routing_key, body, properties, exchange=exchange)
