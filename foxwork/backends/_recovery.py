"""Re-establishing consumers that are gone while the connection is up: the one loop for it.

Whoever owns a consumer's recovery runs it here: `ResilientBackend` for the consumers it
keeps (when one reports itself gone, and when its watchdog finds one inactive), or a
backend used on its own for the consumers it made (`RabbitMQBackend`, after the broker
cancelled one). Which of them owns it is told by `Consumer.on_gone`: the last to set it.
Reconnecting is not this: after a reconnect `ResilientBackend` subscribes every consumer
again as part of the reconnect attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..errors import BackendError
from ._backoff import Backoff
from .base import Consumer

__all__ = ["RESTORE_BACKOFF", "Restorer"]

logger = logging.getLogger("foxwork.backends")

#: Seconds between attempts to re-establish a consumer: 1 s, doubling up to 30 s, ± 10 %.
RESTORE_BACKOFF = Backoff(initial=1.0, max=30.0, multiplier=2.0, jitter=0.1)


class Restorer:
    """Re-establishes consumers, with at most one attempt loop per consumer at a time.

    Args:
        backoff: the wait between two failed attempts.
    """

    def __init__(self, backoff: Backoff = RESTORE_BACKOFF) -> None:
        self._backoff = backoff
        self._tasks: dict[Consumer, asyncio.Task[None]] = {}

    def restore(
        self,
        consumer: Consumer,
        renew: Callable[[], Awaitable[None]],
        wanted: Callable[[], bool],
    ) -> bool:
        """Start re-establishing `consumer`: `renew()` declares its queue again and
        subscribes anew; a `BackendError` from it is retried after the backoff for as long
        as `wanted()` (not cancelled, and the connection is up: a reconnect restores the
        rest). Returns False, starting nothing, while a restore of `consumer` runs."""
        task = self._tasks.get(consumer)
        if task is not None and not task.done():
            return False
        task = asyncio.get_running_loop().create_task(
            self._run(consumer.queue, renew, wanted), name=f"foxwork-restore-{consumer.queue}"
        )
        self._tasks[consumer] = task
        task.add_done_callback(lambda done: self._forget(consumer, done))
        return True

    def _forget(self, consumer: Consumer, task: asyncio.Task[None]) -> None:
        if self._tasks.get(consumer) is task:
            del self._tasks[consumer]

    async def _run(
        self, queue: str, renew: Callable[[], Awaitable[None]], wanted: Callable[[], bool]
    ) -> None:
        attempt = 0
        while wanted():
            attempt += 1
            try:
                await renew()
            except BackendError as exc:
                logger.warning(
                    "re-establishing the consumer of %r failed (attempt %d): %s",
                    queue,
                    attempt,
                    exc,
                )
                await asyncio.sleep(self._backoff.delay(attempt))
                continue
            logger.info("consumer of %r re-established", queue)
            return

    async def stop(self, consumer: Consumer | None = None) -> None:
        """Stop re-establishing `consumer` (every consumer when None) and wait until it
        stopped; a subscription it was making is undone by the cancellation."""
        current = asyncio.current_task()
        tasks = [
            task
            for key, task in list(self._tasks.items())
            if (consumer is None or key is consumer) and task is not current and not task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
