"""`Drainer`: replays a spool to the broker in order, one confirmed publish at a time.

The oldest message is published and its confirm awaited before the next is read; only a
confirmed message is acked off the spool. A publish that fails is tried again, the same
message, until it is confirmed: after the reconnect when the connection is down, else after
a backoff (0.2 s doubling to 5 s). A message the broker keeps refusing (unroutable: no
queue bound for its routing key) therefore holds up the ones behind it; each failed attempt
is logged with the reason, and `last_error` keeps it, for `foxwork spool status` and
`drain`. A damaged record inside the spool (`SpoolCorrupt`, unless the spool skips it)
stops the drainer there, logged as an ERROR: `Publisher.flush_spool()` and `drain()` raise
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .._redact import redact
from ..backends._backoff import Backoff
from ..errors import BackendError
from .store import SpoolCorrupt

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ._records import SpooledMessage
    from .store import Spool

__all__ = ["Drainer"]

logger = logging.getLogger("foxwork.spool")

#: Waits between attempts to publish a spooled message while the broker refuses it.
RETRY_BACKOFF = Backoff(initial=0.2, max=5.0, multiplier=2.0, jitter=0.1)


class Drainer:
    """Publishes what `spool` holds through `backend`, oldest first.

    Args:
        spool: an open spool; the drainer is its only reader.
        backend: where to publish (a `ResilientBackend` is waited on while it reconnects).
        backoff: the waits between attempts while the connection is up but the publish
            fails.

    Attributes:
        sent: messages confirmed and acked off the spool so far.
        last_error: why the last attempt failed (redacted), or None.
    """

    def __init__(self, spool: Spool, backend: Backend, *, backoff: Backoff = RETRY_BACKOFF):
        self.spool = spool
        self.backend = backend
        self.backoff = backoff
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
        """Stop draining. A publish under way is abandoned: its message stays in the spool
        (and may reach the broker twice)."""
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
        while self.spool.depth:
            await self._send_next()
        return self.sent - sent

    async def _forever(self) -> None:
        try:
            while True:
                await self._send_next()
        except SpoolCorrupt as exc:
            self.last_error = str(exc)
            logger.error("the spool drainer stopped: %s", exc)

    async def _send_next(self) -> None:
        message = await self.spool.next()
        await self._publish(message)
        await self.spool.ack()
        self.sent += 1

    async def _publish(self, message: SpooledMessage) -> None:
        attempt = 0
        while True:
            try:
                await self.backend.publish(
                    message.routing_key,
                    message.body,
                    message.properties,
                    exchange=message.exchange,
                )
            except BackendError as exc:
                attempt += 1
                self.last_error = redact(f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "spooled message %s not confirmed yet (attempt %d): %s",
                    message.properties.message_id,
                    attempt,
                    self.last_error,
                )
                wait_connected = getattr(self.backend, "wait_connected", None)
                if not self.backend.is_connected and wait_connected is not None:
                    await wait_connected()
                else:
                    await asyncio.sleep(self.backoff.delay(attempt))
            else:
                self.last_error = None
                return
