"""`DeduplicationMiddleware`: a message processed once within a TTL is acked and skipped."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .._checks import is_count, is_number
from ..errors import ConfigurationError
from ..message import Message, SettleState
from .base import CallNext

__all__ = ["DedupStore", "DeduplicationMiddleware", "MemoryDedupStore"]

logger = logging.getLogger("foxwork.dedup")

#: Seconds a processed message id is remembered.
DEFAULT_TTL = 3600.0
#: Message ids a `MemoryDedupStore` remembers at most; the least recently used go first.
DEFAULT_MAX_SIZE = 100_000


@runtime_checkable
class DedupStore(Protocol):
    """Where processed message keys are remembered. Share one store (for example on Redis)
    between processes to deduplicate across them.

    A store may also offer `async forget(key)`; the middleware never needs it.
    """

    async def seen(self, key: str) -> bool:
        """True when `key` was marked and has not expired."""
        ...

    async def mark(self, key: str, ttl: float) -> None:
        """Remember `key` for `ttl` seconds."""
        ...


class MemoryDedupStore:
    """A bounded, expiring `DedupStore` in this process's memory.

    Keys expire `ttl` seconds after they were marked; beyond `max_size` keys the least
    recently used (marked or found) is forgotten first. Nothing survives the process.

    Args:
        max_size: keys remembered at most.
        clock: seconds from a monotonic clock; replace it in tests.
    """

    def __init__(
        self, *, max_size: int = DEFAULT_MAX_SIZE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not is_count(max_size):
            raise ConfigurationError(
                f"MemoryDedupStore(max_size={max_size!r}): pass an int of at least 1"
            )
        self.max_size = max_size
        self._clock = clock
        # key → expiry time, least recently used first.
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryDedupStore(max_size={self.max_size}, size={len(self._expiry)})"

    def __len__(self) -> int:
        return len(self._expiry)

    async def seen(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[key]
            return False
        self._expiry.move_to_end(key)
        return True

    async def mark(self, key: str, ttl: float) -> None:
        now = self._clock()
        self._expiry[key] = now + ttl
        self._expiry.move_to_end(key)
        expiry = self._expiry
        # Expired keys at the cold end go first; then the size bound.
        while expiry and next(iter(expiry.values())) <= now:
            expiry.popitem(last=False)
        while len(expiry) > self.max_size:
            expiry.popitem(last=False)

    async def forget(self, key: str) -> None:
        """Forget `key` (it will be processed again)."""
        self._expiry.pop(key, None)


class DeduplicationMiddleware:
    """Ack and skip a message whose key was processed successfully within `ttl` seconds.

    The key is the message id by default (`message_id`, kept by retried copies). A key is
    marked only after the rest of the chain succeeded, so a failed message is retried, not
    deduplicated; a duplicate is acked without calling the rest of the chain, and that is
    not a failure. Put this layer right inside `AckNackMiddleware`.

    Delivery stays at-least-once: a crash between processing and marking, or between
    marking and the broker's ack, processes a message again or skips it as intended.

    **Concurrent duplicates:** while a key is in flight in this middleware, a duplicate
    with the same key waits for it (holding its pool slot); when the first succeeds, the
    duplicate is acked and skipped; when it fails, the duplicate is processed. Duplicates
    in flight in other processes are not seen (they share only the store).

    Shared state (on purpose): the store and the keys in flight.

    Args:
        store: where processed keys are remembered; a `MemoryDedupStore` by default.
        ttl: seconds a processed key is remembered.
        key: `key(message) -> str`; the message id by default. Include `message.queue` when
            one message id is consumed from several queues that must each process it.

    Example:
        DeduplicationMiddleware(ttl=600.0)
    """

    def __init__(
        self,
        *,
        store: DedupStore | None = None,
        ttl: float = DEFAULT_TTL,
        key: Callable[[Message[Any]], str] | None = None,
    ) -> None:
        if store is not None and not (
            callable(getattr(store, "seen", None)) and callable(getattr(store, "mark", None))
        ):
            raise ConfigurationError(
                f"DeduplicationMiddleware(store={store!r}): pass a DedupStore, an object with "
                "`async seen(key) -> bool` and `async mark(key, ttl)`, or None for memory"
            )
        if not (is_number(ttl) and ttl > 0):
            raise ConfigurationError(
                f"DeduplicationMiddleware(ttl={ttl!r}): pass a positive number of seconds "
                "to remember a processed message"
            )
        if key is not None and not callable(key):
            raise ConfigurationError(
                f"DeduplicationMiddleware(key={key!r}): pass a callable taking the message "
                "and returning its key (str), or None for the message id"
            )
        self.store: DedupStore = store if store is not None else MemoryDedupStore()
        self.ttl = float(ttl)
        self.key = key
        # Keys being processed now → set when that processing ends.
        self._in_flight: dict[str, asyncio.Event] = {}

    def __repr__(self) -> str:
        return f"DeduplicationMiddleware(store={self.store!r}, ttl={self.ttl:g})"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        key = self.key(message) if self.key is not None else message.id
        while (running := self._in_flight.get(key)) is not None:
            await running.wait()
        # Claimed before the store is asked, so a concurrent duplicate always waits.
        done = self._in_flight[key] = asyncio.Event()
        try:
            if await self.store.seen(key):
                logger.info("message %s is a duplicate of one processed before; acked", key)
                await message.ack()
                return
            await call_next(message)
            # An inner layer may have put the message back (requeue) and returned: not done.
            if message.state in (SettleState.PENDING, SettleState.ACKED):
                try:
                    await self.store.mark(key, self.ttl)
                except Exception:
                    # Processed already: failing it now would process it again.
                    logger.exception("could not remember message %s as processed", key)
        finally:
            del self._in_flight[key]
            done.set()
