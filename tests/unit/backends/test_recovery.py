"""The backoff schedule and the one loop that re-establishes consumers."""

from __future__ import annotations

import asyncio

import pytest
from tenacity import RetryCallState, wait_exponential

from foxwork import ConnectionLost
from foxwork.backends import ReconnectStrategy
from foxwork.backends._backoff import Backoff
from foxwork.backends._recovery import Restorer
from foxwork.backends.base import Consumer

SOON = 2.0


class StubConsumer(Consumer):
    def __init__(self, queue: str = "orders") -> None:
        self.queue = queue

    @property
    def active(self) -> bool:
        return False

    async def cancel(self) -> None:
        pass


def attempt(number: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = number
    return state


def test_the_backoff_doubles_from_initial_up_to_max() -> None:
    backoff = Backoff(initial=1.0, max=10.0, multiplier=2.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(10_000) == 10.0


def test_jitter_spreads_the_delay_but_never_past_max() -> None:
    backoff = Backoff(initial=4.0, max=5.0, multiplier=2.0, jitter=0.5)
    delays = [backoff.delay(1) for _ in range(200)]
    assert all(2.0 <= d <= 5.0 for d in delays) and len(set(delays)) > 1
    assert all(backoff.delay(2) <= 5.0 for _ in range(200))


def test_the_reconnect_schedule_without_jitter_is_tenacitys_exponential_wait() -> None:
    strategy = ReconnectStrategy.Exponential(initial=0.5, max=20.0, multiplier=3.0, jitter_factor=0)
    tenacity_wait = wait_exponential(multiplier=0.5, exp_base=3.0, max=20.0)
    for n in range(1, 8):
        assert strategy.wait()(attempt(n)) == tenacity_wait(attempt(n))


async def test_a_restore_is_retried_after_a_backend_error_until_it_works() -> None:
    # Given a renewal that fails twice
    calls = 0
    worked = asyncio.Event()

    async def renew() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionLost("declare failed")
        worked.set()

    restorer = Restorer(Backoff(initial=0.001, max=0.001))
    consumer = StubConsumer()

    # When it is restored, and asked again while the first restore runs
    assert restorer.restore(consumer, renew, wanted=lambda: True)
    assert not restorer.restore(consumer, renew, wanted=lambda: True)

    # Then one loop tried until it worked
    await asyncio.wait_for(worked.wait(), SOON)
    await restorer.stop()
    assert calls == 3


async def test_a_restore_stops_when_no_longer_wanted_or_stopped() -> None:
    # Given a renewal that never works
    calls = 0
    wanted = True

    async def renew() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionLost("still down")

    restorer = Restorer(Backoff(initial=0.001, max=0.001))
    consumer = StubConsumer()

    # When the consumer is no longer wanted (cancelled, or the connection is gone)
    restorer.restore(consumer, renew, wanted=lambda: wanted)
    await asyncio.sleep(0.01)
    wanted = False
    await asyncio.sleep(0.01)

    # Then the loop ended by itself, and a new restore can start (and be stopped)
    tried = calls
    await asyncio.sleep(0.01)
    assert calls == tried
    assert restorer.restore(consumer, renew, wanted=lambda: True)
    await restorer.stop(consumer)
    assert restorer.restore(consumer, renew, wanted=lambda: False)


@pytest.mark.parametrize("initial", [0.5, 2.0])
def test_backoff_wait_counts_tenacity_attempts_from_one(initial: float) -> None:
    assert Backoff(initial=initial, max=60.0).wait()(attempt(1)) == initial
