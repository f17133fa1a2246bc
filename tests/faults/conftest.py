"""Shared pieces of the fault tests: numbered messages, a ledger of what was processed, a
pool on `ResilientBackend(RabbitMQBackend(...))`, a queue probe, and waits with deadlines.

Every scenario follows the same shape:

1. publish N numbered, persistent messages with confirms (`publish_numbered`);
2. run a real pool (AckNack + Retry middleware) on a resilient RabbitMQ backend (`FaultRun`);
3. inject the fault while the pool is mid-stream;
4. wait until every id was processed at least once (`Ledger.wait_complete`), and until the
   queues are empty (`FaultRun.drain`), then stop the pool and check the queues once more
   with the connection closed, when nothing can hide as "unacked" (`QueueProbe.assert_empty`).

Duplicates are expected under faults (at-least-once) and are printed, never asserted away.
Nothing here sleeps and hopes: every wait is on a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aio_pika.exceptions
import aiormq
import pytest

from foxwork import Message, MessageProperties, PoolState, Worker, WorkerPool, wire
from foxwork.backends import (
    ConnectionState,
    RabbitMQBackend,
    ReconnectStrategy,
    ResilientBackend,
)
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.harness.pytest_plugin import make_cluster, mark_folder
from tests.harness.rabbitmq import RabbitMQCluster, RabbitMQNode
from tests.support.waiting import wait_until

from .proxy import TcpProxy

#: Reconnect quickly in tests: a fault should cost seconds, not a minute of backoff.
FAST_RECONNECT = ReconnectStrategy.Exponential(initial=0.2, max=1.0, multiplier=2.0)
#: Publishes awaiting their confirm at once while seeding a queue.
PUBLISH_CONCURRENCY = 100
#: The pool's `RetryMiddleware`: no jitter, so a first retry always lands in one known delay
#: tier (`RETRY_TIER_MS`), which the scenarios check for leftovers.
RETRY_SETTINGS: dict[str, Any] = {"max_attempts": 5, "initial_backoff": 0.2, "jitter": 0.0}
#: The retry tier of a first retry under `RETRY_SETTINGS`.
RETRY_TIER_MS = 200
#: Seconds a pool gets to finish in-flight messages when a scenario ends.
SHUTDOWN_TIMEOUT = 10.0


# -- numbered messages and the ledger ------------------------------------------------


def numbered_ids(n: int, prefix: str = "m") -> list[str]:
    """`n` message ids: `m00000`, `m00001`, ..."""
    return [f"{prefix}{i:05d}" for i in range(n)]


class Ledger:
    """Which numbered messages were processed, and how often.

    Args:
        ids: every id the scenario expects to see processed.
    """

    def __init__(self, ids: Iterable[str]) -> None:
        self.expected = frozenset(ids)
        self.counts: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self._complete = asyncio.Event()
        if not self.expected:
            self._complete.set()

    def record(self, message_id: str) -> None:
        if message_id not in self.expected:
            self.unexpected.append(message_id)
            return
        self.counts[message_id] += 1
        if len(self.counts) == len(self.expected):
            self._complete.set()

    @property
    def processed(self) -> int:
        """Distinct ids processed."""
        return len(self.counts)

    @property
    def deliveries(self) -> int:
        """Successful processings, duplicates included."""
        return sum(self.counts.values())

    @property
    def duplicates(self) -> int:
        """Processings beyond the first of each id."""
        return self.deliveries - self.processed

    @property
    def missing(self) -> set[str]:
        return set(self.expected - self.counts.keys())

    async def wait_complete(self, timeout: float) -> None:
        """Wait until every expected id was processed at least once."""
        try:
            async with asyncio.timeout(timeout):
                await self._complete.wait()
        except TimeoutError:
            missing = sorted(self.missing)
            pytest.fail(
                f"{len(missing)} of {len(self.expected)} message(s) not processed after "
                f"{timeout:.0f} s, e.g. {missing[:10]}",
                pytrace=False,
            )

    async def wait_processed(self, count: int, timeout: float) -> None:
        """Wait until at least `count` distinct ids were processed (to fault mid-stream)."""
        await wait_until(
            lambda: self.processed >= count,
            timeout=timeout,
            what=lambda: f"{count} messages were processed (now {self.processed})",
        )

    def assert_complete(self) -> None:
        assert not self.missing, f"lost {len(self.missing)} message(s): {sorted(self.missing)[:10]}"
        assert not self.unexpected, f"processed ids nobody published: {self.unexpected[:10]}"

    def summary(self) -> str:
        return (
            f"{self.processed}/{len(self.expected)} ids processed, "
            f"{self.deliveries} processings, {self.duplicates} duplicate(s)"
        )


Hook = Callable[[Message[Any]], Awaitable[None]]


class LedgerWorker(Worker[Any]):
    """Records each message it processes in a `Ledger`.

    Args:
        ledger: where processed ids go.
        delay: seconds each message takes (paces the stream so a fault lands mid-stream).
        hook: awaited first; may hold the message or raise (`RetryLater`, `DeadLetter`), in
            which case nothing is recorded.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        delay: float = 0.0,
        hook: Hook | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id)
        self.ledger = ledger
        self.delay = delay
        self.hook = hook

    async def process(self, message: Message[Any]) -> None:
        if self.hook is not None:
            await self.hook(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.ledger.record(message.id)


async def publish_numbered(
    url: str,
    queue: str,
    ids: Sequence[str],
    *,
    queue_type: str = "classic",
    concurrency: int = PUBLISH_CONCURRENCY,
) -> float:
    """Declare `queue` and publish one persistent JSON message per id, each confirmed.

    Returns:
        The seconds publishing took.
    """
    began = time.monotonic()
    publisher = RabbitMQBackend(
        url=url, queue=queue, queue_type=queue_type, connection_name="foxwork-faults-publisher"
    )
    async with publisher:
        await publisher.declare(queue)
        slots = asyncio.Semaphore(concurrency)
        properties = MessageProperties(content_type="application/json")
        assert properties.delivery_mode == 2, "fault tests need persistent messages"

        async def publish(message_id: str) -> None:
            async with slots:
                body = json.dumps({"id": message_id}).encode()
                await publisher.publish(queue, body, properties.with_message_id(message_id))

        await asyncio.gather(*(publish(message_id) for message_id in ids))
    return time.monotonic() - began


# -- the queue probe -------------------------------------------------------------------


_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,
)


