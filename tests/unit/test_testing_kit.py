"""foxwork.testing: TestHarness, VirtualClock, the MemoryBackend clock seam, and the pytest
plugin's fixtures as a user's test file sees them."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import pytest
from pydantic import BaseModel

from foxwork import DeadLetter, Drop, Message, PoisonMessage, PoolState, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.errors import ConfigurationError, RetryLater
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from foxwork.testing import TestHarness, VirtualClock, fresh_pool

pytest_plugins = ["pytester"]


class Order(BaseModel):
    sku: str
    qty: int


class OrderWorker(Worker[Order]):
    """Fails as its orders say: sku "BUG" raises KeyError, "FLAKY-n" fails n attempts."""

    payload_model = Order

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    async def process(self, message: Message[Order]) -> None:
        order = message.payload
        self.seen.append((order.sku, message.attempt))
        if order.sku == "BUG":
            raise KeyError("no such warehouse")
        if order.sku == "UNKNOWN":
            raise DeadLetter("unknown SKU")
        if order.sku == "SKIP":
            raise Drop("not ours")
        if order.sku.startswith("FLAKY-") and message.attempt <= int(order.sku[6:]):
            raise ConnectionError("inventory service timed out")
        if order.sku == "LATER" and message.attempt == 1:
            raise RetryLater(3600, "closed for the night")


def retrying(**kwargs: Any) -> list[Any]:
    settings: dict[str, Any] = {"initial_backoff": 30.0, "jitter": 0.0, **kwargs}
    return [AckNackMiddleware(), RetryMiddleware(**settings)]


#: A module-level pool, as `foxwork run module:pool` loads it.
POOL = WorkerPool(workers=[OrderWorker()], middleware=retrying(), queues=["orders"])


# -- running a module-level pool ------------------------------------------------------------


@pytest.mark.parametrize("run", [1, 2])
async def test_a_module_level_pool_runs_in_every_test(run: int):
    # Given the module-level pool (this test runs twice: a pool runs once, its copies don't)
    async with TestHarness(POOL) as harness:
        # When an order is published and the harness joins
        message_id = await harness.publish({"sku": "A-1", "qty": run})
        await harness.join()
        # Then it was processed by a running copy, and the module-level pool never started
        assert [(m.id, m.payload) for m in harness.processed("orders")] == [
            (message_id, Order(sku="A-1", qty=run))
        ]
        assert harness.pool is not POOL and harness.pool.state is PoolState.RUNNING
    assert harness.pool.state is PoolState.STOPPED
    assert POOL.state is PoolState.CREATED


def test_fresh_pool_copies_every_setting_and_keeps_the_instances():
    # Given a pool with settings of its own
    worker = OrderWorker()
    pool = WorkerPool(
        workers=[worker], middleware=retrying(), concurrency_limit=3, prefetch=7, name="shop"
    )
    # When it is copied
    copy = fresh_pool(pool)
    # Then the copy has its settings, workers and layers, and a state of its own
    assert (copy.concurrency_limit, copy.prefetch, copy.name) == (3, 7, "shop")
    assert copy.workers == (worker,) and copy.middleware == pool.middleware
    assert copy is not pool


async def test_workers_given_as_a_factory_are_new_in_each_harness():
    # Given a factory of workers
    made: list[OrderWorker] = []
    own = POOL.workers[0]
    assert isinstance(own, OrderWorker)
    seen_before = list(own.seen)

    def workers() -> list[OrderWorker]:
        made.append(OrderWorker())
        return made[-1:]

    for _ in range(2):
        async with TestHarness(POOL, workers=workers) as harness:
            await harness.publish({"sku": "A-1", "qty": 1})
            await harness.join()
    # Then each harness ran a worker of its own, and the pool's own worker saw nothing
    assert [w.seen for w in made] == [[("A-1", 1)], [("A-1", 1)]]
    assert own.seen == seen_before


@pytest.mark.parametrize("middleware", [None, []], ids=["standard chain", "bare pool"])
async def test_a_pool_with_the_default_or_no_middleware_runs_and_fails_fast(
    middleware: list[Any] | None,
):
    # Given a pool built without middleware= (the standard chain) or with none at all
    pool = WorkerPool(workers=[OrderWorker()], middleware=middleware, queues=["orders"])
    async with TestHarness(pool) as harness:
        await harness.publish({"sku": "A-1", "qty": 1})
        await harness.publish({"sku": "BUG", "qty": 1})
        # When it joins, then the worker's exception surfaces, whoever dead-lettered it
        with pytest.raises(KeyError):
            await harness.join()
        await harness.join()
        assert [m.payload.sku for m in harness.processed()] == ["A-1"]
        assert [d.payload["sku"] for d in harness.dead_letters("orders")] == ["BUG"]


# -- fail_fast ------------------------------------------------------------------------------


async def test_join_re_raises_the_workers_own_exception_with_its_traceback():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "BUG", "qty": 1})
        # When the message fails on every attempt
        with pytest.raises(KeyError, match="no such warehouse") as raised:
            await harness.join()
    # Then the exception is the one the worker raised, from its own line
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert frames[-1] == "process"
    assert raised.value is harness.failures[-1].exception
    # after its 5 attempts (4 retries, on virtual time), and a note says what became of it
    assert [f.attempt for f in harness.failures] == [1, 2, 3, 4, 5]
    assert "failed for good on attempt 5 (dead_lettered)" in str(raised.value.__notes__)


async def test_without_fail_fast_join_waits_and_the_failure_is_a_dead_letter():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "BUG", "qty": 1})
        await harness.join(fail_fast=False)
        [letter] = harness.dead_letters("orders")
        assert letter.payload == {"sku": "BUG", "qty": 1}
        assert letter.headers["x-exception-type"] == "builtins.KeyError"
        assert letter.headers["x-final-attempt"] == 5
        assert all(f.final for f in harness.failures[-1:])
        # and a later join does not raise what this one let pass
        await harness.publish({"sku": "A-1", "qty": 1})
        await harness.join()
        assert len(harness.processed()) == 1


async def test_when_several_messages_fail_the_first_is_raised_and_counts_the_others():
    async with TestHarness(POOL) as harness:
        for n in range(3):
            await harness.publish({"sku": "BUG", "qty": n})
        with pytest.raises(KeyError) as raised:
            await harness.join()
        assert "2 more message(s) failed too" in str(raised.value.__notes__)
        # each failure is raised once: the next join has nothing to report
        await harness.join()
        assert len(harness.dead_letters()) == 3


async def test_outcomes_the_worker_asked_for_are_not_raised_but_poison_is():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "UNKNOWN", "qty": 1})
        await harness.publish({"sku": "SKIP", "qty": 1})
        await harness.join()  # a deliberate DeadLetter and a Drop are outcomes
        assert [d.headers["x-failure-reason"] for d in harness.dead_letters()] == ["unknown SKU"]
        assert [m.payload.sku for m in harness.dropped("orders")] == ["SKIP"]
        assert harness.processed() == []
        # a payload that fails validation is an error in a test
        await harness.publish({"sku": "A-1"})
        with pytest.raises(PoisonMessage):
            await harness.join()


# -- virtual time ---------------------------------------------------------------------------


async def test_retries_run_on_virtual_time_with_their_attempts_and_delays():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "FLAKY-2", "qty": 1})
        # When join skips the delays
        await harness.join()
        # Then both retries ran, at the virtual times their backoff says
        assert [(r.attempt, r.delay, r.held, r.due) for r in harness.retries("orders")] == [
            (2, 30.0, 30.0, 30.0),
            (3, 60.0, 60.0, 90.0),
        ]
        assert harness.now == 90.0
        assert [m.attempt for m in harness.processed("orders")] == [3]


async def test_advance_releases_each_retry_at_its_due_time():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "FLAKY-2", "qty": 1})
        # When join leaves the delays alone
        await harness.join(skip_delays=False)
        # Then the first retry is pending, due in 30 virtual seconds
        [retry] = harness.retries()
        assert (retry.attempt, retry.due, retry.released) == (2, 30.0, False)
        await harness.advance(29.9)
        assert not retry.released and harness.processed() == []
        # and advancing past it runs it, and the retry it schedules (due at 90) too
        await harness.advance(60.1)
        assert harness.now == 90.0
        assert [r.released for r in harness.retries()] == [True, True]
        assert [m.attempt for m in harness.processed()] == [3]


async def test_retry_later_waits_its_own_delay_in_virtual_time():
    async with TestHarness(POOL) as harness:
        await harness.publish({"sku": "LATER", "qty": 1})
        await harness.join()
        assert [r.delay for r in harness.retries()] == [3600.0]
        assert harness.now == 3600.0


def test_the_virtual_clock_fires_timers_in_due_order_and_skips_cancelled_ones():
    clock = VirtualClock()
    fired: list[str] = []
    clock.call_later(5, lambda: fired.append("b"))
    clock.call_later(1, lambda: fired.append("a"))
    clock.call_later(3, lambda: fired.append("never")).cancel()
    clock.call_later(5, lambda: fired.append("c"))
    assert clock.advance_to(4.9) == 1 and fired == ["a"]
    assert clock.next_due == 5
    assert clock.advance_to(10) == 2 and fired == ["a", "b", "c"]
    assert clock.time() == 10 and clock.pending == 0


async def test_a_memory_backend_on_a_virtual_clock_holds_retries_until_it_moves():
    # Given a backend whose retry delays run on a virtual clock
    clock = VirtualClock()
    backend = MemoryBackend(clock=clock)
    await backend.connect()
    await backend.add_message("q", {"n": 1})
    message: Message[Any] = Message(b"{}", settler=backend, queue="q")
    # When a retry is published with a delay of 1.234 s
    await backend.publish_retry(message, delay=1.234)
    # Then it waits, listed with its tier, until the clock passes its due time
    [retry] = backend.pending_retries("q")
    assert (retry.queue, retry.delay, retry.held, retry.due) == ("q", 1.234, 1.2, 1.2)
    assert backend.depth("q") == 2
    clock.advance_to(1.1)
    assert len(backend.messages("q")) == 1
    clock.advance_to(1.2)
    assert backend.pending_retries("q") == [] and len(backend.messages("q")) == 2
    assert retry.released and retry.message.headers["x-retry-attempt"] == 1
    await backend.close()


# -- the harness's API ----------------------------------------------------------------------


async def test_several_pools_run_together_and_publish_needs_a_queue_then():
    # Given two pools on two queues
    shipping = WorkerPool(workers=[OrderWorker()], middleware=retrying(), queues=["shipping"])
    async with TestHarness([POOL, shipping]) as harness:
        assert harness.queues == ("orders", "shipping")
        with pytest.raises(ConfigurationError, match="name one"):
            await harness.publish({"sku": "A-1", "qty": 1})
        await harness.publish({"sku": "A-1", "qty": 1}, queue="orders")
        await harness.publish({"sku": "B-2", "qty": 1}, routing_key="shipping")
        await harness.join()
        assert [m.payload.sku for m in harness.processed("shipping")] == ["B-2"]
        assert [m.queue for m in harness.processed()] in (
            ["orders", "shipping"],
            ["shipping", "orders"],
        )
        with pytest.raises(ConfigurationError, match=r"harness\.pools"):
            _ = harness.pool


async def test_an_app_runs_with_the_queues_it_gave_each_pool():
    app_module = pytest.importorskip("foxwork.app")
    # Given an App serving the module-level pool on another queue
    app = app_module.App("shop")
    app.add(POOL, queues=["orders-eu"])
    async with TestHarness(app) as harness:
        await harness.publish({"sku": "A-1", "qty": 1}, queue="orders-eu")
        await harness.join()
        assert [m.queue for m in harness.processed()] == ["orders-eu"]
    assert app.state is PoolState.CREATED


class Forwarder(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        await message.publish({"shipped": message.payload["sku"]}, routing_key="shipments")


async def test_downstream_messages_land_in_declared_queues():
    pool = WorkerPool(workers=[Forwarder()], middleware=retrying(), queues=["orders"])
    async with TestHarness(pool, declare=["shipments"]) as harness:
        await harness.publish({"sku": "A-1"})
        await harness.join()
        assert [m.payload for m in harness.messages("shipments")] == [{"shipped": "A-1"}]


class Stuck(Worker[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        await self.release.wait()


async def test_join_says_what_is_busy_when_it_times_out():
    worker = Stuck()
    pool = WorkerPool(workers=[worker], middleware=retrying(), queues=["orders"])
    async with TestHarness(pool, timeout=0.2) as harness:
        await harness.publish({"n": 1})
        with pytest.raises(TimeoutError, match="orders: 0 ready, 1 unacked, 0 retries pending"):
            await harness.join()
        worker.release.set()
        await harness.join()
        assert len(harness.processed()) == 1


def test_a_target_that_is_no_pool_is_refused_with_what_to_pass():
    with pytest.raises(ConfigurationError, match="pass a WorkerPool"):
        TestHarness("orders")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="single pool"):
        TestHarness([POOL, POOL], workers=[OrderWorker()])


# -- the pytest plugin, from a user's test file ---------------------------------------------


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project, with the pytest-asyncio setting its users are told to give."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


USER_CONFTEST = """
import pytest
from foxwork import Message, Worker, WorkerPool


