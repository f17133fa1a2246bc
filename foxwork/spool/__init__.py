"""A durable local spool for `Publisher`: messages kept on disk while the broker is
unreachable, and replayed in order once it is back.

`SpoolConfig` says where and how much; `Spool` is the log on disk (`store.py`: segments of
length- and CRC-framed records, group-committed fsyncs, an atomically written read position,
a PID lock file); `Drainer` replays it, one confirm at a time; `read_status` looks at a spool
directory from outside (`foxwork spool status`).
"""

from __future__ import annotations

from ._lock import SpoolLocked
from ._metrics import SPOOL_BYTES, SPOOL_DEPTH
from ._records import SpooledMessage
from .drainer import Drainer
from .store import Spool, SpoolConfig, SpoolFull, SpoolStatus, read_status

__all__ = [
    "SPOOL_BYTES",
    "SPOOL_DEPTH",
    "Drainer",
    "Spool",
    "SpoolConfig",
    "SpoolFull",
    "SpoolLocked",
    "SpoolStatus",
    "SpooledMessage",
    "read_status",
]
