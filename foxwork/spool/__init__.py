"""A durable local spool for `Publisher`: messages kept on disk while the broker is
unreachable, and replayed in order once it is back.

`SpoolConfig` says where and how much (exported by `foxwork`, with the errors `SpoolFull`
and `SpoolLocked`). The parts behind it, importable from here for tools and tests:
`Spool` is the log on disk (`store.py`: segments of length- and CRC-framed records,
group-committed fsyncs, an atomically written read position, a PID lock file); `Drainer`
replays it, one confirm at a time; `read_status` looks at a spool directory from outside
(`foxwork spool status`).
"""

from __future__ import annotations

from ._lock import SpoolLocked
from ._metrics import SPOOL_BYTES, SPOOL_DEPTH
from ._records import SpooledMessage as SpooledMessage
from .drainer import Drainer as Drainer
from .store import DamagedRecord as DamagedRecord
from .store import Spool as Spool
from .store import SpoolConfig, SpoolFull
from .store import SpoolCorrupt as SpoolCorrupt
from .store import SpoolStatus as SpoolStatus
from .store import read_status as read_status

# What `foxwork` exports too; the parts behind it are imported by name, as
# `foxwork.spool.Spool` (re-exported above with `as`).
__all__ = ["SPOOL_BYTES", "SPOOL_DEPTH", "SpoolConfig", "SpoolFull", "SpoolLocked"]
