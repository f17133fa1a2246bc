"""The middleware protocol and the chain builder.

A middleware is any async callable `(message, call_next)`: the onion model. The pool folds
the user's list into one callable once, when it is built, outermost first, so the cost per
message is one await per layer and nothing else. A layer must not spawn tasks around
`call_next`: the whole chain runs in one task so that `contextvars` (and with them the
OpenTelemetry context) flow through it in both directions.

A middleware settles a message only through `Message` (which settles once) and, when it
settles a failed message, still re-raises the failure so that outer layers (circuit
breaker, metrics, tracing) see it.

One layer instance may serve several pools (a breaker guarding one dependency for all of
them). Its `startup()` and `shutdown()` hooks then run once per pool, and `current_pool()`
tells a hook, or the layer handling a message, which pool it runs for: a layer that holds
messages releases only the stopping pool's messages, never another's.

Layers also meet through the chain's context: `holds_failed_probe()` tells a layer that
settles failures (`RetryMiddleware`) that a circuit breaker outside it holds the failed
message for its next probe, so neither layer imports the other.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError
from ..message import Message

__all__ = ["CallNext", "Middleware", "build_chain", "current_pool", "holds_failed_probe", "probing"]

#: The rest of the chain, as seen from one layer.
CallNext = Callable[[Message[Any]], Awaitable[None]]

# The pool whose chain or lifecycle hook runs in this task. A context variable, because a
# message's whole chain runs in its own task (set once at the chain's entry).
_pool: contextvars.ContextVar[object | None] = contextvars.ContextVar("foxwork_pool", default=None)


def current_pool() -> object | None:
    """The pool whose chain, `startup()` or `shutdown()` runs in the current task, or None
    outside a pool (a layer called directly). Layers shared by several pools use it to keep
    per-pool state apart."""
    return _pool.get()


class _Direct:
    """Stands for "no pool" (a layer called directly) where a weak reference is needed."""


_DIRECT = _Direct()


def pool_key() -> object:
    """`current_pool()`, or a stand-in when there is none: a key for per-pool state."""
    pool = _pool.get()
    return _DIRECT if pool is None else pool


class StoppedPools:
    """Which of the pools sharing a layer have stopped intake, for layers that hold
    messages (a circuit breaker, a rate limiter): a stopping pool's messages must not be
    held any more, while the other pools' messages are held as before.

    Call `started()` from the layer's `startup()` and `stopped()` from its `shutdown()`.
    Pools are held weakly: a stopped pool is forgotten once it is gone.
    """

    __slots__ = ("_stopped",)

    def __init__(self) -> None:
        self._stopped: weakref.WeakSet[object] = weakref.WeakSet()

    def started(self) -> None:
        """The current pool starts (again, for a layer called directly)."""
        self._stopped.discard(pool_key())

    def stopped(self) -> object:
        """The current pool stopped intake; returns its key (see `pool_key()`)."""
        key = pool_key()
        self._stopped.add(key)
        return key

    def stopping(self) -> bool:
        """True when the current pool stopped intake."""
        return pool_key() in self._stopped


#: Inside the chain of a circuit breaker's HALF_OPEN probe: that breaker's `is_failure`
#: (None elsewhere). The breaker sets it around `call_next`; layers inside it that settle
#: failures ask `holds_failed_probe()`. A context variable, because the whole chain runs in
#: the message's own task.
probing: contextvars.ContextVar[Callable[[BaseException], bool] | None] = contextvars.ContextVar(
    "foxwork_probing", default=None
)


def holds_failed_probe(exc: BaseException) -> bool:
    """True when the current task runs a HALF_OPEN probe of a circuit breaker that holds
    the message again after failing with `exc` (instead of letting it be settled).

    A failed probe must not consume a retry attempt: layers inside the breaker that settle
    failures (`RetryMiddleware`) then leave the message unsettled and re-raise, and the
    breaker holds it for the next probe.
    """
    is_failure = probing.get()
    return is_failure is not None and is_failure(exc)


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


def build_chain(
    middleware: Sequence[Middleware], endpoint: CallNext, *, pool: object | None = None
) -> CallNext:
    """Fold `middleware` (outermost first) around `endpoint` into one callable; with
    `pool`, the chain runs with `current_pool()` returning it."""
    check_middleware(middleware)
    chain = endpoint
    for layer in reversed(middleware):
        chain = _bind(layer, chain)
    if pool is not None and middleware:
        chain = _enter(pool, chain)
    return chain


def _enter(pool: object, chain: CallNext) -> CallNext:
    # Called in the message's own task: the value holds for the whole chain.
    def call(message: Message[Any]) -> Awaitable[None]:
        _pool.set(pool)
        return chain(message)

    call.__qualname__ = chain.__qualname__
    return call


def _bind(layer: Middleware, call_next: CallNext) -> CallNext:
    # A plain function returning the layer's coroutine: no extra coroutine frame per layer.
    def call(message: Message[Any]) -> Awaitable[None]:
        return layer(message, call_next)

    call.__qualname__ = f"{type(layer).__name__}.__call__"
    return call


async def startup_all(middleware: Sequence[object], *, pool: object | None = None) -> None:
    """Run each layer's optional `startup()` hook, outermost first, for `pool`."""
    token = _pool.set(pool)
    try:
        for layer in middleware:
            hook: Any = getattr(layer, "startup", None)
            if hook is not None:
                await hook()
    finally:
        _pool.reset(token)


async def shutdown_all(middleware: Sequence[object], *, pool: object | None = None) -> None:
    """Run each layer's optional `shutdown()` hook, innermost first, for `pool`."""
    token = _pool.set(pool)
    try:
        for layer in reversed(middleware):
            hook: Any = getattr(layer, "shutdown", None)
            if hook is not None:
                await hook()
    finally:
        _pool.reset(token)
