"""Queue depth: `Backend.queue_depth` of the memory and resilient backends, and the
`QueueDepthSampler` behind the `foxwork.queue.depth` gauge (driven by a fake sleep)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from foxwork import ConnectionLost
from foxwork.backends import MemoryBackend, ResilientBackend
from foxwork.backends.base import Backend
from foxwork.telemetry import QUEUE_DEPTH_INTERVAL, QueueDepthSampler
from foxwork.telemetry.prometheus import PrometheusReader
from tests.support.waiting import wait_until


async def test_memory_depth_counts_the_messages_waiting_to_be_delivered() -> None:
    # Given a queue holding three messages, one of them delivered and not acked
    backend = MemoryBackend()
    await backend.connect()
    await backend.declare("orders")
    for body in (b"1", b"2", b"3"):
        await backend.publish("orders", body)
    taken: list[object] = []

    class Holder:
        async def dispatch(self, message: object) -> None:
            taken.append(message)

        def try_dispatch(self, message: object) -> bool:
            taken.append(message)
            return True

    consumer = await backend.consume("orders", Holder(), prefetch=1)  # type: ignore[arg-type]
    await wait_until(lambda: len(taken) == 1, what="one delivery")

    # Then the depth is what waits: the unacked one is not counted
    assert await backend.queue_depth("orders") == 2
    assert backend.depth("orders") == 3
    # and a queue never declared has no depth
    assert await backend.queue_depth("nowhere") is None
    await consumer.cancel()
    await backend.close()


async def test_memory_depth_needs_a_connection() -> None:
    with pytest.raises(ConnectionLost):
        await MemoryBackend().queue_depth("orders")


async def test_resilient_depth_is_unknown_until_connected_then_delegated() -> None:
    inner = MemoryBackend()
    backend = ResilientBackend(inner)
    assert await backend.queue_depth("orders") is None

    await backend.connect()
    await backend.declare("orders")
    await backend.publish("orders", b"x")

    assert await backend.queue_depth("orders") == 1
    await backend.close()


async def test_a_backend_that_cannot_tell_reports_none() -> None:
    class Bare(MemoryBackend):
        queue_depth = Backend.queue_depth

    backend = Bare()
    await backend.connect()
    await backend.declare("orders")
    assert await backend.queue_depth("orders") is None


class Depths:
    """A depth source whose answers the test sets: an int, None, or an exception."""

    def __init__(self) -> None:
        self.answers: dict[str, int | Exception | None] = {}

    async def queue_depth(self, queue: str) -> int | None:
        answer = self.answers.get(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeSleep:
    """Stands in for `asyncio.sleep`: each call waits until the test lets it go."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self._go = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self._go.clear()
        await self._go.wait()

    async def next_round(self) -> None:
        """Let the sampler sleep once more, and wait until it took the next round."""
        calls = len(self.calls)
        self._go.set()
        await wait_until(lambda: len(self.calls) > calls, what="the next round")


def gauge_lines(reader: PrometheusReader) -> list[str]:
    return [line for line in reader.render().splitlines() if line.startswith("foxwork_queue")]


async def test_the_sampler_reports_each_queue_and_drops_a_failed_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a sampler of two queues (one named twice) on a private provider
    reader = PrometheusReader()
    provider = MeterProvider(metric_readers=[reader])
    source, sleep = Depths(), FakeSleep()
    source.answers = {"orders": 5, "refunds": 0}
    sampler = QueueDepthSampler(
        source, ["orders", "refunds", "orders"], meter_provider=provider, sleep=sleep
    )
    assert sampler.queues == ("orders", "refunds")

    # When it starts, it samples at once, then sleeps the interval
    sampler.start()
    await wait_until(lambda: bool(sleep.calls), what="the first round")
    assert sleep.calls == [QUEUE_DEPTH_INTERVAL]
    assert gauge_lines(reader) == [
        'foxwork_queue_depth{messaging_destination_name="orders"} 5',
        'foxwork_queue_depth{messaging_destination_name="refunds"} 0',
    ]

    # When one queue's sample fails and the other's depth is unknown
    source.answers = {"orders": ConnectionLost("gone"), "refunds": None}
    with caplog.at_level(logging.DEBUG, logger="foxwork.telemetry"):
        await sleep.next_round()

    # Then neither is reported (no stale value), and the failure is logged at DEBUG
    assert gauge_lines(reader) == []
    [record] = [r for r in caplog.records if r.name == "foxwork.telemetry"]
    assert record.levelno == logging.DEBUG
    assert "'orders'" in record.getMessage() and "gone" in record.getMessage()

    # When the samples succeed again, they are reported again
    source.answers = {"orders": 7, "refunds": 1}
    await sleep.next_round()
    assert sampler.depths == {"orders": 7, "refunds": 1}

    # When it stops, nothing more is reported and it samples no more
    await sampler.stop()
    await sampler.stop()
    assert gauge_lines(reader) == []
    assert len(sleep.calls) == 3


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        QueueDepthSampler(Depths(), ["orders"], interval=0)