class QueueProbe:
    """Counts messages in queues with passive declares, on a connection of its own.

    The connection is opened again when it died (a fault hits the probe too).

    Args:
        url: the broker to ask (in a cluster, any live node).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        #: Every queue counted so far (the fixture deletes them at teardown).
        self.asked: set[str] = set()
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        for attempt in (1, 2):
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect(
                    self.url, timeout=5, client_properties={"connection_name": "foxwork-probe"}
                )
            try:
                return await self._connection.channel(publisher_confirms=False)
            except _CONNECTION_ERRORS:
                # Killed under us, and aio-pika has not marked it closed yet: open a new one.
                if attempt == 2:
                    raise
                await self.close()
        raise AssertionError("unreachable")

    async def count(self, queue: str) -> int | None:
        """Ready messages in `queue` (not those delivered and unacked); None when the queue
        does not exist."""
        self.asked.add(queue)
        channel = await self._channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            if not channel.is_closed:
                await channel.close()
        result = declared.declaration_result
        assert result.message_count is not None
        return int(result.message_count)

    async def counts(self, queues: Iterable[str]) -> dict[str, int | None]:
        return {queue: await self.count(queue) for queue in queues}

    async def wait_count(self, queue: str, expected: int, *, timeout: float) -> None:
        """Wait until `queue` holds exactly `expected` ready messages."""
        last: list[int | None] = [None]

        async def reached() -> bool:
            last[0] = await self.count(queue)
            return last[0] == expected

        await wait_until(
            reached,
            timeout=timeout,
            what=lambda: f"{queue!r} holds {expected} message(s) (last count: {last[0]})",
            interval=0.2,
        )

    async def assert_empty(self, queues: Iterable[str]) -> None:
        """Every queue that exists holds no message."""
        counts = await self.counts(queues)
        leftovers = {q: c for q, c in counts.items() if c}
        assert not leftovers, f"queues not empty at the end: {leftovers}"

    async def get_all(self, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take every message out of `queue` (basic.get + ack), in order."""
        channel = await self._channel()
        taken = []
        try:
            declared = await channel.get_queue(queue, ensure=True)
            while (message := await declared.get(fail=False, no_ack=False)) is not None:
                await message.ack()
                taken.append(message)
        finally:
            await channel.close()
        return taken

    async def delete(self, queues: Iterable[str], exchanges: Iterable[str] = ()) -> None:
        """Delete queues and exchanges, ignoring those that are gone (cleanup)."""
        for name, kind in [*((q, "queue") for q in queues), *((e, "exchange") for e in exchanges)]:
            with contextlib.suppress(Exception):
                channel = await self._channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                finally:
                    if not channel.is_closed:
                        await channel.close()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_CONNECTION_ERRORS, TimeoutError):
                await connection.close()


