"""Settling entries on Redis: one script per queue, atomic, on a single server or a cluster.

`SETTLE` optionally XADDs a copy (to the stream itself for a requeue, or to the dead-letter
stream), then XACKs and XDELs the given entries. It runs as one step: the copy exists once
the original is acked, never the other way round, and a copy Redis refuses (a key of the
wrong type) fails the script before anything was acked. Its keys are one queue's, which
share a hash tag, so that a Redis Cluster runs it on the queue's master; acks of several
queues are one script call each. (A MULTI would do on a single server, but redis-py's
cluster pipelines either refuse scripts or, for transactions, hand every queued command to
a thread of its own, several times slower.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SETTLE", "settle_args"]

#: Entry ids one XACK / XDEL of the script takes at most (Lua's unpack has a stack limit).
_CHUNK = 1000

#: KEYS: the stream, where the copy goes (the stream or its dead-letter stream).
#: ARGV: group, max stream length (0: none), 2 x fields of the copy (0: no copy), the
#: copy's names and values, then the entry ids to ack and delete.
#: Returns the number of entries acked.
SETTLE = f"""
local maxlen, n = tonumber(ARGV[2]), tonumber(ARGV[3])
if n > 0 then
  if maxlen > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4, 3 + n))
  else
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4, 3 + n))
  end
end
local acked = 0
for first = 4 + n, #ARGV, {_CHUNK} do
  local last = math.min(first + {_CHUNK - 1}, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
end
return acked
"""


def settle_args(
    group: str,
    max_len: int | None,
    ids: Iterable[bytes],
    copy: Mapping[bytes, bytes] | None = None,
) -> list[Any]:
    """`SETTLE`'s ARGV: ack and delete `ids`, after adding `copy` (if any)."""
    args: list[Any] = [group, max_len or 0, 2 * len(copy) if copy else 0]
    if copy:
        for name, value in copy.items():
            args += (name, value)
    args.extend(ids)
    return args
