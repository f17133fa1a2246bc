"""`VirtualClock`: retry delays that pass only when a test says so."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["VirtualClock"]


class _Timer:
    __slots__ = ("callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A `foxwork.backends.memory.RetryClock` whose time moves only by `advance_to()`.

    Give it to `MemoryBackend(clock=...)`: a retried copy then waits in its retry queue
    until the test moves the clock past its due time, however long its delay. Timers fire
    in the order of their due times (the order they were set, for equal ones).

    Example:
        clock = VirtualClock()
        backend = MemoryBackend(clock=clock)
        ...
        clock.advance_to(clock.time() + 60)  # every retry due within a minute comes back
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"<VirtualClock time={self._now:g} pending={self.pending}>"

    def time(self) -> float:
        """The current virtual time, in seconds."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        """Call `callback()` once the clock has moved `delay` seconds on."""
        timer = _Timer(self._now + max(delay, 0.0), callback)
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        """Timers not fired (nor cancelled) yet."""
        return sum(not timer.cancelled for _, _, timer in self._timers)

    @property
    def next_due(self) -> float | None:
        """The due time of the next timer, or None when none is pending."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance_to(self, when: float) -> int:
        """Move the clock to `when` (never backwards), firing every timer due by then, in
        order; returns how many fired."""
        fired = 0
        while (due := self.next_due) is not None and due <= when:
            _, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            fired += 1
            timer.callback()
        self._now = max(self._now, when)
        return fired
