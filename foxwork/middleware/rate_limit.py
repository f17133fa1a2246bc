"""`RateLimitMiddleware`: at most `rate` messages per second, with bursts; waits, never fails."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from aiolimiter import AsyncLimiter

from .._checks import is_count, is_finite
from ..errors import ConfigurationError
from ..message import Message
from .base import CallNext, StoppedPools, pool_key

__all__ = ["RateLimitMiddleware"]

logger = logging.getLogger("foxwork.rate_limit")

#: Per-key limiters kept at most; the least recently used is forgotten first.
DEFAULT_MAX_KEYS = 10_000


class RateLimitMiddleware:
    """Let at most `rate` messages per second through, after an initial `burst`.

    A leaky bucket (aiolimiter): up to `burst` messages pass at once, then they pass at
    `rate` per second. An over-limit message waits in this layer; it is never failed,
    settled or retried. A waiting message keeps its pool concurrency slot, so a sustained
    excess pauses intake (prefetch backpressure) instead of piling up in memory. When the
    pool shuts down, its waiting messages are nacked back to their queue at once (intake
    has stopped; nothing waits for the shutdown deadline, and no retry attempt is used).

    With `key`, each key (a tenant, a customer) gets its own limit. Per-key limiters are
    kept in a least-recently-used map of at most `max_keys` entries; a forgotten key starts
    again with a fresh burst.

    Shared state (on purpose): the limiters. Share an instance between pools to limit
    them together; one pool's shutdown hands back only that pool's waiting messages. An
    instance belongs to one event loop.

    Args:
        rate: messages per second, sustained.
        burst: messages that may pass at once; by default one second's worth (`rate`),
            at least 1.
        key: `key(message) -> str` for a limit per key (for example a tenant header);
            None for one limit over all messages.
        max_keys: per-key limiters kept at most.

    Example:
        # 50 messages/s per tenant, bursts of 10
        RateLimitMiddleware(
            rate=50, burst=10, key=lambda message: str(message.headers.get("tenant", ""))
        )
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: float | None = None,
        key: Callable[[Message[Any]], str] | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not (is_finite(rate) and rate > 0):
            raise ConfigurationError(
                f"RateLimitMiddleware(rate={rate!r}): pass a positive, finite number of "
                "messages per second (leave the layer out for no limit)"
            )
        if burst is None:
            burst = max(1.0, float(rate))
        if not (is_finite(burst) and burst >= 1):
            raise ConfigurationError(
                f"RateLimitMiddleware(burst={burst!r}): pass a finite number of at least 1 "
                "(messages that may pass at once), or None for one second's worth"
            )
        if key is not None and not callable(key):
            raise ConfigurationError(
                f"RateLimitMiddleware(key={key!r}): pass a callable taking the message and "
                "returning its key (str), or None for one limit over all messages"
            )
        if not is_count(max_keys):
            raise ConfigurationError(
                f"RateLimitMiddleware(max_keys={max_keys!r}): pass an int of at least 1"
            )
        self.rate = float(rate)
        self.burst = float(burst)
        self.key = key
        self.max_keys = max_keys
        self._limiter = self._new_limiter()
        self._limiters: collections.OrderedDict[str, AsyncLimiter] = collections.OrderedDict()
        # The tasks of messages waiting for the limit, with their pool's key; and those
        # cancelled by `shutdown()` to hand their message back (not by anyone else).
        self._waiting: dict[asyncio.Task[Any], object] = {}
        self._released: set[asyncio.Task[Any]] = set()
        self._stopped = StoppedPools()

    def __repr__(self) -> str:
        keyed = ", key=..." if self.key is not None else ""
        return f"RateLimitMiddleware(rate={self.rate:g}, burst={self.burst:g}{keyed})"

    def _new_limiter(self) -> AsyncLimiter:
        # `burst` messages per `burst / rate` seconds: `rate` per second sustained, and a
        # bucket that holds `burst`.
        return AsyncLimiter(max_rate=self.burst, time_period=self.burst / self.rate)

    @property
    def key_count(self) -> int:
        """Per-key limiters held now (at most `max_keys`)."""
        return len(self._limiters)

    def limiter_for(self, key: str | None = None) -> AsyncLimiter:
        """The limiter of `key` (created on first use), or the global one for None."""
        if key is None or self.key is None:
            return self._limiter
        limiters = self._limiters
        limiter = limiters.get(key)
        if limiter is None:
            limiter = limiters[key] = self._new_limiter()
            if len(limiters) > self.max_keys:
                # A limiter with waiters stays alive through them; only its memory slot goes.
                limiters.popitem(last=False)
        else:
            limiters.move_to_end(key)
        return limiter

    async def startup(self) -> None:
        self._stopped.started()

    async def shutdown(self) -> None:
        """A pool stopped intake: its messages waiting for the limit go back to their queues
        now, instead of waiting for the shutdown deadline (a nack, not a retry)."""
        pool = self._stopped.stopped()
        for task, owner in list(self._waiting.items()):
            if owner is pool and task not in self._released:
                self._released.add(task)
                task.cancel()

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        key = self.key(message) if self.key is not None else None
        limiter = self.limiter_for(key)
        if limiter.has_capacity():
            await limiter.acquire()  # takes its share of the bucket without waiting
        elif not await self._wait(limiter):
            logger.info(
                "message %s waiting for the rate limit goes back to its queue (the pool is "
                "shutting down)",
                message.id,
            )
            await message.nack(requeue=True)
            return
        await call_next(message)

    async def _wait(self, limiter: AsyncLimiter) -> bool:
        """Wait for the limit; False when the message's pool stopped meanwhile."""
        if self._stopped.stopping():
            return False
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = pool_key()
        try:
            await limiter.acquire()
        except asyncio.CancelledError:
            if task not in self._released or task.uncancel() > 0:
                # Cancelled by someone else too (the shutdown deadline): propagate.
                raise
            return False
        finally:
            del self._waiting[task]
            self._released.discard(task)
        return True
