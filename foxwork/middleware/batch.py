"""`BatchMiddleware`: collect messages into batches for one `BatchHandler` call each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .. import codec
from .._checks import is_count, is_number
from ..errors import ConfigurationError, PoisonMessage
from ..message import Message
from .base import CallNext

__all__ = ["BatchHandler", "BatchMiddleware", "BatchResult"]

logger = logging.getLogger("foxwork.batch")

#: Messages in a full batch.
DEFAULT_BATCH_SIZE = 100
#: Seconds after its first message that a batch is flushed, full or not.
DEFAULT_FLUSH_INTERVAL = 1.0
#: Interval flushes in a row with the same short size that suggest a pool too small to
#: ever fill a batch (see `BatchMiddleware`).
_STUCK_FLUSHES = 3


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """What a `BatchHandler` reports when only some messages of a batch failed.

    Attributes:
        failed: message id → the exception that message fails with (every message of the
            batch with that id fails). Every other message of the batch succeeded.

    Example:
        return BatchResult(failed={message.id: RetryLater(5.0)})
    """

    failed: Mapping[str, BaseException] = dataclasses.field(default_factory=dict)


@runtime_checkable
class BatchHandler(Protocol):
    """Processes a batch of messages at once, in place of the worker.

    Return None (or a `BatchResult` without failures) when every message succeeded; raise
    to fail every message of the batch with that exception; return a `BatchResult` to fail
    only some of them.
    """

    async def process_batch(self, batch: Sequence[Message[Any]]) -> BatchResult | None: ...


@dataclasses.dataclass(eq=False, slots=True)
class _Entry:
    message: Message[Any]
    # Receives the message's outcome from the flush; unused while it leads the batch.
    future: asyncio.Future[None]


class _Batch:
    """One batch being collected; its leader (the first message) flushes it."""

    __slots__ = ("closed", "deadline", "entries", "full", "leader")

    def __init__(self, leader: _Entry, deadline: float) -> None:
        self.entries = [leader]
        self.leader = leader
        # When the batch is flushed if it does not fill first (event loop time).
        self.deadline = deadline
        # Set when the batch must be flushed before its deadline: full, or shutdown.
        self.full = asyncio.Event()
        # True once handed to the handler (or abandoned); no message joins or leaves.
        self.closed = False


class BatchMiddleware:
    """Parks messages and hands them to `handler.process_batch()` in batches.

    A batch is flushed when `batch_size` messages are parked, or `flush_interval` seconds
    after its first message arrived, or at shutdown (`shutdown()`, which the pool calls once
    intake has stopped). Each message is then settled by the batch's outcome: on success
    every message's chain returns normally (so `AckNackMiddleware` acks it); when the handler
    raises, every message of the batch fails with that exception; a returned `BatchResult`
    fails only the messages it names. Layers outside (retry, ack) then handle each message
    on its own: a failed batch is retried message by message.

    **The handler replaces the worker**: this layer never calls the rest of the chain, so
    put it innermost, as the documented chain order has it. It still does the worker's
    input checks before parking a message: a poison message (oversize body, bad
    `x-retry-attempt`) or a payload that does not decode or does not fit the picked
    worker's `payload_model` fails on its own with `PoisonMessage`, and never reaches (or
    fails) a batch. The handler gets `message.payload` decoded, and validated when the
    worker has a model.

    **The pool must be able to fill a batch**: each parked message holds a concurrency
    slot, so set the pool's `concurrency_limit` (and prefetch) to at least `batch_size`.
    With fewer slots every batch is flushed by the interval, below `batch_size`; after a few
    such flushes in a row with the same size this layer logs one WARNING about it.

    The flush runs in the task of the batch's first message (so no task is spawned, and
    that message's context is the one the handler sees). If that task is cancelled while
    the batch waits, the next message takes over; if it is cancelled during the handler
    call (the shutdown deadline), every message of the batch is cancelled too and goes
    back to its queue.

    Shared state (on purpose): the batch being collected. Use one instance per pool.

    Args:
        handler: the `BatchHandler`.
        batch_size: messages in a full batch.
        flush_interval: seconds after its first message that a batch is flushed anyway.

    Example:
        class Loader:
            async def process_batch(self, batch):
                await warehouse.insert_many([m.payload for m in batch])

        pool = WorkerPool(
            workers=[UnusedWorker()],
            middleware=[AckNackMiddleware(), RetryMiddleware(), BatchMiddleware(Loader())],
            concurrency_limit=500,
        )
    """

    def __init__(
        self,
        handler: BatchHandler,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        if not callable(getattr(handler, "process_batch", None)):
            raise ConfigurationError(
                f"BatchMiddleware(handler={handler!r}): pass an object with "
                "`async def process_batch(self, batch) -> BatchResult | None`"
            )
        if not is_count(batch_size):
            raise ConfigurationError(
                f"BatchMiddleware(batch_size={batch_size!r}): pass an int of at least 1"
            )
        if not (is_number(flush_interval) and flush_interval > 0):
            raise ConfigurationError(
                f"BatchMiddleware(flush_interval={flush_interval!r}): pass a positive number "
                "of seconds to wait for a batch to fill"
            )
        self.handler = handler
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self._batch: _Batch | None = None
        self._closing = False
        self._short_size = 0
        self._short_flushes = 0
        self._warned = False

    def __repr__(self) -> str:
        return (
            f"BatchMiddleware({self.handler!r}, batch_size={self.batch_size}, "
            f"flush_interval={self.flush_interval})"
        )

    @property
    def pending(self) -> int:
        """Messages parked in the batch being collected."""
        return len(self._batch.entries) if self._batch is not None else 0

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        self._check(message)
        loop = asyncio.get_running_loop()
        entry = _Entry(message, loop.create_future())
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch(entry, loop.time() + self.flush_interval)
        else:
            batch.entries.append(entry)
        if self._closing or len(batch.entries) >= self.batch_size:
            batch.full.set()
            # Full: the next message starts a new batch while the leader flushes this one.
            self._batch = None
        if batch.leader is entry:
            await self._lead(batch, entry)
            return
        try:
            await entry.future
        except _Lead:
            await self._lead(batch, entry)
        except asyncio.CancelledError:
            self._leave(batch, entry)
            raise

    @staticmethod
    def _check(message: Message[Any]) -> None:
        # What the worker would check: bad input fails its own message, never its batch.
        if message.poison is not None:
            raise PoisonMessage(message.poison)
        worker = message.worker
        model = worker.payload_model if worker is not None else None
        if model is not None:
            message.payload = codec.validate(model, message.body, message.payload)
        else:
            _ = message.payload  # decoded now, so an undecodable body fails here

    async def _lead(self, batch: _Batch, entry: _Entry) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(batch.deadline):
                    await batch.full.wait()
        except asyncio.CancelledError:
            self._leave(batch, entry)
            raise
        self._close(batch)
        await self._flush(batch, entry)

    def _leave(self, batch: _Batch, entry: _Entry) -> None:
        """A parked message was cancelled (the shutdown deadline) before its batch was
        handed to the handler: it leaves the batch, and the pool nacks it back."""
        future = entry.future
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" noise
        if batch.closed:
            return
        batch.entries.remove(entry)
        if batch.leader is not entry:
            return
        # The leader leaves: the next message still waiting takes over the flush.
        for successor in batch.entries:
            if not successor.future.done():
                batch.leader = successor
                successor.future.set_exception(_Lead())
                return
        batch.closed = True
        if self._batch is batch:
            self._batch = None

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        if self._batch is batch:
            self._batch = None
        size = len(batch.entries)
        if batch.full.is_set() or size >= self.batch_size:
            self._short_flushes = 0
            return
        self._note_short_flush(size)

    def _note_short_flush(self, size: int) -> None:
        # A pool whose concurrency limit is below batch_size flushes by the interval with
        # the same size (its limit) every time; light traffic gives varying sizes.
        if size == self._short_size and size > 1:
            self._short_flushes += 1
        else:
            self._short_size, self._short_flushes = size, 1
        if self._short_flushes >= _STUCK_FLUSHES and not self._warned:
            self._warned = True
            logger.warning(
                "the last %d batches were flushed by flush_interval=%g s with exactly %d "
                "messages each, below batch_size=%d: if the pool's concurrency_limit (or "
                "prefetch) is %d, a batch can never fill; set it to at least %d",
                self._short_flushes,
                self.flush_interval,
                size,
                self.batch_size,
                size,
                self.batch_size,
            )

    async def _flush(self, batch: _Batch, leader: _Entry) -> None:
        followers = [entry for entry in batch.entries if entry is not leader]
        try:
            result = await self.handler.process_batch([e.message for e in batch.entries])
        except Exception as exc:
            for entry in followers:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            raise
        except BaseException:
            # Cancelled mid-handler (shutdown deadline): the whole batch goes back.
            for entry in followers:
                entry.future.cancel()
            raise
        failed = result.failed if result is not None else {}
        if failed:
            unknown = set(failed) - {entry.message.id for entry in batch.entries}
            if unknown:
                logger.warning(
                    "batch handler reported failures for message ids not in the batch: %s",
                    ", ".join(sorted(unknown)),
                )
        for entry in followers:
            if entry.future.done():
                continue
            error = failed.get(entry.message.id)
            if error is None:
                entry.future.set_result(None)
            else:
                entry.future.set_exception(error)
        own_error = failed.get(leader.message.id)
        if own_error is not None:
            raise own_error

    async def startup(self) -> None:
        """Start collecting batches (again, when a new pool reuses this layer)."""
        self._closing = False

    async def shutdown(self) -> None:
        """Flush the batch being collected now: intake has stopped, it cannot fill."""
        self._closing = True
        if self._batch is not None:
            self._batch.full.set()


class _Lead(Exception):
    """Delivered to a parked message: its batch's leader left, it flushes the batch now."""
