"""The spool's metrics: `foxwork.spool.depth` and `foxwork.spool.bytes`, observable gauges
with the attribute `spool` (the directory), read from every open spool at collection."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry import get_meter

if TYPE_CHECKING:
    from .store import Spool

__all__ = ["SPOOL_BYTES", "SPOOL_DEPTH", "observe_spool"]

#: Gauge: messages in a spool the broker has not confirmed yet.
SPOOL_DEPTH = "foxwork.spool.depth"
#: Gauge: their bytes on disk, record headers included.
SPOOL_BYTES = "foxwork.spool.bytes"
#: The attribute naming a spool (its directory).
ATTR_SPOOL = "spool"

_open: set[Spool] = set()
_instruments_lock = threading.Lock()
_instruments_created = False


def observe_spool(spool: Spool) -> Callable[[], None]:
    """Report `spool` under the global meter provider until the returned function is
    called."""
    global _instruments_created
    with _instruments_lock:
        if not _instruments_created:
            # Once per process: the global provider's meter forwards to whichever provider
            # the application sets, before or after this.
            meter = get_meter()
            meter.create_observable_gauge(
                SPOOL_DEPTH,
                [_observe("depth")],
                unit="{message}",
                description="Messages in the spool the broker has not confirmed yet",
            )
            meter.create_observable_gauge(
                SPOOL_BYTES,
                [_observe("size")],
                unit="By",
                description="Bytes of the messages in the spool, record headers included",
            )
            _instruments_created = True
        _open.add(spool)
    return lambda: _open.discard(spool)


def _observe(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(getattr(spool, field), {ATTR_SPOOL: str(spool.directory)})
            for spool in list(_open)
        ]

    return observe
