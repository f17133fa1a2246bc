"""WorkerPool: load balancing, the concurrency limit, the onion, shutdown and health."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest

from foxwork import (
    ConfigurationError,
    LoadBalancingStrategy,
    Message,
    PoolState,
    PoolStateError,
    ShutdownReport,
    Worker,
    WorkerPool,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, AckPolicy, CallNext
from foxwork.strategies import make_picker
from tests.conftest import PoolFactory, run_until_idle

from .helpers import RecordingSettler, RecordingWorker, make_message

#: Seconds a test waits for something that should happen within a few loop iterations.
SOON = 2.0


class GateWorker(Worker[Any]):
    """Holds a message whose payload is "block" until `release` is set; reports every
    finished payload on the shared `finished` queue."""

    def __init__(self, id: str, finished: asyncio.Queue[tuple[str, Any]]) -> None:
        super().__init__(id)
        self.finished = finished
        self.seen: list[Any] = []
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.seen.append(message.payload)
        if message.payload == "block":
            self.blocked.set()
            await self.release.wait()
        self.finished.put_nowait((self.id, message.payload))


class Gauge:
    """Counts messages in `process()` right now, and the most ever seen at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live = 0
        self.max = 0
        self.done = 0
        self.full = asyncio.Event()
        self.release = asyncio.Event()


class GaugedWorker(Worker[Any]):
    def __init__(self, gauge: Gauge) -> None:
        super().__init__()
        self.gauge = gauge

    async def process(self, message: Message[Any]) -> None:
        gauge = self.gauge
        gauge.live += 1
        gauge.max = max(gauge.max, gauge.live)
        try:
            if gauge.live == gauge.limit:
                gauge.full.set()
            await gauge.release.wait()
        finally:
            gauge.live -= 1
            gauge.done += 1


# -- load balancing ---------------------------------------------------------------------


