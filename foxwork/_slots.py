"""`Slots`: the pool's concurrency limit, a counting semaphore that can also be tried."""

from __future__ import annotations

import asyncio
import collections
import contextlib

__all__ = ["Slots"]


class Slots:
    """`size` slots taken with `take()` or `try_take()` and given back with `give_back()`.

    Fair: a freed slot goes straight to the oldest waiter, and `try_take()` fails while
    anyone waits, so nothing overtakes a caller that is already waiting. Unlike
    `asyncio.Semaphore`, taking a free slot never needs the event loop, which lets a backend
    hand a delivery to the pool from a callback that must not wait.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return self._free

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one; never waits."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one if none is free."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over in the same instant: pass it on.
                self.give_back()
            else:
                # Still in line, unless a give_back() in the same loop turn already took
                # it out (and skipped it, as it was cancelled).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """Free a slot: to the oldest waiter if there is one."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
