"""Jittered exponential backoff: the one schedule for every wait-and-try-again of the backends.

`ResilientBackend` waits by it between reconnect attempts (as a tenacity wait), and
`_recovery.restore` between attempts to re-establish a consumer. A message's retry delay is
not this: `RetryMiddleware` schedules it on the broker.
"""

from __future__ import annotations

import dataclasses
import random

from tenacity import RetryCallState
from tenacity.wait import wait_base

__all__ = ["Backoff"]


@dataclasses.dataclass(frozen=True)
class Backoff:
    """`initial` * `multiplier`**(n - 1) seconds after the n-th failed attempt, capped at
    `max`, then spread by ± `jitter` (a fraction: 0.1 is ± 10 %) and capped again."""

    initial: float
    max: float
    multiplier: float = 2.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first)."""
        try:
            delay = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            delay = self.max
        delay = min(delay, self.max)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(delay, self.max))

    def wait(self) -> wait_base:
        """The same schedule as a tenacity wait."""
        return _Wait(self)


class _Wait(wait_base):
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        return self._backoff.delay(retry_state.attempt_number)