async def test_round_robin_gives_each_worker_its_exact_share_in_order(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given three workers and thirty messages
    workers = [RecordingWorker(f"w{i}") for i in range(3)]
    pool = make_pool(*workers, strategy=LoadBalancingStrategy.ROUND_ROBIN)
    for n in range(30):
        await memory_backend.add_message(queue_name, n)

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then each got ten, every third message, in queue order
    assert [w.payloads for w in workers] == [list(range(i, 30, 3)) for i in range(3)]


async def test_least_loaded_sends_new_messages_to_the_idle_worker(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given three workers, the first two each stuck on a message
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    a, b, c = (GateWorker(name, finished) for name in "abc")
    pool = make_pool(a, b, c, strategy=LoadBalancingStrategy.LEAST_LOADED)
    await pool.start(memory_backend)
    await memory_backend.add_message(queue_name, "block")
    await asyncio.wait_for(a.blocked.wait(), SOON)
    await memory_backend.add_message(queue_name, "block")
    await asyncio.wait_for(b.blocked.wait(), SOON)

    # When five more messages arrive one after the other
    for n in range(5):
        await memory_backend.add_message(queue_name, n)
        assert await asyncio.wait_for(finished.get(), SOON) == ("c", n)

    # Then all of them went to the idle worker
    assert (a.seen, b.seen, c.seen) == (["block"], ["block"], [0, 1, 2, 3, 4])
    a.release.set()
    b.release.set()
    await run_until_idle(pool, memory_backend, queue_name)


async def test_random_uses_every_worker(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given four workers and 200 messages
    workers = [RecordingWorker() for _ in range(4)]
    pool = make_pool(*workers, strategy=LoadBalancingStrategy.RANDOM)
    for n in range(200):
        await memory_backend.add_message(queue_name, n)

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then every worker got some (all miss with probability ~1e-25), and none was lost
    assert all(w.payloads for w in workers)
    assert sorted(p for w in workers for p in w.payloads) == list(range(200))


@pytest.mark.parametrize(
    ("in_flight", "picked"), [([0, 0, 0], 0), ([1, 0, 0], 1), ([2, 1, 1], 1), ([3, 2, 0], 2)]
)
def test_least_loaded_picks_the_fewest_in_flight_and_ties_go_to_the_earliest(
    in_flight: list[int], picked: int
) -> None:
    assert make_picker(LoadBalancingStrategy.LEAST_LOADED, in_flight)() == picked


# -- the concurrency limit --------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 50])
async def test_a_burst_never_runs_more_messages_at_once_than_the_limit(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str, limit: int
) -> None:
    # Given a burst of 1,000 messages, a broker prefetch far above the limit,
    # and workers that hold every message until released
    gauge = Gauge(limit)
    pool = make_pool(
        *(GaugedWorker(gauge) for _ in range(3)), concurrency_limit=limit, prefetch=1000
    )
    for n in range(1000):
        await memory_backend.add_message(queue_name, n)

    # When the pool fills up
    await pool.start(memory_backend)
    await asyncio.wait_for(gauge.full.wait(), SOON)

    # Then exactly `limit` run, and intake holds back the rest (one waits for a slot)
    assert gauge.live == pool.in_flight == limit
    assert len(memory_backend.messages(queue_name)) == 1000 - limit - 1

    # When they are released, the whole burst runs through
    gauge.release.set()
    await run_until_idle(pool, memory_backend, queue_name)

    # Then the limit was reached and never exceeded
    assert gauge.max == limit
    assert gauge.done == pool.processed == 1000


# -- the middleware onion ---------------------------------------------------------------


def tracing_layer(name: str, log: list[str]) -> Any:
    async def layer(message: Message[Any], call_next: CallNext) -> None:
        log.append(f"{name} in")
        try:
            await call_next(message)
        finally:
            log.append(f"{name} out")

    return layer


class LoggingWorker(Worker[Any]):
    def __init__(self, log: list[str], *, fail: bool = False) -> None:
        super().__init__()
        self.log = log
        self.fail = fail

    async def process(self, message: Message[Any]) -> None:
        self.log.append("worker")
        if self.fail:
            raise RuntimeError("worker failed")


@pytest.mark.parametrize("fail", [False, True])
async def test_middleware_runs_outermost_first_on_the_way_in_and_last_on_the_way_out(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str, fail: bool
) -> None:
    # Given three layers listed outermost first
    log: list[str] = []
    layers = [tracing_layer(name, log) for name in ("outer", "middle", "inner")]
    pool = make_pool(LoggingWorker(log, fail=fail), middleware=[AckNackMiddleware(), *layers])
    await memory_backend.add_message(queue_name, "hello")

    # When
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=fail)

    # Then, whether the worker succeeds or fails
    assert log == [
        "outer in",
        "middle in",
        "inner in",
        "worker",
        "inner out",
        "middle out",
        "outer out",
    ]


class HookedLayer:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        await call_next(message)

    async def startup(self) -> None:
        self.log.append(f"{self.name} startup")

    async def shutdown(self) -> None:
        self.log.append(f"{self.name} shutdown")


async def test_middleware_hooks_start_outermost_first_and_stop_innermost_first(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given
    log: list[str] = []
    pool = make_pool(
        RecordingWorker(), middleware=[HookedLayer("outer", log), HookedLayer("inner", log)]
    )

    # When
    await pool.start(memory_backend)
    await pool.shutdown(timeout=SOON)

    # Then
    assert log == ["outer startup", "inner startup", "inner shutdown", "outer shutdown"]


# -- the pool as the last safety net ----------------------------------------------------


async def test_without_middleware_a_success_is_acked_by_the_pool(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    worker = RecordingWorker()
    pool = make_pool(worker, middleware=[])
    await memory_backend.add_message(queue_name, "hi")

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then
    assert worker.messages[0].settled
    assert (pool.processed, pool.failed) == (1, 0)


@pytest.mark.parametrize(
    ("policy", "in_dlq", "in_queue"),
    [(AckPolicy.DEAD_LETTER, 1, 0), (AckPolicy.REJECT, 0, 0)],
)
async def test_without_middleware_a_failure_is_settled_by_the_pool_policy_with_a_warning(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
    policy: AckPolicy,
    in_dlq: int,
    in_queue: int,
) -> None:
    # Given a failing worker and no middleware
    pool = make_pool(LoggingWorker([], fail=True), middleware=[], on_unsettled_failure=policy)
    await memory_backend.add_message(queue_name, "hi")

    # When
    with caplog.at_level(logging.WARNING, logger="foxwork.pool"):
        await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then
    assert len(memory_backend.dead_letters(queue_name)) == in_dlq
    assert len(memory_backend.messages(queue_name)) == in_queue
    assert pool.failed == 1
    assert any("no middleware settled it" in r.getMessage() for r in caplog.records)


# -- graceful shutdown ------------------------------------------------------------------


class DrainSignal:
    """A pass-through layer whose shutdown hook tells workers the pool started draining."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        await call_next(message)

    async def shutdown(self) -> None:
        self.draining.set()


class ShutdownWorker(Worker[Any]):
    """Messages "finish-*" complete once the pool drains; "hang-*" ones never do."""

    def __init__(self, drain: DrainSignal, expected: int) -> None:
        super().__init__()
        self.drain = drain
        self.expected = expected
        self.started: list[str] = []
        self.completed: list[str] = []
        self.all_started = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.started.append(message.payload)
        if len(self.started) == self.expected:
            self.all_started.set()
        if message.payload.startswith("hang"):
            await asyncio.Event().wait()
        await self.drain.draining.wait()
        self.completed.append(message.payload)


async def test_shutdown_finishes_in_flight_work_and_puts_the_rest_back_in_the_queue(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given four messages in flight (two finish, two hang) and three more queued,
    # one of which the consumer already took and is waiting for a free slot
    drain = DrainSignal()
    worker = ShutdownWorker(drain, expected=4)
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), drain], concurrency_limit=4, prefetch=8
    )
    payloads = ["finish-1", "finish-2", "hang-1", "hang-2", "later-1", "later-2", "later-3"]
    for payload in payloads:
        await memory_backend.add_message(queue_name, payload)
    await pool.start(memory_backend)
    await asyncio.wait_for(worker.all_started.wait(), SOON)

    # When
    report = await pool.shutdown(timeout=0.05)

    # Then the two that could finish did, the two that hung were nacked back
    assert report == ShutdownReport(finished=2, requeued=2)
    assert sorted(worker.completed) == ["finish-1", "finish-2"]
    assert pool.state is PoolState.STOPPED
    # and every message not finished is back in the queue, nothing unacked or lost
    back = {m.body.decode().strip('"'): m for m in memory_backend.messages(queue_name)}
    assert sorted(back) == ["hang-1", "hang-2", "later-1", "later-2", "later-3"]
    assert memory_backend.depth(queue_name) == 5
    assert back["hang-1"].redelivered and back["hang-2"].redelivered
    assert not back["later-2"].redelivered and not back["later-3"].redelivered
    assert sorted(worker.started) == ["finish-1", "finish-2", "hang-1", "hang-2"]
    assert memory_backend.dead_letters(queue_name) == []


async def test_shutdown_with_nothing_in_flight_reports_nothing(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a started, idle pool
    pool = make_pool(RecordingWorker())
    await pool.start(memory_backend)

    # When
    report = await pool.shutdown(timeout=SOON)

    # Then
    assert report == ShutdownReport(finished=0, requeued=0)
    assert pool.state is PoolState.STOPPED


async def test_a_delivery_racing_with_shutdown_goes_straight_back_to_its_queue(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a pool draining while one message is still in flight
    drain = DrainSignal()
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    worker = GateWorker("w", finished)
    pool = make_pool(worker, middleware=[drain])
    await memory_backend.add_message(queue_name, "block")
    await pool.start(memory_backend)
    await asyncio.wait_for(worker.blocked.wait(), SOON)
    stopping = asyncio.create_task(pool.shutdown(timeout=SOON))
    await asyncio.wait_for(drain.draining.wait(), SOON)
    assert pool.state is PoolState.DRAINING

    # When a late delivery is dispatched
    settler = RecordingSettler()
    await pool.dispatch(make_message(settler=settler))

    # Then it is nacked back at once, and the in-flight one still finishes
    assert settler.calls == [("nack", True)]
    worker.release.set()
    assert await stopping == ShutdownReport(finished=1, requeued=0)


async def test_shutdown_twice_returns_the_same_report(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given
    pool = make_pool(RecordingWorker())
    await pool.start(memory_backend)

    # When
    first, second = await asyncio.gather(pool.shutdown(), pool.shutdown())

    # Then
    assert first == second == await pool.shutdown()


async def test_run_returns_once_shutdown_is_called(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a running pool that processed a message
    worker = RecordingWorker()
    pool = make_pool(worker)
    await memory_backend.add_message(queue_name, 1)
    running = asyncio.create_task(pool.run(memory_backend))
    await memory_backend.join(queue_name, timeout=SOON)

    # When
    await pool.shutdown()

    # Then
    await asyncio.wait_for(running, SOON)
    assert worker.payloads == [1]
    assert pool.state is PoolState.STOPPED


async def test_cancelling_run_shuts_the_pool_down(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a running pool that processed a message
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    pool = make_pool(GateWorker("w", finished))
    await memory_backend.add_message(queue_name, "hello")
    running = asyncio.create_task(pool.run(memory_backend))
    assert await asyncio.wait_for(finished.get(), SOON) == ("w", "hello")

    # When
    running.cancel()

    # Then
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pool.state is PoolState.STOPPED


# -- lifecycle errors -------------------------------------------------------------------


async def test_running_a_pool_twice_is_refused(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given
    pool = make_pool(RecordingWorker(), name="orders")
    await pool.start(memory_backend)

    # When / Then
    with pytest.raises(PoolStateError, match="'orders' is already running"):
        await pool.start(memory_backend)
    with pytest.raises(PoolStateError, match="already running"):
        await pool.run(memory_backend)
    assert pool.state is PoolState.RUNNING


async def test_a_stopped_pool_cannot_run_again(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given
    pool = make_pool(RecordingWorker())
    await pool.start(memory_backend)
    await pool.shutdown()

    # When / Then
    with pytest.raises(PoolStateError, match="a pool runs once; build a new one"):
        await pool.start(memory_backend)


@pytest.mark.parametrize("started", [False, True])
async def test_dispatch_and_try_dispatch_need_a_running_pool(
    make_pool: PoolFactory, memory_backend: MemoryBackend, started: bool
) -> None:
    # Given a pool never started, or started and shut down
    pool = make_pool(RecordingWorker())
    if started:
        await pool.start(memory_backend)
    await pool.shutdown()

    # When / Then dispatch refuses with an error
    with pytest.raises(PoolStateError, match="dispatch\\(\\) needs a running pool"):
        await pool.dispatch(make_message())
    # and try_dispatch refuses, taking nothing
    offered = make_message()
    assert not pool.try_dispatch(offered)
    assert offered.worker is None and not offered.settled and pool.received == 0


async def test_a_pool_without_any_queue_is_refused_and_stays_startable(
    memory_backend: MemoryBackend,
) -> None:
    # Given a pool naming no queue, on a backend configured with none
    pool = WorkerPool(workers=[RecordingWorker()], name="orders")

    # When / Then
    with pytest.raises(ConfigurationError, match="no queue to consume: pass queues"):
        await pool.start(memory_backend)
    assert pool.state is PoolState.CREATED

    # And it can still be started with a queue
    await pool.start(memory_backend, queues=["orders"])
    assert pool.health()["consuming"] == ["orders"]
    await pool.shutdown()


async def test_start_connects_a_backend_that_is_not_connected_yet(
    make_pool: PoolFactory, queue_name: str
) -> None:
    # Given
    backend = MemoryBackend()
    pool = make_pool(RecordingWorker())

    # When
    await pool.start(backend)

    # Then
    assert backend.is_connected
    await pool.shutdown()
    await backend.close()


# -- health -----------------------------------------------------------------------------


async def test_health_reports_name_state_workers_load_and_backend(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a running pool with one message in flight on worker "a"
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    a, b = GateWorker("a", finished), GateWorker("b", finished)
    pool = make_pool(a, b, name="orders", concurrency_limit=4)
    await memory_backend.add_message(queue_name, "block")
    await pool.start(memory_backend)
    await asyncio.wait_for(a.blocked.wait(), SOON)

    # When
    health = pool.health()

    # Then
    assert json.loads(json.dumps(health)) == health
    assert health["name"] == "orders"
    assert health["state"] == "running" and health["running"] is True
    assert health["in_flight"] == 1
    assert health["concurrency_limit"] == 4
    assert health["received"] == 1
    assert [w["id"] for w in health["workers"]] == ["a", "b"]
    assert [w["in_flight"] for w in health["workers"]] == [1, 0]
    assert health["queues"] == health["consuming"] == [queue_name]
    assert health["backend"]["type"] == "MemoryBackend"
    assert health["backend"]["connected"] is True

    # When it stops
    a.release.set()
    await memory_backend.join(queue_name, timeout=SOON)
    await pool.shutdown()
    health = pool.health()

    # Then
    assert health["state"] == "stopped" and health["running"] is False
    assert health["in_flight"] == 0 and health["processed"] == 1
    assert health["consuming"] == []


def test_health_before_start_has_no_backend() -> None:
    pool = WorkerPool(workers=[RecordingWorker()])
    health = pool.health()
    assert health["state"] == "created" and health["running"] is False
    assert health["backend"] is None


def test_repr_names_the_pool_and_its_state() -> None:
    pool = WorkerPool(workers=[RecordingWorker()], name="orders")
    assert "name='orders'" in repr(pool) and "state=created" in repr(pool)


# -- configuration ----------------------------------------------------------------------


class NoProcess(Worker[Any]):
    pass


class NotInitialised(Worker[Any]):
    def __init__(self) -> None:
        pass

    async def process(self, message: Message[Any]) -> None:
        pass


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"workers": []}, "at least one worker"),
        ({"workers": [object()]}, "is not a foxwork.Worker: subclass Worker"),
        ({"workers": [RecordingWorker]}, "is not a foxwork.Worker"),
        ({"concurrency_limit": 0}, "concurrency_limit=0 must be at least 1"),
        ({"concurrency_limit": -3}, "concurrency_limit=-3 must be at least 1"),
        ({"concurrency_limit": 2.5}, "concurrency_limit=2.5 must be an int"),
        ({"concurrency_limit": "10"}, "concurrency_limit='10' must be an int"),
        ({"concurrency_limit": True}, "concurrency_limit=True must be an int"),
        ({"middleware": [42]}, "middleware\\[0\\] = 42 is not callable"),
        ({"middleware": [AckNackMiddleware(), "retry"]}, "middleware\\[1\\] = 'retry'"),
        ({"middleware": [AckNackMiddleware]}, "did you pass the class instead of an instance"),
        ({"strategy": "round_robin"}, "must be a LoadBalancingStrategy member"),
        ({"prefetch": 0}, "prefetch=0 must be an int of at least 1"),
        ({"prefetch": "10"}, "prefetch='10' must be an int of at least 1"),
        ({"prefetch": 2.5}, "prefetch=2.5 must be an int of at least 1"),
        ({"prefetch": True}, "prefetch=True must be an int of at least 1"),
        ({"on_unsettled_failure": "reject"}, "on_unsettled_failure='reject'.*AckPolicy member"),
        ({"queues": [""]}, "queues must be non-empty strings"),
    ],
)
def test_bad_pool_arguments_are_refused_at_build_time_saying_what_to_change(
    kwargs: dict[str, Any], names: str
) -> None:
    # Given valid arguments with one bad value
    arguments: dict[str, Any] = {"workers": [RecordingWorker()], **kwargs}

    # When / Then
    with pytest.raises(ConfigurationError, match=names):
        WorkerPool(**arguments)


def test_pools_with_the_same_settings_are_distinct_pools() -> None:
    # Given two pools built from the same settings
    worker = RecordingWorker()
    first = WorkerPool(workers=[worker], queues=["orders"])
    second = WorkerPool(workers=[worker], queues=["orders"])

    # Then each is its own pool, with its own state: equal only to itself
    assert first == first
    assert first != second


def test_pools_are_usable_as_dict_keys_and_set_members_whatever_their_state() -> None:
    # Given two pools with the same settings, keyed by pool
    worker = RecordingWorker()
    first = WorkerPool(workers=[worker])
    second = WorkerPool(workers=[worker])
    names = {first: "first", second: "second"}

    # When one of them handles a message (its counters change)
    first.received += 1

    # Then both keys still find their own value, and a set holds both
    assert names[first] == "first"
    assert names[second] == "second"
    assert len({first, second, first}) == 2
    assert first in {first} and second not in {first}


def test_a_worker_without_process_is_refused_when_created() -> None:
    with pytest.raises(ConfigurationError, match="does not implement process\\(\\): define"):
        NoProcess()


def test_a_worker_that_skipped_super_init_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("call super().__init__()")):
        WorkerPool(workers=[NotInitialised()])


def test_worker_ids_must_be_unique() -> None:
    with pytest.raises(ConfigurationError, match="worker ids must be unique"):
        WorkerPool(workers=[RecordingWorker("a"), RecordingWorker("a")])


def test_configuration_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        WorkerPool(workers=[])


async def test_try_dispatch_starts_a_message_at_once_while_a_slot_is_free_and_refuses_when_full(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given a running pool with one slot
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    worker = GateWorker("w", finished)
    pool = make_pool(worker, concurrency_limit=1)
    await pool.start(memory_backend)

    # When a message is offered, then another one while the first holds the slot
    first = make_message(b'"block"')
    taken = pool.try_dispatch(first)
    await asyncio.wait_for(worker.blocked.wait(), SOON)
    second = make_message(b'"next"')
    refused = pool.try_dispatch(second)

    # Then the first was taken and runs; the second was refused and left untouched
    assert taken and first.worker is worker
    assert not refused and second.worker is None and not second.settled
    assert pool.in_flight == 1 and pool.received == 1
    worker.release.set()
    assert await asyncio.wait_for(finished.get(), SOON) == ("w", "block")


async def test_shutdown_flushes_the_backend_once_the_messages_in_flight_are_done(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a backend that sends settlements a moment later (as RabbitMQ's coalesced acks),
    # and a pool with one message in flight
    flushed_with_in_flight: list[int] = []
    original_flush = memory_backend.flush

    async def flush(timeout: float | None = None) -> bool:
        flushed_with_in_flight.append(pool.in_flight)
        return await original_flush(timeout)

    memory_backend.flush = flush  # type: ignore[method-assign]
    finished: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    worker = GateWorker("w", finished)
    pool = make_pool(worker)
    await memory_backend.add_message(queue_name, "block")
    await pool.start(memory_backend)
    await asyncio.wait_for(worker.blocked.wait(), SOON)

    # When it shuts down and the message finishes meanwhile
    stopping = asyncio.create_task(pool.shutdown(timeout=SOON))
    await asyncio.sleep(0)
    assert flushed_with_in_flight == []
    worker.release.set()
    await stopping

    # Then the backend was flushed once, after the message was done
    assert flushed_with_in_flight == [0]
