"""Keeping the garbage collector off the objects a consumer process starts with."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect garbage once, then freeze every object still alive: the collector skips them
    from then on. Returns how many objects are frozen.

    Call it once the process has started: modules imported, pool started, broker connected.
    What lives then (modules, classes, configuration, connections) lives until the process
    exits, yet every full collection walks it again. After the freeze a collection walks
    only what was created since, in a consumer the messages in flight and the telemetry
    waiting for export. `foxwork run` does this after the pool has started (`--no-gc-freeze`
    turns it off); a process that runs a pool some other way can call it likewise.

    A frozen object is never collected, so an object from before the call that later
    becomes unreachable only through a reference cycle stays in memory; undo with
    `gc.unfreeze()`.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
