"""CircuitBreakerMiddleware: opens on consecutive failures, holds messages, probes, closes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from foxwork import (
    ConfigurationError,
    DeadLetter,
    Drop,
    Message,
    MessageProperties,
    PoisonMessage,
    SettleState,
    Worker,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitBreakerMiddleware,
    CircuitState,
    RetryMiddleware,
)
from foxwork.middleware.base import holds_failed_probe
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import WAIT, RecordingSettler, eventually, make_message, raising, succeed

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Unavailable(Exception):
    """The dependency is down."""


async def trip(breaker: CircuitBreakerMiddleware) -> None:
    """Fail `failure_threshold` messages through `breaker`, opening it."""
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Unavailable):
            await breaker(make_message(), raising(Unavailable()))


class Gate:
    """A `call_next` that records who entered and blocks until opened."""

    def __init__(self, error: Exception | None = None) -> None:
        self.entered: list[Message[Any]] = []
        self.opened = asyncio.Event()
        self.error = error

    async def __call__(self, message: Message[Any]) -> None:
        self.entered.append(message)
        await self.opened.wait()
        if self.error is not None:
            raise self.error


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", 2.5),
        ("recovery_timeout", 0),
        ("recovery_timeout", -1.0),
        ("recovery_timeout", True),
        ("recovery_timeout", "30"),
        ("failure_threshold", True),
        ("half_open_max_requests", True),
        ("max_hold", True),
        ("half_open_max_requests", 0),
        ("is_failure", "yes"),
        ("on_state_change", 42),
        ("max_hold", 0),
        ("max_hold", -1.0),
        ("max_hold", "25m"),
    ],
)
def test_an_invalid_argument_is_refused_naming_it_and_its_value(
    argument: str, value: object
) -> None:
    kwargs: dict[str, Any] = {argument: value}
    with pytest.raises(ConfigurationError) as caught:
        CircuitBreakerMiddleware(**kwargs)
    assert f"{argument}={value!r}" in str(caught.value)


def test_a_new_breaker_is_closed_with_no_failures() -> None:
    breaker = CircuitBreakerMiddleware()
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0
    assert list(breaker.transitions) == []


# -- CLOSED ------------------------------------------------------------------------------


async def test_consecutive_failures_up_to_the_threshold_open_the_circuit() -> None:
    # Given
    breaker = CircuitBreakerMiddleware(failure_threshold=3, recovery_timeout=60)

    # When two failures happen, then a third
    for _ in range(2):
        with pytest.raises(Unavailable):
            await breaker(make_message(), raising(Unavailable()))
    state_after_two = breaker.state
    with pytest.raises(Unavailable):
        await breaker(make_message(), raising(Unavailable()))

    # Then
    assert state_after_two is CLOSED
    assert breaker.state is OPEN
    assert [(t.old, t.new) for t in breaker.transitions] == [(CLOSED, OPEN)]


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    # Given
    breaker = CircuitBreakerMiddleware(failure_threshold=2, recovery_timeout=60)
    with pytest.raises(Unavailable):
        await breaker(make_message(), raising(Unavailable()))

    # When
    await breaker(make_message(), succeed)
    with pytest.raises(Unavailable):
        await breaker(make_message(), raising(Unavailable()))

    # Then
    assert breaker.failure_count == 1
    assert breaker.state is CLOSED


@pytest.mark.parametrize(
    "error", [Drop("not for us"), DeadLetter("unknown SKU"), PoisonMessage("not JSON")]
)
async def test_bad_messages_say_nothing_about_the_dependency_and_are_not_counted(
    error: Exception,
) -> None:
    # Given
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)

    # When
    with pytest.raises(type(error)):
        await breaker(make_message(), raising(error))

    # Then the failure passes through unchanged, and the circuit stays closed
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


async def test_a_custom_is_failure_decides_what_counts() -> None:
    # Given a breaker that only counts timeouts
    breaker = CircuitBreakerMiddleware(
        failure_threshold=1, recovery_timeout=60, is_failure=lambda e: isinstance(e, TimeoutError)
    )

    # When
    with pytest.raises(ValueError):
        await breaker(make_message(), raising(ValueError("bad input")))
    state_after_value_error = breaker.state
    with pytest.raises(TimeoutError):
        await breaker(make_message(), raising(TimeoutError()))

    # Then
    assert state_after_value_error is CLOSED
    assert breaker.state is OPEN


async def test_the_breaker_does_not_settle_a_failure_it_passes_on() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)

    # When
    with pytest.raises(Unavailable):
        await breaker(message, raising(Unavailable()))

    # Then settling is left to the outer layers
    assert message.state is SettleState.PENDING
    assert settler.calls == []


# -- OPEN --------------------------------------------------------------------------------


async def test_while_open_a_message_waits_unprocessed_and_unsettled() -> None:
    # Given an open circuit
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)
    await trip(breaker)
    gate = Gate()
    message = make_message()

    # When a message arrives
    task = asyncio.create_task(breaker(message, gate))
    await eventually(lambda: breaker.held == 1)

    # Then it is held: not processed, not settled
    assert gate.entered == []
    assert message.state is SettleState.PENDING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_a_held_message_propagates_and_releases_it() -> None:
    # Given a message held by an open circuit
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)
    await trip(breaker)
    task = asyncio.create_task(breaker(make_message(), succeed))
    await eventually(lambda: breaker.held == 1)

    # When its task is cancelled (the pool's shutdown deadline)
    task.cancel()

    # Then
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.held == 0
    assert breaker.state is OPEN


async def test_after_the_recovery_timeout_a_held_message_runs_as_a_probe_and_closes_it() -> None:
    # Given an open circuit with a held message
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    await trip(breaker)
    gate = Gate()
    task = asyncio.create_task(breaker(make_message(), gate))

    # When the recovery timeout passes
    await eventually(lambda: len(gate.entered) == 1)

    # Then the message runs as a probe while HALF_OPEN, and its success closes the circuit
    assert breaker.state is HALF_OPEN
    gate.opened.set()
    await task
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0
    assert [(t.old, t.new) for t in breaker.transitions] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


async def test_the_circuit_half_opens_on_time_even_with_no_message_waiting() -> None:
    # Given
    changed = asyncio.Event()
    breaker = CircuitBreakerMiddleware(
        failure_threshold=1,
        recovery_timeout=0.05,
        on_state_change=lambda old, new: changed.set() if new is HALF_OPEN else None,
    )

    # When
    await trip(breaker)
    async with asyncio.timeout(WAIT):
        await changed.wait()

    # Then the state (for metrics) is current without any traffic
    assert breaker.state is HALF_OPEN


# -- HALF_OPEN ---------------------------------------------------------------------------


async def test_half_open_runs_at_most_half_open_max_requests_probes_at_once() -> None:
    # Given an open circuit allowing two probes at once, and five held messages
    breaker = CircuitBreakerMiddleware(
        failure_threshold=1, recovery_timeout=0.05, half_open_max_requests=2
    )
    await trip(breaker)
    gate = Gate()
    messages = [make_message() for _ in range(5)]
    tasks = [asyncio.create_task(breaker(m, gate)) for m in messages]

    # When the circuit half-opens
    await eventually(lambda: len(gate.entered) == 2)
    await asyncio.sleep(0)  # give a third message every chance to slip through

    # Then the two oldest held messages probe and the rest wait
    assert gate.entered == messages[:2]
    assert breaker.held == 3

    # and once the probes succeed the circuit closes and lets every message through
    gate.opened.set()
    await asyncio.gather(*tasks)
    assert breaker.state is CLOSED
    assert gate.entered[2:] == messages[2:]


async def test_a_failed_probe_reopens_the_circuit_and_is_held_again_unsettled() -> None:
    # Given a dependency that fails the first probe and then recovers
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    await trip(breaker)
    settler = RecordingSettler()
    message = make_message(settler=settler)
    calls = 0

    async def dependency(msg: Message[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Unavailable("still down")

    # When
    await asyncio.wait_for(breaker(message, dependency), WAIT)

    # Then the failed probe was neither re-raised nor settled, and ran again as the next probe
    assert calls == 2
    assert settler.calls == []
    assert [(t.old, t.new) for t in breaker.transitions] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


async def test_a_failed_probe_waits_behind_the_messages_held_before_it() -> None:
    # Given two held messages and a dependency that fails the first probe only
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    await trip(breaker)
    first, second = make_message(), make_message()
    order: list[Message[Any]] = []

    async def dependency(msg: Message[Any]) -> None:
        order.append(msg)
        if len(order) == 1:
            raise Unavailable("still down")

    # When
    await asyncio.wait_for(
        asyncio.gather(breaker(first, dependency), breaker(second, dependency)), WAIT
    )

    # Then the failed probe went to the back: the second message probed next
    assert order == [first, second, first]


async def test_a_probe_that_is_a_bad_message_neither_closes_nor_reopens_the_circuit() -> None:
    # Given a half-open circuit
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    await trip(breaker)
    gate = Gate(error=DeadLetter("unknown SKU"))
    task = asyncio.create_task(breaker(make_message(), gate))
    await eventually(lambda: len(gate.entered) == 1)

    # When the probe fails as a bad message
    gate.opened.set()
    with pytest.raises(DeadLetter):
        await task

    # Then the circuit stays half-open and the next message probes
    assert breaker.state is HALF_OPEN
    await breaker(make_message(), succeed)
    assert breaker.state is CLOSED


async def test_a_retry_layer_inside_leaves_a_failed_probe_to_the_breaker() -> None:
    # Given a half-open circuit with a retry layer inside it
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    await trip(breaker)
    retry = RetryMiddleware(max_attempts=5)
    seen_as_probe: list[bool] = []
    settler = RecordingSettler()
    calls = 0

    async def dependency(msg: Message[Any]) -> None:
        nonlocal calls
        calls += 1
        seen_as_probe.append(holds_failed_probe(Unavailable()))
        if calls == 1:
            raise Unavailable("still down")

    # When
    await asyncio.wait_for(
        breaker(make_message(settler=settler), lambda m: retry(m, dependency)), WAIT
    )

    # Then no retry copy was published: the failed probe cost no attempt
    assert seen_as_probe == [True, True]
    assert settler.calls == []
    assert not holds_failed_probe(Unavailable())


async def test_a_closed_breaker_inside_a_probe_clears_the_probe_for_the_layers_inside_it() -> None:
    # Given a half-open outer breaker whose probe runs through a closed inner breaker
    outer = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.05)
    inner = CircuitBreakerMiddleware(failure_threshold=5)
    await trip(outer)
    seen: list[tuple[str, bool]] = []

    async def between(message: Message[Any]) -> None:
        seen.append(("between", holds_failed_probe(Unavailable())))
        await inner(message, dependency)
        seen.append(("after", holds_failed_probe(Unavailable())))

    async def dependency(message: Message[Any]) -> None:
        seen.append(("inside", holds_failed_probe(Unavailable())))

    # When the probe runs
    await asyncio.wait_for(outer(make_message(), between), WAIT)

    # Then only the layers between the breakers run the outer probe; inside the closed
    # inner breaker nothing is a probe, and the outer probe is back after it
    assert seen == [("between", True), ("inside", False), ("after", True)]
    assert not holds_failed_probe(Unavailable())


# -- observation -------------------------------------------------------------------------


async def test_listeners_hear_every_transition_and_a_failing_listener_is_contained() -> None:
    # Given
    heard: list[tuple[CircuitState, CircuitState]] = []
    also_heard: list[tuple[CircuitState, CircuitState]] = []

    def broken(old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreakerMiddleware(
        failure_threshold=1,
        recovery_timeout=0.05,
        on_state_change=lambda old, new: heard.append((old, new)),
    )
    breaker.add_listener(broken)
    breaker.add_listener(lambda old, new: also_heard.append((old, new)))

    # When the circuit opens, half-opens and closes
    await trip(breaker)
    await asyncio.wait_for(breaker(make_message(), succeed), WAIT)

    # Then
    expected = [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert heard == expected
    assert also_heard == expected


async def test_a_removed_listener_is_not_called() -> None:
    heard: list[CircuitState] = []

    def listener(old: CircuitState, new: CircuitState) -> None:
        heard.append(new)

    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)
    breaker.add_listener(listener)
    breaker.remove_listener(listener)

    await trip(breaker)

    assert heard == []


# -- end to end on MemoryBackend ---------------------------------------------------------


class FlakyWorker(Worker[Any]):
    """Fails its first `failures` calls (the dependency is down), then succeeds."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0
        self.done: list[Any] = []
        self.retry_headers: list[Any] = []

    async def process(self, message: Message[Any]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable(f"dependency down (call {self.calls})")
        self.done.append(message.payload)
        self.retry_headers.append(message.headers.get("x-retry-attempt"))


@pytest.mark.parametrize(
    "order",
    ["breaker outside retry", "retry outside breaker"],
    ids=["breaker-retry", "retry-breaker"],
)
async def test_held_messages_and_failed_probes_consume_no_retry_attempts(
    order: str, make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a dependency down for four calls, a breaker that opens after two failures, and a
    # retry budget of two attempts per message (one more counted failure would dead-letter)
    worker = FlakyWorker(failures=4)
    breaker = CircuitBreakerMiddleware(failure_threshold=2, recovery_timeout=0.05)
    retry = RetryMiddleware(max_attempts=2, initial_backoff=0.01, jitter=0)
    inner = [breaker, retry] if order == "breaker outside retry" else [retry, breaker]
    pool = make_pool(worker, middleware=[AckNackMiddleware(), *inner], concurrency_limit=1)
    for n in range(5):
        await memory_backend.add_message(queue_name, {"n": n})

    # When
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the two failures in CLOSED were retried once each, the two failed probes cost
    # nothing, and every message was processed: none dead-lettered
    assert memory_backend.dead_letters(queue_name) == []
    assert sorted(p["n"] for p in worker.done) == [0, 1, 2, 3, 4]
    assert memory_backend.retried[queue_name] == 2
    assert sorted(h for h in worker.retry_headers if h is not None) == [1, 1]
    assert [t.new for t in breaker.transitions] == [
        *(OPEN, HALF_OPEN),  # two failures in CLOSED
        *(OPEN, HALF_OPEN),  # failed probe (call 3)
        *(OPEN, HALF_OPEN),  # failed probe (call 4)
        CLOSED,  # call 5
    ]


async def test_an_open_circuit_pauses_intake_and_shutdown_requeues_the_held_messages(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a dependency that is down and a circuit that opens on the first failure
    worker = FlakyWorker(failures=10**9)
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)
    pool = make_pool(worker, middleware=[AckNackMiddleware(), breaker], concurrency_limit=2)
    for n in range(10):
        await memory_backend.add_message(queue_name, {"n": n})

    # When the circuit opens
    await pool.start(memory_backend)
    await eventually(lambda: breaker.held == 2)

    # Then the held messages keep the two slots, the rest stay in the queue untouched
    assert worker.calls == 1
    assert len(memory_backend.dead_letters(queue_name)) == 1
    assert len(memory_backend.messages(queue_name)) == 7

    # and a shutdown puts the held messages back in the queue at once: it does not wait
    # for its (long) deadline, and no attempt is used up
    report = await asyncio.wait_for(pool.shutdown(timeout=3600), timeout=WAIT)
    assert report.requeued == 0
    assert breaker.held == 0
    assert len(memory_backend.messages(queue_name)) == 9
    assert sum(m.redelivered for m in memory_backend.messages(queue_name)) == 2
    assert worker.calls == 1


def test_the_repr_shows_the_configuration() -> None:
    assert repr(CircuitBreakerMiddleware()) == (
        "CircuitBreakerMiddleware(failure_threshold=5, recovery_timeout=30.0, "
        "half_open_max_requests=1)"
    )


# -- shared by two pools -------------------------------------------------------------------


class Dependency:
    """A dependency shared by several workers: down until `up()`."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    def up(self) -> None:
        self.down = False


class DependentWorker(Worker[Any]):
    """Calls the shared dependency; records the payloads it processed."""

    def __init__(self, dependency: Dependency) -> None:
        super().__init__()
        self.dependency = dependency
        self.done: list[Any] = []

    async def process(self, message: Message[Any]) -> None:
        self.dependency.calls += 1
        if self.dependency.down:
            raise Unavailable("dependency down")
        self.done.append(message.payload)


class DeliveryCounter:
    """A middleware counting the deliveries that enter the chain."""

    def __init__(self) -> None:
        self.deliveries = 0

    async def __call__(self, message: Message[Any], call_next: Any) -> None:
        self.deliveries += 1
        await call_next(message)


async def test_one_pool_shutting_down_leaves_the_other_pools_held_messages_held(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a breaker shared by two pools on two queues, opened by pool A, with messages of
    # both pools held
    dependency = Dependency()
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.02)
    queue_a, queue_b = f"{queue_name}-a", f"{queue_name}-b"
    counter_b = DeliveryCounter()
    worker_b = DependentWorker(dependency)
    pool_a = make_pool(
        DependentWorker(dependency),
        middleware=[AckNackMiddleware(), breaker],
        concurrency_limit=2,
        queues=[queue_a],
        name="a",
    )
    pool_b = make_pool(
        worker_b,
        middleware=[AckNackMiddleware(), counter_b, breaker],
        concurrency_limit=2,
        queues=[queue_b],
        name="b",
    )
    for n in range(3):
        await memory_backend.add_message(queue_a, {"pool": "a", "n": n})
    for n in range(4):
        await memory_backend.add_message(queue_b, {"pool": "b", "n": n})
    await pool_a.start(memory_backend)
    await eventually(lambda: breaker.state is OPEN and breaker.held == 2)
    await pool_b.start(memory_backend)
    await eventually(lambda: counter_b.deliveries == 2)

    # When pool A shuts down (its held message goes back to its queue at once)
    report = await asyncio.wait_for(pool_a.shutdown(timeout=3600), timeout=WAIT)
    assert report.requeued == 0
    assert len(memory_backend.messages(queue_a)) == 2

    # and, a few probes later, the dependency recovers
    calls_at_shutdown = dependency.calls
    with contextlib.suppress(TimeoutError):
        await eventually(lambda: dependency.calls >= calls_at_shutdown + 2, timeout=2)
    dependency.up()
    with contextlib.suppress(TimeoutError):
        await memory_backend.join(queue_b, timeout=2)

    # Then pool B's messages were each delivered once (held, never nacked back in a loop),
    # none was dead-lettered, and every one was processed once the circuit closed
    assert counter_b.deliveries == 4
    assert memory_backend.dead_letters(queue_b) == []
    assert sorted(p["n"] for p in worker_b.done) == [0, 1, 2, 3]
    assert breaker.state is CLOSED


# -- max_hold ------------------------------------------------------------------------------


class FirstCallFails(Worker[Any]):
    """Fails its first call (which opens the circuit), then records what it processes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.processed: list[Message[Any]] = []

    async def process(self, message: Message[Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise Unavailable("dependency down")
        self.processed.append(message)


class DeliveryLog:
    """A middleware recording every delivery that enters the chain, by message id."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[Message[Any]]] = {}

    async def __call__(self, message: Message[Any], call_next: Any) -> None:
        self.deliveries.setdefault(message.id, []).append(message)
        await call_next(message)


async def test_a_message_held_past_max_hold_goes_back_to_its_queue_and_the_stale_copy_never_runs(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a circuit opened by a first failure, that half-opens only long after max_hold,
    # and a second message it holds
    worker = FirstCallFails()
    log = DeliveryLog()
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.3, max_hold=0.05)
    pool = make_pool(worker, middleware=[AckNackMiddleware(), log, breaker], concurrency_limit=1)
    await memory_backend.add_message(queue_name, {"n": 0}, MessageProperties(message_id="trips"))
    await memory_backend.add_message(queue_name, {"n": 1}, MessageProperties(message_id="held"))

    # When the circuit stays open past max_hold, then closes
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the held delivery went back to the queue (requeued: no retry copy, no dead
    # letter) and came back; only the copy delivered last reached the worker, once
    copies = log.deliveries["held"]
    assert len(copies) >= 2
    assert [c.state for c in copies[:-1]] == [SettleState.REQUEUED] * (len(copies) - 1)
    assert all(c.redelivered for c in copies[1:])
    assert worker.processed == [copies[-1]]
    assert copies[-1].state is SettleState.ACKED
    assert [m.properties.message_id for m in memory_backend.dead_letters(queue_name)] == ["trips"]
    assert memory_backend.retried[queue_name] == 0


async def test_max_hold_bounds_a_delivery_across_failed_probes(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a dependency that stays down and a circuit that probes far more often than
    # max_hold, so the held message keeps failing as a probe and being held again
    dependency = Dependency()
    log = DeliveryLog()
    breaker = CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=0.005, max_hold=0.1)
    pool = make_pool(
        DependentWorker(dependency),
        middleware=[AckNackMiddleware(), log, breaker],
        concurrency_limit=1,
    )
    await memory_backend.add_message(queue_name, {"n": 0}, MessageProperties(message_id="trips"))
    await memory_backend.add_message(queue_name, {"n": 1}, MessageProperties(message_id="held"))

    # When
    await pool.start(memory_backend)
    await eventually(lambda: len(log.deliveries.get("held", [])) >= 2)

    # Then the first delivery went back to its queue once max_hold had passed, however
    # many probes it failed in between, without a retry copy or a dead letter
    first = log.deliveries["held"][0]
    assert first.state is SettleState.REQUEUED
    assert dependency.calls > 2
    assert memory_backend.retried[queue_name] == 0
    assert len(memory_backend.dead_letters(queue_name)) == 1
