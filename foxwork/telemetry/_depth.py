"""`QueueDepthSampler`: asks a backend how many messages wait in each queue, at a low rate,
for the `foxwork.queue.depth` gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import MeterProvider

from ._metrics import observe_queue_depths

__all__ = ["QUEUE_DEPTH_INTERVAL", "QueueDepthSampler"]

logger = logging.getLogger("foxwork.telemetry")

#: Seconds between two samples of every queue's depth.
QUEUE_DEPTH_INTERVAL = 15.0


class DepthSource(Protocol):
    """What the sampler asks: a `foxwork.backends.Backend` is one."""

    async def queue_depth(self, queue: str) -> int | None: ...


class QueueDepthSampler:
    """Samples `backend.queue_depth(queue)` for each queue every `interval` seconds and
    reports the results as `foxwork.queue.depth` (attribute `messaging.destination.name`).

    A scrape reads the last samples and never waits for the broker. A queue whose last
    sample failed (logged at DEBUG), or whose depth the backend cannot tell (None, or
    disconnected), is not reported until a sample succeeds again: a gap in the series, not a
    stale value.

    Args:
        backend: asked for each queue's depth, one queue at a time.
        queues: the queues to sample (duplicates are sampled once).
        interval: seconds between two rounds; the first round starts at `start()`.
        meter_provider: the provider to report to; None for the global one.
        sleep: how to wait between rounds (tests pass a fake clock).

    Example:
        sampler = QueueDepthSampler(backend, ["orders"])
        sampler.start()  # once connected
        ...
        await sampler.stop()
    """

    def __init__(
        self,
        backend: DepthSource,
        queues: Iterable[str],
        *,
        interval: float = QUEUE_DEPTH_INTERVAL,
        meter_provider: MeterProvider | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval!r} must be > 0 s")
        self.backend = backend
        self.queues = tuple(dict.fromkeys(queues))
        self.interval = interval
        #: The last successful sample of each queue (what the gauge reports).
        self.depths: dict[str, int] = {}
        self._meter_provider = meter_provider
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._unregister: Callable[[], None] | None = None

    async def sample(self) -> None:
        """Sample every queue once."""
        for queue in self.queues:
            try:
                depth = await self.backend.queue_depth(queue)
            except Exception as exc:
                logger.debug("cannot sample the depth of %r: %s", queue, exc)
                depth = None
            if depth is None:
                self.depths.pop(queue, None)
            else:
                self.depths[queue] = depth

    def start(self) -> None:
        """Report the gauge and sample now, then every `interval` seconds until `stop()`."""
        if self._task is not None:
            return
        self._unregister = observe_queue_depths(
            lambda: self.depths, meter_provider=self._meter_provider
        )
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop sampling and reporting. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    async def _run(self) -> None:
        while True:
            await self.sample()
            await self._sleep(self.interval)
