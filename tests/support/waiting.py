"""The one way tests wait for something: a condition checked until it holds or a deadline.

Conditions a test owns (an event, a recorder) are better awaited directly; this is for state
the test can only look at (a queue's depth, a pool's counters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["DEFAULT_WAIT", "wait_until"]

#: Seconds a test waits for something that normally takes milliseconds.
DEFAULT_WAIT = 10.0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    what: str | Callable[[], str] = "the condition holds",
    timeout: float = DEFAULT_WAIT,
    interval: float = 0.05,
) -> float:
    """Wait until `predicate()` is true; fail the test after `timeout` seconds.

    Args:
        predicate: a function, or a coroutine function, returning whether to stop waiting.
        what: the condition in words, for the failure message (a callable is called then,
            to show the state at the deadline).
        timeout: seconds before the test fails.
        interval: seconds between two checks (0: every turn of the event loop).

    Returns:
        The seconds it took.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return loop.time() - began
        if loop.time() >= deadline:
            text = what if isinstance(what, str) else what()
            pytest.fail(f"timed out after {timeout:g} s waiting until {text}", pytrace=False)
        await asyncio.sleep(interval)
