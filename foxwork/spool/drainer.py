"""`Drainer`: replays a spool to the broker in order, with up to `window` confirms
awaited at once.

Spooled messages are published in the order they were spooled, on one channel, up to
`window` of them waiting for their confirms at once (the broker keeps a channel's order);
they are acked off the spool in that order, each once it and every message before it were
confirmed. Once a publish fails no more are started, and it is tried again, from the
oldest message not confirmed (messages behind it that were confirmed meanwhile are sent
again: duplicates, never gaps), alone until it is confirmed, then the window opens again:
after the reconnect when the connection is down, else after a backoff (0.2 s doubling to
5 s). A message the broker
keeps refusing (unroutable: no queue bound for its routing key) therefore holds up the
ones behind it; each failed attempt is logged with the reason, and `last_error` keeps it,
for `foxwork spool status` and `drain`. (Messages in flight behind a refused one may reach
the broker before it.) A damaged record inside the spool (`SpoolCorrupt`, unless the spool
skips it) stops the drainer there, logged as an ERROR: `Publisher.flush_spool()` and
`drain()` raise it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from .._redact import redact
from ..backends._backoff import Backoff
from ..errors import BackendError
from ._records import SpooledMessage
from .store import SpoolCorrupt

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .store import Spool

__all__ = ["Drainer"]

logger = logging.getLogger("foxwork.spool")

#: Waits between attempts to publish a spooled message while the broker refuses it.
RETRY_BACKOFF = Backoff(initial=0.2, max=5.0, multiplier=2.0, jitter=0.1)


#: Spooled messages published and waiting for their confirms at once.
DEFAULT_WINDOW = 1000


class Drainer:
    """Publishes what `spool` holds through `backend`, oldest first.

    Args:
        spool: an open spool; the drainer is its only reader.
        backend: where to publish (a `ResilientBackend` is waited on while it reconnects).
        backoff: the waits between attempts while the connection is up but the publish
            fails.
        window: publishes awaiting their confirms at once.

    Attributes:
        sent: messages confirmed and acked off the spool so far.
        last_error: why the last attempt failed (redacted), or None.
    """

    def __init__(
        self,
        spool: Spool,
        backend: Backend,
        *,
        backoff: Backoff = RETRY_BACKOFF,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window={window!r} must be at least 1")
        self.spool = spool
        self.backend = backend
        self.backoff = backoff
        self.window = window
        self.sent = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Drain in a task of its own, until `stop()`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._forever(), name="foxwork-spool-drainer"
            )

    async def stop(self) -> None:
        """Stop draining. Publishes under way are abandoned: their messages stay in the
        spool (and may reach the broker twice)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> int:
        """Publish until the spool is empty; returns how many were sent.

        Raises:
            SpoolCorrupt: the next record is damaged (what comes before it was sent).
        """
        sent = self.sent
        await self._run(until_empty=True)
        return self.sent - sent

    async def _forever(self) -> None:
        try:
            await self._run(until_empty=False)
        except SpoolCorrupt as exc:
            self.last_error = str(exc)
            logger.error("the spool drainer stopped: %s", exc)

    async def _run(self, *, until_empty: bool) -> None:
        attempt = 0
        while True:
            # After a failure, the oldest message goes alone until it is confirmed.
            outcome = await self._pump(1 if attempt else self.window, until_empty=until_empty)
            if outcome is _EMPTY:
                return
            if outcome is _CONFIRMED:
                attempt = 0
                continue
            assert isinstance(outcome, _Failed)
            attempt += 1
            self.last_error = redact(f"{type(outcome.error).__name__}: {outcome.error}")
            logger.warning(
                "spooled message %s not confirmed yet (attempt %d): %s",
                outcome.message.properties.message_id,
                attempt,
                self.last_error,
            )
            wait_connected = getattr(self.backend, "wait_connected", None)
            if not self.backend.is_connected and wait_connected is not None:
                await wait_connected()
            else:
                await asyncio.sleep(self.backoff.delay(attempt))

    async def _pump(self, window: int, *, until_empty: bool) -> object:
        """Publish with up to `window` confirms awaited, acking in order, until the spool
        is empty (`until_empty`), a publish fails, or (with a window of 1) one is
        confirmed. Returns `_EMPTY`, `_CONFIRMED` or `_Failed`.

        The publishes reach the broker in the order they are started: the backend keeps
        that order, also for those that wait for it to open a channel or check an exchange.
        Once one of them failed, no more are started: the pump ends at the oldest failed
        one, and what would follow it now would reach the broker ahead of it.
        """
        in_flight: collections.deque[tuple[SpooledMessage, asyncio.Task[None]]] = (
            collections.deque()
        )
        waiting: collections.deque[SpooledMessage] = collections.deque()
        failed = False

        async def publish(message: SpooledMessage) -> None:
            nonlocal failed
            try:
                await self.backend.publish(
                    message.routing_key,
                    message.body,
                    message.properties,
                    exchange=message.exchange,
                )
            except BaseException:
                failed = True
                raise

        self.spool.rewind()  # what was handed out and not acked goes again
        try:
            while True:
                while len(in_flight) < window and not failed:
                    if not waiting:
                        room = window - len(in_flight)
                        waiting.extend(await self.spool.read_ahead(room, wait=False))
                        if not waiting and in_flight:
                            break
                        if not waiting:
                            if until_empty and not self.spool.depth:
                                return _EMPTY
                            waiting.extend(await self.spool.read_ahead(room))
                        if failed:
                            break  # while reading
                    message = waiting.popleft()
                    in_flight.append((message, asyncio.ensure_future(publish(message))))
                await asyncio.wait([in_flight[0][1]])
                confirmed = 0
                while in_flight and in_flight[0][1].done():
                    message, task = in_flight[0]
                    error = task.exception()
                    if error is not None:
                        if not isinstance(error, BackendError):
                            raise error
                        if confirmed:
                            await self._acked(confirmed)
                        return _Failed(message, error)
                    in_flight.popleft()
                    confirmed += 1
                if confirmed:
                    await self._acked(confirmed)
                if window == 1:
                    return _CONFIRMED
        except asyncio.CancelledError:
            for _, task in in_flight:
                task.cancel()  # the drainer stops: abandon them
            raise
        finally:
            await self._settle([task for _, task in in_flight])

    async def _acked(self, count: int) -> None:
        await self.spool.ack(count)
        self.sent += count
        self.last_error = None

    @staticmethod
    async def _settle(tasks: list[asyncio.Task[None]]) -> None:
        """Let the publishes still in flight end (each is confirmed, fails, or times out
        within the publish timeout; cancelled ones at once): their outcome no longer
        matters, as their messages are sent again."""
        if tasks:
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: not "never retrieved"


_EMPTY = object()
_CONFIRMED = object()


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    message: SpooledMessage
    error: BackendError