class Reserve(Worker):
    async def process(self, message: Message) -> None:
        if message.payload["qty"] < 0:
            raise ValueError("negative quantity")


pool = WorkerPool(workers=[Reserve()], queues=["orders"])


@pytest.fixture
def foxwork_pool():
    return pool
"""

USER_TESTS = """
import pytest


@pytest.mark.asyncio
async def test_reserved(foxwork_harness):
    await foxwork_harness.publish({"qty": 2})
    await foxwork_harness.join()
    assert len(foxwork_harness.processed("orders")) == 1


@pytest.mark.asyncio
async def test_reserved_again(foxwork_harness):
    await foxwork_harness.publish({"qty": 3})
    await foxwork_harness.join()
    assert len(foxwork_harness.processed("orders")) == 1


@pytest.mark.asyncio
async def test_negative(foxwork_harness):
    await foxwork_harness.publish({"qty": -1})
    await foxwork_harness.join()
"""


def test_the_plugin_gives_a_users_tests_a_harness_that_fails_fast(pytester: pytest.Pytester):
    # Given a user's project: a conftest naming the pool, and three tests
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_orders=USER_TESTS)
    # When pytest runs them (the plugin loads from foxwork's entry point)
    result = pytester.runpytest("-p", "no:cacheprovider")
    # Then the module-level pool runs in both passing tests, and the worker's error fails
    # the third, shown with its own line
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(['*raise ValueError("negative quantity")*', "E*ValueError*"])


def test_the_harness_fixture_without_a_pool_fixture_says_what_to_define(
    pytester: pytest.Pytester,
):
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.asyncio\nasync def test_x(foxwork_harness):\n    pass\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define one, e.g.*conftest.py*"])


def test_the_rabbitmq_fixture_is_skipped_with_the_reason_without_rabbitmq(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    # Given a machine without RabbitMQ and no broker URL
    monkeypatch.delenv("FOXWORK_TEST_RABBITMQ_URL", raising=False)
    monkeypatch.setenv("FOXWORK_RABBITMQ_BIN_DIR", str(pytester.path / "nowhere"))
    pytester.makepyfile("def test_x(foxwork_rabbitmq_url):\n    pass\n")
    # When a test asks for a broker
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    # Then it is skipped, saying what to install or set
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs RabbitMQ*FOXWORK_TEST_RABBITMQ_URL*"])


def test_the_rabbitmq_fixture_takes_the_url_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FOXWORK_TEST_RABBITMQ_URL", "amqp://guest:guest@rabbitmq:5672/")
    pytester.makepyfile(
        "def test_x(foxwork_rabbitmq_url):\n"
        "    assert foxwork_rabbitmq_url == 'amqp://guest:guest@rabbitmq:5672/'\n"
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
