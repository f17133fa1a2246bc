"""The middleware protocol and the chain builder.

A middleware is any async callable `(message, call_next)`: the onion model. The pool folds
the user's list into one callable once, when it is built, outermost first, so the cost per
message is one await per layer and nothing else. A layer must not spawn tasks around
`call_next`: the whole chain runs in one task so that `contextvars` (and with them the
OpenTelemetry context) flow through it in both directions.

A middleware settles a message only through `Message` (which settles once) and, when it
settles a failed message, still re-raises the failure so that outer layers (circuit
breaker, metrics, tracing) see it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError
from ..message import Message

__all__ = ["CallNext", "Middleware", "build_chain"]

#: The rest of the chain, as seen from one layer.
CallNext = Callable[[Message[Any]], Awaitable[None]]


@runtime_checkable
class Middleware(Protocol):
    """One layer of the onion. `startup()` and `shutdown()` are optional hooks."""

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None: ...


def check_middleware(middleware: Sequence[object]) -> None:
    """Raise `ConfigurationError` for any item that cannot be a middleware layer."""
    for index, layer in enumerate(middleware):
        # A class is callable too, but calling it per message builds a layer, not a result.
        if not callable(layer) or isinstance(layer, type):
            raise ConfigurationError(
                f"middleware[{index}] = {layer!r} is not callable: pass an object or function "
                "with the signature `async (message, call_next) -> None` (did you pass the "
                "class instead of an instance, or call it twice?)"
            )


def build_chain(middleware: Sequence[Middleware], endpoint: CallNext) -> CallNext:
    """Fold `middleware` (outermost first) around `endpoint` into one callable."""
    check_middleware(middleware)
    chain = endpoint
    for layer in reversed(middleware):
        chain = _bind(layer, chain)
    return chain


def _bind(layer: Middleware, call_next: CallNext) -> CallNext:
    # A plain function returning the layer's coroutine: no extra coroutine frame per layer.
    def call(message: Message[Any]) -> Awaitable[None]:
        return layer(message, call_next)

    call.__qualname__ = f"{type(layer).__name__}.__call__"
    return call


async def startup_all(middleware: Sequence[object]) -> None:
    """Run each layer's optional `startup()` hook, outermost first."""
    for layer in middleware:
        hook: Any = getattr(layer, "startup", None)
        if hook is not None:
            await hook()


async def shutdown_all(middleware: Sequence[object]) -> None:
    """Run each layer's optional `shutdown()` hook, innermost first."""
    for layer in reversed(middleware):
        hook: Any = getattr(layer, "shutdown", None)
        if hook is not None:
            await hook()
