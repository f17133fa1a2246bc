"""MetricsMiddleware and the observed sources: exact counts a dashboard relies on."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from foxwork import ConfigurationError, Drop, Message, Worker
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, MetricsMiddleware, RetryMiddleware
from foxwork.telemetry import observe_circuit, observe_connection
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import FailingWorker, make_message, raising

#: Tiny delays keep the MemoryBackend's real retry timers in the milliseconds.
FAST: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}

COUNTERS = (
    "foxwork.messages.received",
    "foxwork.messages.processed",
    "foxwork.messages.failed",
    "foxwork.messages.retried",
    "foxwork.messages.dead_lettered",
    "foxwork.messages.dropped",
)


class Boom(Exception):
    pass


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> MeterProvider:
    """A private provider: tests never touch the global one."""
    return MeterProvider(metric_readers=[reader])


def collect(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
    """{metric name: {sorted attribute items: value, or the histogram point}}."""
    values: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = values.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = tuple(sorted((point.attributes or {}).items()))
                    points[key] = getattr(point, "value", point)
    return values


def counts(reader: InMemoryMetricReader, **attributes: str) -> dict[str, Any]:
    """The value of each message counter for exactly these attributes."""
    key = tuple(sorted(attributes.items()))
    values = collect(reader)
    return {name.rsplit(".", 1)[1]: values.get(name, {}).get(key) for name in COUNTERS}


class ScriptedWorker(Worker[Any]):
    """Payload {"kind": "ok"} succeeds, "flaky" fails its first attempt, "broken" always
    fails, "stale" is dropped."""

    async def process(self, message: Message[Any]) -> None:
        kind = message.payload["kind"]
        if kind == "broken" or (kind == "flaky" and message.attempt == 1):
            raise Boom(kind)
        if kind == "stale":
            raise Drop("stale")


# -- configuration ----------------------------------------------------------------------


def test_a_meter_provider_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="meter_provider='prometheus'"):
        MetricsMiddleware(meter_provider="prometheus")  # type: ignore[arg-type]


# -- message counts ---------------------------------------------------------------------


async def test_counters_match_a_scripted_run_exactly(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    # Given 10 messages: 7 succeed, 2 fail once then succeed, 1 fails on both attempts
    pool = make_pool(
        ScriptedWorker("w1"),
        middleware=[
            AckNackMiddleware(),
            MetricsMiddleware(meter_provider=meter_provider),
            RetryMiddleware(max_attempts=2, **FAST),
        ],
    )
    for kind in ["ok"] * 7 + ["flaky"] * 2 + ["broken"]:
        await memory_backend.add_message(queue_name, {"kind": kind})

    # When they are all processed
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)
    await pool.shutdown()

    # Then every delivery is counted once, under its queue and worker
    assert counts(reader, queue=queue_name, worker="w1") == {
        "received": 13,  # 10 first deliveries + 2 flaky retries + 1 broken retry
        "processed": 9,
        "failed": 4,  # both flaky first attempts, both broken attempts
        "retried": 3,  # both flaky first attempts, broken's first attempt
        "dead_lettered": 1,
        "dropped": 0,
    }
    assert len(memory_backend.dead_letters(queue_name)) == 1


async def test_a_dropped_message_is_counted_as_dropped_not_as_failed(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    # Given a message the worker drops
    pool = make_pool(
        ScriptedWorker("w1"),
        middleware=[
            AckNackMiddleware(),
            MetricsMiddleware(meter_provider=meter_provider),
            RetryMiddleware(**FAST),
        ],
    )
    await memory_backend.add_message(queue_name, {"kind": "stale"})

    # When it is processed
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then it is dropped: neither processed nor failed, never retried
    assert counts(reader, queue=queue_name, worker="w1") == {
        "received": 1,
        "processed": 0,
        "failed": 0,
        "retried": 0,
        "dead_lettered": 0,
        "dropped": 1,
    }


async def test_durations_are_recorded_in_seconds_for_every_delivery(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    # Given a worker that fails once
    pool = make_pool(
        FailingWorker(Boom("flaky"), times=1),
        middleware=[
            AckNackMiddleware(),
            MetricsMiddleware(meter_provider=meter_provider),
            RetryMiddleware(**FAST),
        ],
    )
    await memory_backend.add_message(queue_name, {"order": 1})

    # When its two deliveries are processed
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then the histogram holds both, with second-scale buckets
    (point,) = collect(reader)["foxwork.message.duration"].values()
    assert point.count == 2
    assert 0 < point.sum < 1
    assert point.explicit_bounds[:3] == (0.001, 0.0025, 0.005)


async def test_in_flight_counts_the_messages_being_processed(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    # Given a worker held inside process()
    started, release = asyncio.Event(), asyncio.Event()

    class HeldWorker(Worker[Any]):
        async def process(self, message: Message[Any]) -> None:
            started.set()
            await release.wait()

    pool = make_pool(
        HeldWorker("w1"),
        middleware=[AckNackMiddleware(), MetricsMiddleware(meter_provider=meter_provider)],
    )
    await memory_backend.add_message(queue_name, {"order": 1})
    await pool.start(memory_backend)
    await asyncio.wait_for(started.wait(), timeout=5)
    key = (("queue", queue_name), ("worker", "w1"))

    # When it is read while the message is processed, and after
    during = collect(reader)["foxwork.messages.in_flight"][key]
    release.set()
    await memory_backend.join(queue_name, timeout=5)
    after = collect(reader)["foxwork.messages.in_flight"][key]

    # Then it shows the message, then nothing
    assert (during, after) == (1, 0)


async def test_two_layers_on_one_provider_add_up_without_duplicate_instruments(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given two pools with their own MetricsMiddleware on one provider, same worker id
    caplog.set_level(logging.WARNING)
    pools = [
        make_pool(
            ScriptedWorker("w1"),
            middleware=[AckNackMiddleware(), MetricsMiddleware(meter_provider=meter_provider)],
        )
        for _ in range(2)
    ]
    for _ in range(4):
        await memory_backend.add_message(queue_name, {"kind": "ok"})

    # When both consume the queue
    for pool in pools:
        await pool.start(memory_backend)
    await run_until_idle(pools[0], memory_backend, queue_name)

    # Then the counts add up across both, and OpenTelemetry had nothing to warn about
    assert counts(reader, queue=queue_name, worker="w1")["processed"] == 4
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []


async def test_a_layer_reraises_the_failure_it_counts() -> None:
    # Given a metrics layer on its own
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    middleware = MetricsMiddleware(meter_provider=provider)

    # When the rest of the chain fails, then the failure goes on outward
    with pytest.raises(Boom):
        await middleware(make_message(), raising(Boom("down")))


# -- connection and circuit state ---------------------------------------------------------


async def test_connection_state_reads_one_while_connected_and_zero_after_close(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # Given an observed, connected backend
    backend = MemoryBackend()
    await backend.connect()
    stop = observe_connection(
        lambda: backend.is_connected, name="memory", meter_provider=meter_provider
    )
    key = (("backend", "memory"),)

    # When it is read before and after the backend closes
    connected = collect(reader)["foxwork.connection.up"][key]
    await backend.close()
    closed = collect(reader)["foxwork.connection.up"][key]
    stop()

    # Then it reads 1, then 0, then is no longer reported
    assert (connected, closed) == (1, 0)
    assert key not in collect(reader).get("foxwork.connection.up", {})


def test_a_connection_check_that_raises_counts_as_disconnected(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    def broken() -> bool:
        raise RuntimeError("no idea")

    observe_connection(broken, name="odd", meter_provider=meter_provider)

    assert collect(reader)["foxwork.connection.up"][(("backend", "odd"),)] == 0


def test_observing_something_that_is_not_a_connection_check_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="callable"):
        observe_connection(True)  # type: ignore[arg-type]


async def test_circuit_state_and_transitions_follow_the_breaker(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    circuit_breaker = pytest.importorskip("foxwork.middleware.circuit_breaker")

    # Given an observed breaker that opens after one failure
    breaker = circuit_breaker.CircuitBreakerMiddleware(failure_threshold=1, recovery_timeout=60)
    stop = observe_circuit(breaker, "payments", meter_provider=meter_provider)
    closed = collect(reader)["foxwork.circuit.state"][(("circuit", "payments"),)]

    # When a failure opens it
    with pytest.raises(Boom):
        await breaker(make_message(), raising(Boom("payments API down")))

    # Then the gauge goes from closed (0) to open (2), and the transition is counted
    values = collect(reader)
    assert (closed, values["foxwork.circuit.state"][(("circuit", "payments"),)]) == (0, 2)
    transitions = values["foxwork.circuit.transitions"]
    assert transitions == {(("circuit", "payments"), ("from", "closed"), ("to", "open")): 1}
    stop()
    assert "foxwork.circuit.state" not in collect(reader)


def test_observing_something_that_is_not_a_breaker_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="CircuitBreakerMiddleware"):
        observe_circuit(object(), "payments")
