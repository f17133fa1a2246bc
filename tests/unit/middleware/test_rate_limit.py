"""RateLimitMiddleware: a sustained rate with bursts; over-limit messages wait, never fail."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from foxwork import ConfigurationError, Message, SettleState
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RateLimitMiddleware
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import RecordingWorker, eventually, make_message


def tenant(message: Message[Any]) -> str:
    return str(message.headers["tenant"])


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("rate", 0),
        ("rate", -5.0),
        ("rate", math.inf),
        ("rate", math.nan),
        ("rate", True),
        ("rate", "10"),
        ("burst", 0.5),
        ("burst", math.inf),
        ("burst", True),
        ("key", "tenant"),
        ("max_keys", 0),
    ],
)
def test_an_invalid_argument_is_refused_naming_it_and_its_value(
    argument: str, value: object
) -> None:
    kwargs: dict[str, Any] = {"rate": 10, argument: value}
    with pytest.raises(ConfigurationError) as caught:
        RateLimitMiddleware(**kwargs)
    assert f"{argument}={value!r}" in str(caught.value)


@pytest.mark.parametrize(("rate", "burst"), [(50, 50.0), (0.2, 1.0)])
def test_the_default_burst_is_one_second_of_rate_and_at_least_one(
    rate: float, burst: float
) -> None:
    assert RateLimitMiddleware(rate=rate).burst == burst


async def test_messages_within_the_burst_pass_at_once_and_the_next_one_waits() -> None:
    # Given a limit of 20/s with bursts of 3
    limiter = RateLimitMiddleware(rate=20, burst=3)
    passed: list[Message[Any]] = []

    async def call_next(message: Message[Any]) -> None:
        passed.append(message)

    # When four messages arrive at once
    started = time.monotonic()
    for _ in range(3):
        await limiter(make_message(), call_next)
    burst_done = time.monotonic()
    fourth = make_message()
    await limiter(fourth, call_next)
    fourth_done = time.monotonic()

    # Then the burst passes, and the fourth waits about 1/20 s; it is not failed or settled
    assert len(passed) == 4
    assert burst_done - started < 0.04
    assert fourth_done - burst_done >= 0.04
    assert fourth.state is SettleState.PENDING


async def test_each_key_has_its_own_limit() -> None:
    # Given a limit per tenant of 20/s with bursts of 2
    limiter = RateLimitMiddleware(rate=20, burst=2, key=tenant)
    finished: list[tuple[str, float]] = []
    started = time.monotonic()

    async def call_next(message: Message[Any]) -> None:
        finished.append((message.headers["name"], time.monotonic() - started))

    def send(name: str) -> asyncio.Task[None]:
        message = make_message(headers={"tenant": name[0], "name": name})
        return asyncio.create_task(limiter(message, call_next))

    # When tenant "a" sends three messages and tenant "b" two, all at once
    await asyncio.gather(*(send(name) for name in ["a1", "a2", "b1", "b2", "a3"]))

    # Then only the third message of "a" was over its limit, and it waited about 1/20 s
    names = [name for name, _ in finished]
    assert sorted(names[:4]) == ["a1", "a2", "b1", "b2"]
    assert names[4] == "a3"
    assert finished[4][1] >= 0.04


async def test_keys_beyond_max_keys_forget_the_least_recently_used() -> None:
    # Given at most two per-key limiters, for keys "a" and "b", "a" used last
    limiter = RateLimitMiddleware(rate=0.001, burst=1, key=tenant, max_keys=2)
    for name in ["a", "b", "a"]:
        limiter.limiter_for(name)
    kept_a = limiter.limiter_for("a")

    # When a third key arrives
    limiter.limiter_for("c")

    # Then "b" was forgotten, "a" kept
    assert limiter.key_count == 2
    assert limiter.limiter_for("a") is kept_a
    assert limiter.key_count == 2


async def test_without_a_key_all_messages_share_one_limit() -> None:
    limiter = RateLimitMiddleware(rate=0.001, burst=1)
    await limiter(make_message(headers={"tenant": "a"}), _noop)

    assert not limiter.limiter_for("b").has_capacity()
    assert limiter.key_count == 0


async def _noop(message: Message[Any]) -> None:
    pass


@pytest.mark.slow
async def test_a_pool_of_200_messages_at_50_per_second_with_bursts_of_10_takes_about_4_s(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given 200 messages and a pool limited to 50/s with bursts of 10
    worker = RecordingWorker()
    pool = make_pool(
        worker,
        middleware=[AckNackMiddleware(), RateLimitMiddleware(rate=50, burst=10)],
        concurrency_limit=20,
    )
    for n in range(200):
        await memory_backend.add_message(queue_name, {"n": n})

    # When
    started = time.monotonic()
    await run_until_idle(pool, memory_backend, queue_name, timeout=10)
    elapsed = time.monotonic() - started

    # Then 10 pass at once and 190 at 50/s: 3.8 s
    assert len(worker.payloads) == 200
    assert 3.6 <= elapsed <= 4.4


async def test_shutdown_hands_back_the_messages_waiting_for_the_limit_without_its_deadline(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a pool limited to one message per 1,000 s, a backlog, and four messages
    # waiting in the limiter behind the one that passed
    worker = RecordingWorker()
    limiter = RateLimitMiddleware(rate=0.001, burst=1)
    pool = make_pool(worker, middleware=[AckNackMiddleware(), limiter], concurrency_limit=4)
    for n in range(6):
        await memory_backend.add_message(queue_name, {"n": n})
    await pool.start(memory_backend)
    await eventually(lambda: len(worker.payloads) == 1 and pool.in_flight == 4)

    # When the pool shuts down with an hour's deadline
    report = await asyncio.wait_for(pool.shutdown(timeout=3600), timeout=5)

    # Then the waiting messages went back to the queue at once, not cancelled at the
    # deadline: nothing lost, nothing processed twice
    assert report.requeued == 0
    assert worker.payloads == [{"n": 0}]
    assert sorted(m.body for m in memory_backend.messages(queue_name)) == sorted(
        f'{{"n":{n}}}'.encode() for n in range(1, 6)
    )
    assert sum(m.redelivered for m in memory_backend.messages(queue_name)) == 4


async def test_a_pool_stopping_leaves_another_pools_waiting_messages_waiting(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given one limiter shared by two pools, each with a message waiting in it
    limiter = RateLimitMiddleware(rate=0.001, burst=1)
    worker_a, worker_b = RecordingWorker(), RecordingWorker()
    queue_a, queue_b = f"{queue_name}-a", f"{queue_name}-b"
    pool_a = make_pool(
        worker_a, middleware=[AckNackMiddleware(), limiter], queues=[queue_a], name="a"
    )
    pool_b = make_pool(
        worker_b, middleware=[AckNackMiddleware(), limiter], queues=[queue_b], name="b"
    )
    await memory_backend.add_message(queue_a, {"n": 0})
    await memory_backend.add_message(queue_a, {"n": 1})
    await memory_backend.add_message(queue_b, {"n": 2})
    await pool_a.start(memory_backend)
    await eventually(lambda: pool_a.in_flight == 1 and len(worker_a.payloads) == 1)
    await pool_b.start(memory_backend)
    await eventually(lambda: pool_b.in_flight == 1)

    # When pool A shuts down
    await asyncio.wait_for(pool_a.shutdown(timeout=3600), timeout=5)

    # Then A's waiting message went back to its queue, and B's still waits in the limiter
    assert len(memory_backend.messages(queue_a)) == 1
    assert pool_b.in_flight == 1
    assert memory_backend.messages(queue_b) == []
    assert worker_b.payloads == []
