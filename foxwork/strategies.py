"""How the pool picks a worker for each message."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence

__all__ = ["LoadBalancingStrategy"]


class LoadBalancingStrategy(enum.Enum):
    """Which worker gets the next message."""

    ROUND_ROBIN = "round_robin"
    """Each worker in turn, in the order they were added."""
    RANDOM = "random"
    """A worker chosen uniformly at random."""
    LEAST_LOADED = "least_loaded"
    """The worker with the fewest messages in flight; ties go to the earliest added."""


def make_picker(strategy: LoadBalancingStrategy, in_flight: Sequence[int]) -> Callable[[], int]:
    """A function returning the index of the next worker. `in_flight` is the pool's live
    list of per-worker in-flight counts (read, never written here)."""
    count = len(in_flight)
    if count == 1:
        return lambda: 0
    if strategy is LoadBalancingStrategy.RANDOM:
        return lambda: random.randrange(count)
    if strategy is LoadBalancingStrategy.LEAST_LOADED:
        indexes = range(count)
        return lambda: min(indexes, key=in_flight.__getitem__)
    position = -1

    def round_robin() -> int:
        nonlocal position
        position = (position + 1) % count
        return position

    return round_robin
