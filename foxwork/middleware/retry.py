"""`RetryMiddleware`: failed messages come back later through a TTL retry queue, then DLQ."""

from __future__ import annotations

import logging
import random
from typing import Any

from tenacity import RetryCallState, wait_exponential

from .. import wire
from .._checks import is_count, is_finite, is_number
from ..errors import ConfigurationError, DeadLetter, Drop, RetryLater
from ..message import Message
from .base import CallNext, holds_failed_probe

__all__ = ["RetryMiddleware"]

logger = logging.getLogger("foxwork.retry")

#: Total deliveries of a message, the first included.
DEFAULT_MAX_ATTEMPTS = 5
#: Seconds before the first retry.
DEFAULT_INITIAL_BACKOFF = 1.0
#: Longest delay between two attempts, in seconds.
DEFAULT_MAX_BACKOFF = 300.0
#: Each retry waits this many times longer than the one before.
DEFAULT_BACKOFF_MULTIPLIER = 2.0
#: Random spread of each delay, as a fraction of it (0.1 = ±10 %).
DEFAULT_JITTER = 0.1
#: Deliveries of one message that ended without settlement (a crash loop) before it is
#: dead-lettered; see `max_redeliveries`.
DEFAULT_MAX_REDELIVERIES = 5


class RetryMiddleware:
    """Retry failed messages with exponential backoff on the broker, then dead-letter them.

    On a failure the message is republished (confirmed) to `Q-retry_exchange` with
    `x-retry-attempt` set to the number of failed attempts, and acked; the broker holds the
    copy in the retry queue of its delay tier and then dead-letters it back to `Q`. After
    `max_attempts` deliveries it goes to `Q-dlq` with the diagnostic headers. The failure is
    re-raised after settling, so outer layers (circuit breaker, metrics) still see it.

    `RetryLater(delay)` uses its own delay; `DeadLetter` and poison messages skip the
    retries; `Drop` passes through.

    Crash loops (the process dies before it settles) are counted on the broker, so the
    count survives the crash. On quorum queues the broker's delivery limit dead-letters the
    message. On classic queues the broker only marks a delivery `redelivered`: this
    middleware then does not process it, but publishes a confirmed copy with
    `x-redelivery-count` raised by one through the retry queue (as the same attempt: a
    crash is no failed attempt) and acks it; the copy is processed when it comes back. A message
    redelivered `max_redeliveries` times goes to `Q-dlq` unprocessed, with a reason saying
    so. This works for messages without a `message_id` too (their id is a digest of their
    content, the same on every delivery).

    What counts on a classic queue is a delivery that `came_back_unsettled`: a message
    foxwork put back itself in this process (its copy was not confirmed) does not count; one
    checked out when a connection dropped counts once, as does one handed back at a
    graceful shutdown when another process receives it (it would have to be caught so
    `max_redeliveries` times in a row to be dead-lettered). Quorum queues count every
    return alike; they are the recommended choice when crash loops matter.

    Args:
        max_attempts: total deliveries, the first included (1 = never retry).
        initial_backoff: seconds before the first retry.
        max_backoff: the longest delay, in seconds; `wire.MAX_RETRY_DELAY` (about 48 days)
            at most, whatever is given.
        backoff_multiplier: growth of the delay per attempt.
        jitter: random spread as a fraction of the delay, 0 to 1.
        max_redeliveries: redeliveries without settlement before dead-lettering (classic
            queues; `x-redelivery-count`); None disables the count.

    Example:
        RetryMiddleware(max_attempts=5, initial_backoff=1.0, max_backoff=60.0)
        # delays: 1 s, 2 s, 4 s, 8 s (±10 %), then Q-dlq
    """

    def __init__(
        self,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER,
        jitter: float = DEFAULT_JITTER,
        max_redeliveries: int | None = DEFAULT_MAX_REDELIVERIES,
    ) -> None:
        if not is_count(max_attempts):
            raise ConfigurationError(
                f"max_attempts={max_attempts!r} must be an int of at least 1 "
                "(the total number of deliveries, the first included)"
            )
        # `is_*` first: a string or a bool is refused with the fix, never a TypeError. The
        # comparisons are written as `not (... >= ...)` so that NaN, which compares false,
        # is refused too.
        if not (is_finite(initial_backoff) and initial_backoff >= 0):
            raise ConfigurationError(
                f"initial_backoff={initial_backoff!r} must be a finite number of seconds >= 0"
            )
        if not (is_number(max_backoff) and max_backoff >= initial_backoff):
            raise ConfigurationError(
                f"max_backoff={max_backoff!r} must be a number of seconds "
                f">= initial_backoff={initial_backoff!r}"
            )
        if not (is_finite(backoff_multiplier) and backoff_multiplier >= 1):
            raise ConfigurationError(
                f"backoff_multiplier={backoff_multiplier!r} must be a finite number >= 1 "
                "(1 = constant delay)"
            )
        if not (is_number(jitter) and 0 <= jitter <= 1):
            raise ConfigurationError(
                f"jitter={jitter!r} must be a fraction between 0 and 1 (0.1 = ±10 %)"
            )
        if max_redeliveries is not None and not is_count(max_redeliveries):
            raise ConfigurationError(
                f"max_redeliveries={max_redeliveries!r} must be an int of at least 1, or None"
            )
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.backoff_multiplier = backoff_multiplier
        self.jitter = jitter
        self.max_redeliveries = max_redeliveries
        self._wait = wait_exponential(
            multiplier=initial_backoff, exp_base=backoff_multiplier, max=max_backoff
        )

    def __repr__(self) -> str:
        return (
            f"RetryMiddleware(max_attempts={self.max_attempts}, "
            f"initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}, "
            f"backoff_multiplier={self.backoff_multiplier}, jitter={self.jitter})"
        )

    def backoff(self, failed_attempts: int) -> float:
        """The delay in seconds after `failed_attempts` failures, jitter included."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = failed_attempts
        delay = float(self._wait(state))
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return min(max(delay, 0.0), self.max_backoff, wire.MAX_RETRY_DELAY)

    def _crashes(self, message: Message[Any]) -> int | None:
        """How often this classic-queue message came back without being settled, this
        delivery included; None when the delivery is no crash to count."""
        # On quorum queues (delivery_count set) the broker's delivery limit is the authority.
        limit = self.max_redeliveries
        if limit is None or not message.came_back_unsettled or message.delivery_count:
            return None
        return wire.parse_redelivery_count(message.headers) + 1

    async def _handle_crash(self, message: Message[Any], crashes: int) -> None:
        """Dead-letter a crash-looping message, or count the crash on a confirmed copy
        (the count must outlive the process that crashes) and ack the delivery."""
        limit = self.max_redeliveries
        if limit is not None and crashes >= limit:
            reason = (
                f"redelivered {crashes} times without being settled (max_redeliveries={limit}): "
                "the worker process probably crashes on this message"
            )
            logger.warning("message %s: %s; dead-lettering", message.id, reason)
            await message.dead_letter(DeadLetter(reason))
            raise DeadLetter(reason)
        # The copy comes back through the retry queue with the count in its headers, as the
        # same attempt: a crash is counted here, not as a failed attempt (`x-retry-attempt`
        # on the copy says how many attempts failed before it, as it did on the delivery).
        message.properties = message.properties.with_header(wire.REDELIVERY_COUNT, crashes)
        message.headers = message.properties.headers
        message.attempt -= 1
        delay = self.backoff(crashes)
        logger.warning(
            "message %s came back unsettled (%d time(s): its worker process died or lost "
            "its connection); it is tried again in %.3g s",
            message.id,
            crashes,
            delay,
        )
        await message.retry(delay)

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        crashes = self._crashes(message)
        if crashes is not None:
            await self._handle_crash(message, crashes)
            return
        try:
            await call_next(message)
        except Drop:
            raise
        except DeadLetter as exc:
            if not message.settled:
                await message.dead_letter(exc)
            raise
        except Exception as exc:
            if message.settled:
                raise
            if holds_failed_probe(exc):
                # A failed HALF_OPEN probe consumes no attempt: the circuit breaker outside
                # holds it for the next probe.
                raise
            # The pool logs the failure and how it ended in one line; these say why.
            if message.attempt >= self.max_attempts:
                logger.debug(
                    "message %s failed attempt %d of %d; dead-lettering",
                    message.id,
                    message.attempt,
                    self.max_attempts,
                )
                await message.dead_letter(exc)
            else:
                if isinstance(exc, RetryLater):
                    delay = min(exc.delay, wire.MAX_RETRY_DELAY)
                else:
                    delay = self.backoff(message.attempt)
                logger.debug(
                    "message %s failed attempt %d of %d; retrying in %.3g s",
                    message.id,
                    message.attempt,
                    self.max_attempts,
                    delay,
                )
                await message.retry(delay)
            raise
