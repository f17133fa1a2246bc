"""freeze_startup_heap: what lives at start-up is kept out of garbage collections."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from foxwork.cli.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap as it was: unfrozen again afterwards."""
    yield
    gc.unfreeze()


def in_a_generation(obj: object) -> bool:
    """Whether the collector still scans `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_live_objects_are_frozen_and_garbage_is_collected_first(unfrozen: None) -> None:
    # Given a live object, and a reference cycle that is already garbage
    kept = Node()
    first, second = Node(), Node()
    first.other, second.other = second, first
    garbage = weakref.ref(first)
    del first, second
    assert in_a_generation(kept) and garbage() is not None

    # When the heap is frozen
    frozen = freeze_startup_heap()

    # Then the live object is out of every generation, the garbage cycle was collected
    # rather than frozen, and the count says how many objects are frozen
    assert not in_a_generation(kept)
    assert garbage() is None
    assert frozen == gc.get_freeze_count() > 0
