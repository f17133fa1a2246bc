"""The `Worker` base class: the user's code."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from . import codec
from ._checks import is_number
from .errors import ConfigurationError, PoisonMessage, ProcessingTimeout
from .message import Message

__all__ = ["Worker"]

P = TypeVar("P")

_ids = itertools.count(1)


class Worker(Generic[P]):
    """Subclass this and implement `process()`.

    `process` may be `async def` (runs on the event loop) or a plain `def` for blocking or
    CPU-bound code, which foxwork runs in a thread so that heartbeats and other messages
    keep flowing.

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

    def _make_call(self) -> Callable[[Message[Any]], Awaitable[None]]:
        process: Any = self.process
        if getattr(type(self), "process", None) is Worker.process:
            raise ConfigurationError(
                f"worker {self.id!r} ({type(self).__name__}) does not implement process(): "
                "define `async def process(self, message)` (or a plain `def` for blocking code)"
            )
        if inspect.iscoroutinefunction(process):
            return process  # type: ignore[no-any-return]

        async def in_thread(message: Message[Any]) -> None:
            await asyncio.to_thread(functools.partial(process, message))

        return in_thread

    async def handle(self, message: Message[Any]) -> None:
        """Validate the payload, then run `process()` under the timeout. The pool calls this
        as the innermost layer of the middleware chain."""
        if message.poison is not None:
            raise PoisonMessage(message.poison)
        model = self.payload_model
        if model is not None:
            message.payload = codec.validate(model, message.body, message.payload)
        timeout = self.processing_timeout
        if timeout is None:
            await self._call(message)
            return
        try:
            async with asyncio.timeout(timeout):
                await self._call(message)
        except TimeoutError as exc:
            raise ProcessingTimeout(self.id, timeout) from exc
