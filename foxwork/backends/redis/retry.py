"""Delayed retries on Redis: a sorted set per queue, scored by due time, and its mover.

`publish_retry` adds the copy's fields, packed into one member, to `foxwork:{Q}:retry`
with the time it is due (Unix ms) as the score. A mover per consumed queue runs
`MOVE_DUE`, a script that takes the members due by now (oldest first), XADDs each back to
the stream and removes it from the set, all in one atomic step: a copy is in the set or in
the stream, never in both or neither. Members are ordered by due time, not by when they
were added, so a 0.3 s retry never waits behind a 30 s one (no head-of-line blocking).

The mover sleeps until the next member is due, woken early by this process's own retries,
and looks at least every `IDLE_POLL` seconds for retries other processes added. Any number
of processes may run movers of one queue: the script is atomic, so each copy moves once.

A member is `<16 random hex bytes>` then, per field, `<length>:<name><length>:<value>`
(netstring-like, so bodies may hold any byte); the random prefix keeps identical copies
apart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from ...errors import BackendError
from .config import StreamKeys
from .connection import Client

__all__ = ["RetryMover", "pack"]

logger = logging.getLogger("foxwork.backends.redis")

#: Seconds the mover waits at most before looking for retries other processes added.
IDLE_POLL = 0.1
#: Copies one run of the script moves at most.
MOVE_BATCH = 100
_NONCE = 32
#: Seconds `stop()` waits for the mover to stop by itself.
STOP_GRACE = 5.0

#: KEYS: retry set, stream. ARGV: now (ms), most to move, max stream length (0: none),
#: length of a member's random prefix.
#: Returns {moved, score of the next member or false}.
MOVE_DUE = """
local function unpack_member(member)
  local fields, pos = {}, tonumber(ARGV[4]) + 1
  while pos <= #member do
    local colon = string.find(member, ':', pos, true)
    local size = tonumber(string.sub(member, pos, colon - 1))
    fields[#fields + 1] = string.sub(member, colon + 1, colon + size)
    pos = colon + size + 1
  end
  return fields
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local maxlen = tonumber(ARGV[3])
for _, member in ipairs(due) do
  local fields = unpack_member(member)
  if maxlen > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  else
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('ZREM', KEYS[1], member)
end
local following = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, following[2] or false}
"""


def pack(fields: Mapping[bytes, bytes]) -> bytes:
    """One sorted-set member holding `fields` (see the module docstring)."""
    parts = [secrets.token_hex(_NONCE // 2).encode()]
    for name, value in fields.items():
        parts += [b"%d:" % len(name), name, b"%d:" % len(value), value]
    return b"".join(parts)


def now_ms() -> int:
    return int(time.time() * 1000)


class RetryMover:
    """Moves due retry copies of one queue back to its stream (see the module docstring)."""

    def __init__(self, client: Callable[[], Client], keys: StreamKeys, max_len: int | None) -> None:
        self._client = client
        self._keys = keys
        self._max_len = max_len or 0
        self._script = client().register_script(MOVE_DUE)
        self._wake = asyncio.Event()
        self._failing = False
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"foxwork-redis-retry-{keys.queue}")

    def wake(self) -> None:
        """A copy was added: look again now."""
        self._wake.set()

    @property
    def active(self) -> bool:
        return not self._task.done()

    async def move_due(self) -> tuple[int, float | None]:
        """Move what is due now; (how many moved, when the next is due (Unix ms) or None)."""
        reply: Any = await self._script(
            keys=[self._keys.retry, self._keys.stream],
            args=[now_ms(), MOVE_BATCH, self._max_len, _NONCE],
            client=self._client(),
        )
        moved, following = reply
        return int(moved), None if following is None else float(following)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                moved, following = await self.move_due()
                self._failing = False
            except (RedisError, RedisClusterException, BackendError, OSError) as exc:
                # The consumer notices a dead connection and reports it; this only waits
                # (and says so once, not on every poll).
                if not self._failing:
                    logger.warning("moving due retries of %r failed: %s", self._keys.queue, exc)
                self._failing = True
                moved, following = 0, None
            if moved >= MOVE_BATCH:
                continue
            wait = IDLE_POLL
            if following is not None:
                wait = min(wait, max(0.0, (following - now_ms()) / 1000))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def stop(self) -> None:
        # As the consumer's: the loop stops by itself between commands (a cancel inside
        # redis-py's send may be lost on Python 3.11); cancelled only if it does not.
        self._stopping = True
        self.wake()
        await asyncio.wait([self._task], timeout=STOP_GRACE)
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
