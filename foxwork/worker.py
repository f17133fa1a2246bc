"""The `Worker` base class: the user's code."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from . import codec
from ._checks import is_number
from .errors import ConfigurationError, PoisonMessage, ProcessingTimeout
from .message import Message

__all__ = ["Worker"]

logger = logging.getLogger("foxwork.worker")

P = TypeVar("P")

_ids = itertools.count(1)


class Worker(Generic[P]):
    """Subclass this and implement `process()`.

    `process` may be `async def` (runs on the event loop) or a plain `def` for blocking or
    CPU-bound code, which foxwork runs in a thread so that heartbeats and other messages
    keep flowing. A thread cannot be interrupted: a blocking message keeps its concurrency
    slot until its thread ends. Past `processing_timeout` the attempt fails (and is retried
    or dead-lettered) only once the thread has ended, so two attempts of one message never
    run at once; at the shutdown deadline it goes back to its queue only then, and shutdown
    counts it as in flight until then. Make a blocking `process` give up on its own (give
    its I/O calls their own timeouts).

    Class attributes (or constructor arguments) configure it:
        payload_model: a pydantic model; `message.payload` arrives validated as an instance
            of it. A payload that fails validation is a poison message: dead-lettered,
            never retried.
        processing_timeout: seconds `process()` may take; past it the attempt fails with
            `ProcessingTimeout` (a failure like any other, so it is retried). None: no limit.

    Example:
        class Order(BaseModel):
            sku: str
            qty: int

        class OrderWorker(Worker[Order]):
            payload_model = Order
            processing_timeout = 10.0

            async def process(self, message: Message[Order]) -> None:
                await reserve(message.payload.sku, message.payload.qty)
    """

    payload_model: ClassVar[type[BaseModel] | None] = None
    processing_timeout: float | None = None

    def __init__(self, id: str | None = None, *, processing_timeout: float | None = None) -> None:
        self.id = id or f"{type(self).__name__}-{next(_ids)}"
        if processing_timeout is not None:
            self.processing_timeout = processing_timeout
        timeout = self.processing_timeout
        if timeout is not None and not (is_number(timeout) and timeout > 0):
            raise ConfigurationError(
                f"worker {self.id!r}: processing_timeout={timeout!r} must be a positive number "
                "of seconds, or None for no limit"
            )
        self._call = self._make_call()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r}>"

    def process(self, message: Message[P]) -> Awaitable[None] | None:
        """Handle one message. Raise to fail the attempt; return to succeed.

        Override it as `async def process(...) -> None`, or as a plain
        `def process(...) -> None` for blocking code (run in a thread).
        """
        raise NotImplementedError

    async def startup(self) -> None:
        """Called once when the pool starts, before the first message."""

    async def shutdown(self) -> None:
        """Called once when the pool stops, after the last message."""

    def _make_call(self) -> Callable[[Message[Any]], Any]:
        # `process` itself; `_blocking` says whether it is a plain `def` (run in a thread).
        process: Any = self.process
        if getattr(type(self), "process", None) is Worker.process:
            raise ConfigurationError(
                f"worker {self.id!r} ({type(self).__name__}) does not implement process(): "
                "define `async def process(self, message)` (or a plain `def` for blocking code)"
            )
        self._blocking = not inspect.iscoroutinefunction(process)
        return process  # type: ignore[no-any-return]

    async def handle(self, message: Message[Any]) -> None:
        """Validate the payload, then run `process()` under the timeout. The pool calls this
        as the innermost layer of the middleware chain."""
        if message.poison is not None:
            raise PoisonMessage(message.poison)
        model = self.payload_model
        if model is not None:
            message.payload = codec.validate(model, message.body, message.payload)
        timeout = self.processing_timeout
        if self._blocking:
            await self._run_in_thread(message, timeout)
            return
        if timeout is None:
            await self._call(message)
            return
        try:
            async with asyncio.timeout(timeout):
                await self._call(message)
        except TimeoutError as exc:
            raise ProcessingTimeout(self.id, timeout) from exc

    async def _run_in_thread(self, message: Message[Any], timeout: float | None) -> None:
        # Waited for with asyncio.wait, which never cancels the thread's future: neither the
        # timeout nor a cancellation (the shutdown deadline) ends this attempt before its
        # thread has ended, so the message keeps its slot, and a retry cannot start while
        # this attempt still runs.
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the log context and the trace flow along
        thread = loop.run_in_executor(None, functools.partial(context.run, self._call, message))
        try:
            done, _ = await asyncio.wait((thread,), timeout=timeout)
            if not done:
                logger.warning(
                    "message %s passed its processing_timeout of %g s in worker %s: a "
                    "blocking process() cannot be interrupted, the attempt fails once its "
                    "thread ends",
                    message.id,
                    timeout,
                    self.id,
                )
                await asyncio.wait((thread,))
                raise ProcessingTimeout(self.id, timeout or 0.0) from thread.exception()
        except asyncio.CancelledError:
            if not thread.done():
                logger.warning(
                    "message %s still runs in its thread in worker %s: it goes back to its "
                    "queue once the thread ends",
                    message.id,
                    self.id,
                )
                while not thread.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((thread,))
            if not thread.cancelled():
                thread.exception()  # retrieved: the cancellation is what is reported
            raise
        thread.result()