def topology_names(queue: str, *retry_delays_ms: int) -> list[str]:
    """The queues of `queue`'s topology that a scenario checks: main, DLQ, retry tiers."""
    names = [queue, wire.dead_letter_queue_name(queue)]
    names += [wire.retry_queue_name(queue, ms) for ms in retry_delays_ms]
    return names


def port_of(url: str | None) -> int | None:
    """The port in an AMQP URL (redacted or not)."""
    return urlsplit(url).port if url else None


# -- one pool on a resilient RabbitMQ backend ---------------------------------------------


class StateLog:
    """Every `ConnectionState` change of a `ResilientBackend`, with the loop time."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, ConnectionState, ConnectionState]] = []

    def __call__(self, old: ConnectionState, new: ConnectionState) -> None:
        self.changes.append((asyncio.get_running_loop().time(), old, new))

    def first(self, state: ConnectionState, *, after: float) -> float | None:
        """Loop time of the first change to `state` at or after `after`."""
        return next((t for t, _, new in self.changes if new is state and t >= after), None)


class FaultRun:
    """A `WorkerPool` with AckNack + Retry middleware consuming one queue through
    `ResilientBackend(RabbitMQBackend(...))`, run with `pool.run()` in a task.

    Args:
        urls: broker URL(s), tried in order.
        queue: the queue to consume.
        workers: the pool's workers.
        concurrency: the pool's concurrency limit.
        prefetch: unsettled deliveries; defaults to the concurrency limit.
        retry: the `RetryMiddleware` (default: 5 attempts, short backoff).
        backend_options: more `RabbitMQConsumerConfig` fields (heartbeat, queue_type, ...).
    """

    def __init__(
        self,
        *,
        urls: str | list[str],
        queue: str,
        workers: Sequence[Worker[Any]],
        concurrency: int = 20,
        prefetch: int | None = None,
        retry: RetryMiddleware | None = None,
        **backend_options: Any,
    ) -> None:
        self.queue = queue
        self.states = StateLog()
        backend_options.setdefault("connection_name", f"foxwork-faults-{queue}")
        self.rabbit = RabbitMQBackend(url=urls, queue=queue, **backend_options)
        self.backend = ResilientBackend(
            self.rabbit,
            strategy=FAST_RECONNECT,
            watchdog_interval=1.0,
            on_state_change=self.states,
        )
        self.pool = WorkerPool(
            workers=workers,
            middleware=[
                AckNackMiddleware(),
                retry or RetryMiddleware(**RETRY_SETTINGS),
            ],
            concurrency_limit=concurrency,
            prefetch=prefetch,
            queues=[queue],
            name=f"faults-{queue}",
        )
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        #: Set if `pool.run()` returned or raised before `stop()`: the pool exited.
        self.exited_early: str | None = None

    @property
    def connected_port(self) -> int | None:
        """The port of the node the backend is connected to right now."""
        return port_of(self.rabbit.url) if self.rabbit.is_connected else None

    async def start(self, timeout: float = 30.0) -> None:
        self.task = asyncio.create_task(self.pool.run(self.backend), name=f"pool-{self.queue}")
        self.task.add_done_callback(self._on_exit)
        await wait_until(
            lambda: (
                self.task is not None
                and (self.task.done() or (self.backend.is_connected and self._consuming()))
            ),
            timeout=timeout,
            what="the pool is consuming",
        )
        if self.task.done():
            self.task.result()  # raises what made run() fail
        self.assert_running()

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        if not self.stopped:
            error = None if task.cancelled() else task.exception()
            self.exited_early = f"pool.run() ended before stop(): {error!r}"

    def _consuming(self) -> bool:
        return self.pool.state is PoolState.RUNNING and bool(self.pool.health()["consuming"])

    def assert_running(self) -> None:
        """The pool never exited: still RUNNING, its `run()` task never ended."""
        assert self.task is not None
        assert self.exited_early is None, self.exited_early
        assert not self.task.done(), f"pool.run() ended: {self.task!r}"
        assert self.pool.state is PoolState.RUNNING, self.pool.state

    async def wait_connected(self, timeout: float) -> float:
        return await wait_until(
            lambda: self.backend.state is ConnectionState.CONNECTED and self._consuming(),
            timeout=timeout,
            what="the backend is CONNECTED and consuming again",
        )

    async def wait_lost(self, since: float, *, timeout: float = 10.0) -> float:
        """Wait until the backend went DISCONNECTED at or after loop time `since`.

        Returns:
            The loop time it did.
        """
        await wait_until(
            lambda: self.states.first(ConnectionState.DISCONNECTED, after=since) is not None,
            timeout=timeout,
            what="the backend noticed that its connection is lost",
        )
        lost_at = self.states.first(ConnectionState.DISCONNECTED, after=since)
        assert lost_at is not None
        return lost_at

    async def drain(self, probe: QueueProbe, queues: Sequence[str], timeout: float) -> None:
        """Wait until `queues` hold nothing ready and the pool has nothing in flight, twice in
        a row across a broker round trip (so a delivery on its way is not missed)."""

        last: dict[str, Any] = {}

        async def idle() -> bool:
            for _ in range(2):
                counts = await probe.counts(queues)
                last.update(counts=counts, in_flight=self.pool.in_flight)
                if any(counts.values()) or self.pool.in_flight:
                    return False
            return True

        try:
            await wait_until(idle, timeout=timeout, what=f"{list(queues)} are drained")
        except BaseException:
            print(f"\n[faults] not drained: {last}, pool: {self.pool.health()}")
            raise

    async def settle(
        self, ledger: Ledger, probe: QueueProbe, *, wait: float = 60.0, drain: float = 30.0
    ) -> list[str]:
        """After the fault: every id processed, the queue and its retry tier drained, and
        the pool still RUNNING. Returns the queues that must end empty."""
        await ledger.wait_complete(timeout=wait)
        queues = topology_names(self.queue, RETRY_TIER_MS)
        await self.drain(probe, queues, timeout=drain)
        self.assert_running()
        return queues

    async def finish(
        self,
        probe: QueueProbe,
        queues: Sequence[str],
        ledger: Ledger,
        name: str,
        n: int,
        began: float,
        **extra: Any,
    ) -> None:
        """Stop, then prove nothing is left (unacked messages would be back in the queues
        once the connection is closed) and every id was processed; print the figures."""
        await self.stop()
        await probe.assert_empty(queues)
        ledger.assert_complete()
        report(name, n, ledger, began, **extra)

    async def stop(self) -> None:
        """Shut the pool down (in-flight messages finish) and close the backend."""
        if self.stopped:
            return
        self.stopped = True
        await self.pool.shutdown(SHUTDOWN_TIMEOUT)
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        await self.backend.close()


#: What the `make_run` fixture gives: `make_run(urls=..., queue=..., workers=[...], ...)`.
RunFactory = Callable[..., FaultRun]


def report(name: str, n: int, ledger: Ledger, began: float, **extra: Any) -> None:
    """Print what a scenario observed (`pytest -s` shows it; so does a failure)."""
    details = "".join(f", {k}={v}" for k, v in extra.items())
    print(
        f"\n[faults] {name}: N={n}, {ledger.summary()}, {time.monotonic() - began:.1f} s{details}"
    )


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def fault_queue() -> str:
    """A queue name no other test uses."""
    return f"faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make_run() -> AsyncIterator[RunFactory]:
    """Factory of `FaultRun`s; any still running at teardown is stopped."""
    runs: list[FaultRun] = []

    def factory(**kwargs: Any) -> FaultRun:
        run = FaultRun(**kwargs)
        runs.append(run)
        return run

    yield factory
    for run in runs:
        if not run.stopped:
            with contextlib.suppress(Exception):
                await run.stop()


@pytest.fixture
async def probe(rabbitmq_url: str, fault_queue: str) -> AsyncIterator[QueueProbe]:
    """A `QueueProbe` on the session broker; deletes the test queue's topology afterwards."""
    queue_probe = QueueProbe(rabbitmq_url)
    yield queue_probe
    await queue_probe.delete(
        [*topology_names(fault_queue), *queue_probe.asked],
        [wire.retry_exchange_name(fault_queue)],
    )
    await queue_probe.close()


@pytest.fixture
async def proxy(rabbitmq_node: RabbitMQNode) -> AsyncIterator[TcpProxy]:
    """A `TcpProxy` in front of the session broker."""
    async with TcpProxy(rabbitmq_node.amqp_port) as tcp_proxy:
        yield tcp_proxy


@pytest.fixture
def cluster() -> Iterator[RabbitMQCluster]:
    """A throwaway three-node cluster for one test."""
    with make_cluster(3) as rabbit_cluster:
        yield rabbit_cluster


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking harness call (kill, restart, rabbitmqctl) off the event loop, so the
    pool, its heartbeats and its reconnect attempts keep running meanwhile."""
    return await asyncio.to_thread(function, *args)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every fault test needs the real broker and injects faults: marked by folder.
    mark_folder(items, Path(__file__).parent, pytest.mark.rabbitmq, pytest.mark.faults)
