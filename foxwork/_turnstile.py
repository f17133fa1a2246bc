"""`Turnstile`: callers that wait for something to become ready pass in the order they came.

A lock alone does not keep the order of publishes that wait for a channel to open (or an
exchange to be checked): once it is ready, a publish that arrives finds it ready and goes
at once, past those still queued on the lock, which the lock wakes one per turn of the
event loop. A turnstile counts who is queued: a caller that finds anyone queued takes its
turn too, behind them, and only a caller that finds nobody queued may skip it.

    if gate.queued or not ready():  # the check costs one attribute when nobody waits
        async with gate.turn():
            if not ready():
                await make_ready()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["Turnstile"]


class Turnstile:
    """A first-come, first-served lock that counts the callers queued on it.

    Attributes:
        queued: callers waiting for their turn or holding it.
    """

    __slots__ = ("_lock", "queued")

    def __init__(self) -> None:
        # asyncio.Lock wakes its waiters in order, and a caller arriving while one was
        # woken and has not resumed yet queues behind it rather than taking the lock.
        self._lock = asyncio.Lock()
        self.queued = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait behind every caller queued before, and hold the turn for the block."""
        self.queued += 1
        try:
            async with self._lock:
                yield
        finally:
            self.queued -= 1
