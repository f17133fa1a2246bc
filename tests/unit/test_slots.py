"""Slots: the pool's concurrency limit, fair, and takeable without waiting."""

from __future__ import annotations

import asyncio

import pytest

from foxwork._slots import Slots

#: Seconds a test waits for a waiter that should get its slot within a loop iteration.
SOON = 2.0


async def let_tasks_run() -> None:
    """Give every ready task its next step (tasks started here wait after one step)."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_try_take_takes_free_slots_and_refuses_when_none_is_left() -> None:
    slots = Slots(2)

    assert [slots.try_take(), slots.try_take(), slots.try_take()] == [True, True, False]
    assert slots.free == 0

    slots.give_back()
    assert slots.free == 1
    assert slots.try_take()


async def test_a_freed_slot_goes_to_the_oldest_waiter_and_nothing_overtakes_it() -> None:
    # Given one slot, held, and two callers waiting for it in turn
    slots = Slots(1)
    assert slots.try_take()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.take()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await let_tasks_run()
    second = asyncio.create_task(wait("second"))
    await let_tasks_run()

    # When the slot is given back
    slots.give_back()

    # Then it is handed to the first waiter, and a non-waiting take cannot grab it meanwhile
    assert not slots.try_take()
    await asyncio.wait_for(first, SOON)
    assert order == ["first"]
    assert slots.free == 0

    # and the next one freed goes to the second waiter
    slots.give_back()
    await asyncio.wait_for(second, SOON)
    assert order == ["first", "second"]
    assert slots.free == 0


async def test_a_waiter_cancelled_while_waiting_leaves_the_line() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiting = asyncio.create_task(slots.take())
    await let_tasks_run()

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    # The freed slot is free again, not handed to the cancelled caller
    slots.give_back()
    assert slots.free == 1
    assert slots.try_take()


async def test_a_waiter_cancelled_just_after_being_handed_a_slot_passes_it_on() -> None:
    # Given two waiters, and a slot handed to the first one in the instant it is cancelled
    slots = Slots(1)
    assert slots.try_take()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await let_tasks_run()
    slots.give_back()
    first.cancel()

    # When both have run
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, SOON)

    # Then the second waiter holds the slot: it was not lost with the first
    assert slots.free == 0
    slots.give_back()
    assert slots.free == 1


async def test_a_waiter_cancelled_in_the_turn_its_slot_is_given_back_is_cancelled_cleanly() -> None:
    # Given one slot, held, and a caller waiting for it
    slots = Slots(1)
    assert slots.try_take()
    waiting = asyncio.create_task(slots.take())
    await let_tasks_run()

    # When the caller is cancelled and the slot given back in the same loop turn (a
    # shutdown cancelling the intake while a message finishes)
    waiting.cancel()
    slots.give_back()

    # Then the caller sees its cancellation (on which it cleans up), not an error of Slots
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # and the slot is free, once
    assert slots.free == 1
    assert slots.try_take()
    assert not slots.try_take()
