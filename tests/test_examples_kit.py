"""The examples' workers, tested with foxwork.testing as an application tests its own.

tests/test_examples.py runs each example as a script; here their workers and chains run
in a `TestHarness`, and the assertions are on what happened to each message (processed,
retried with which delay, dead-lettered with which reason, raised by `join()`), with the
retry delays on virtual time.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from foxwork import WorkerPool
from foxwork.middleware import (
    AckNackMiddleware,
    BatchMiddleware,
    CircuitBreakerMiddleware,
    RetryMiddleware,
    TracingMiddleware,
)
from foxwork.testing import TestHarness

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> ModuleType:
    """The example module `examples/NAME.py`, imported (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(f"examples_kit_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic models resolve their module by name
    spec.loader.exec_module(module)
    return module


quickstart = example("quickstart")
payments = example("payments")
batch_sqlite = example("batch_sqlite")
tracing_console = example("tracing_console")
app_example = example("app")


def quickstart_pool() -> WorkerPool:
    # The pool of quickstart.main(), with its retry settings.
    return WorkerPool(
        workers=[quickstart.OrderWorker(), quickstart.OrderWorker()],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=3, initial_backoff=0.1)],
        queues=["orders"],
    )


async def test_quickstart_orders_are_reserved_retried_and_dead_lettered():
    Order = quickstart.Order
    async with TestHarness(quickstart_pool()) as harness:
        for order_id, sku in ((1, "AB-12"), (2, "CD-34"), (3, "ZZ-404")):
            await harness.publish(Order(order_id=order_id, sku=sku, quantity=1))
        # When every order has been handled (the DeadLetter is the worker's decision: join
        # does not raise it)
        await harness.join()
        # Then orders 1 and 2 are reserved, order 2 on its second attempt after one retry
        assert sorted((m.payload.order_id, m.attempt) for m in harness.processed()) == [
            (1, 1),
            (2, 2),
        ]
        [retry] = harness.retries("orders")
        assert retry.attempt == 2 and 0.09 <= retry.delay <= 0.11  # 0.1 s ± 10 % jitter
        # and the unknown SKU is a dead letter with the worker's reason
        [letter] = harness.dead_letters("orders")
        assert letter.payload["sku"] == "ZZ-404"
        assert letter.headers["x-failure-reason"] == "unknown SKU 'ZZ-404'"


async def test_quickstart_invalid_order_surfaces_as_the_validation_error():
    async with TestHarness(quickstart_pool()) as harness:
        await harness.publish({"order_id": 4, "sku": "AB-12"})  # no quantity
        with pytest.raises(Exception, match="quantity"):
            await harness.join()
        assert harness.processed() == []


async def test_payments_a_hung_call_is_cut_off_and_retried():
    # Given the payment worker, a provider that is up, and the example's chain
    provider = payments.PaymentProvider(outage=0)
    worker = payments.PaymentWorker(provider)
    breaker = CircuitBreakerMiddleware(failure_threshold=3, recovery_timeout=0.5)
    pool = WorkerPool(
        workers=[worker],
        middleware=[AckNackMiddleware(), breaker, RetryMiddleware(initial_backoff=0.1)],
        concurrency_limit=2,
        queues=["payments"],
    )
    async with TestHarness(pool) as harness:
        for payment_id in range(1, 11):
            await harness.publish(payments.Payment(payment_id=payment_id, amount_cents=995))
        await harness.join()
        # Then every payment is charged once; payment 7 hung once, hit the worker's
        # timeout, and was charged on its retry
        assert sorted(worker.charged) == list(range(1, 11))
        assert [(r.message.payload["payment_id"], r.attempt) for r in harness.retries()] == [(7, 2)]
        assert [type(f.exception).__name__ for f in harness.failures] == ["ProcessingTimeout"]
        assert harness.dead_letters() == []
        assert breaker.state.name == "CLOSED"


def stock_pool(db: sqlite3.Connection) -> tuple[WorkerPool, Any]:
    # The pool of batch_sqlite.main().
    writer = batch_sqlite.StockWriter(db)
    pool = WorkerPool(
        workers=[batch_sqlite.Unused()],
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=2, initial_backoff=0.05),
            BatchMiddleware(writer, batch_size=50, flush_interval=0.2),
        ],
        concurrency_limit=50,
        queues=["stock"],
    )
    return pool, writer


async def test_batch_sqlite_a_refused_row_fails_only_its_message():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, quantity INTEGER CHECK (quantity >= 0))")
    pool, writer = stock_pool(db)
    async with TestHarness(pool) as harness:
        for n in range(200):
            await harness.publish({"sku": f"SKU-{n:03}", "quantity": -1 if n == 42 else n % 17})
        # When the batches are written, the one row the database refuses (twice: it is
        # retried once) surfaces from join() as the database's own error
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
            await harness.join()
        await harness.join()
        # Then the other 199 rows are written; the refused row's retry came alone, in a
        # last batch (retries are released once the rest is done), and only that message
        # is a dead letter
        (rows,) = db.execute("SELECT COUNT(*) FROM stock").fetchone()
        assert rows == 199
        assert sum(writer.batches) == 201 and writer.batches[-1] == 1
        assert [d.payload["sku"] for d in harness.dead_letters("stock")] == ["SKU-042"]
        assert len(harness.processed("stock")) == 199


async def test_tracing_console_every_attempt_is_a_span_of_the_producers_trace():
    # Given the shipping worker behind the example's chain, spans kept in memory
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    pool = WorkerPool(
        workers=[tracing_console.ShippingWorker()],
        middleware=[
            AckNackMiddleware(),
            TracingMiddleware(tracer_provider=provider),
            RetryMiddleware(initial_backoff=0.1),
        ],
        queues=["shipping"],
    )
    trace_id = tracing_console.TRACEPARENT.split("-")[1]
    async with TestHarness(pool) as harness:
        # When a message arrives with the producer's traceparent, and fails once
        await harness.publish(
            {"order": "1001"}, headers={"traceparent": tracing_console.TRACEPARENT}
        )
        await harness.join()
    # Then both attempts are spans of the producer's trace, the first one failed
    finished = spans.get_finished_spans()
    assert [format(s.context.trace_id, "032x") for s in finished] == [trace_id, trace_id]
    assert [s.status.status_code.name for s in finished] == ["ERROR", "UNSET"]
    assert [m.attempt for m in harness.processed()] == [2]
    provider.shutdown()


@pytest.mark.parametrize("run", [1, 2])
async def test_app_each_pool_handles_its_own_queue_in_every_test(
    run: int, capsys: pytest.CaptureFixture[str]
):
    # Given the example's module-level App (run twice: its copies run, the App never does)
    async with TestHarness(app_example.app) as harness:
        assert harness.queues == ("invoices", "billing-events")
        # When an invoice and an order event arrive on their queues
        await harness.publish({"id": run}, queue="invoices")
        await harness.publish({"event": "order.created"}, queue="billing-events")
        await harness.join()
        # Then each pool handled its own
        assert [(m.queue, m.worker_id) for m in harness.processed("invoices")] == [
            ("invoices", "invoices")
        ]
        assert [m.worker_id for m in harness.processed("billing-events")] == ["events"]
    assert f"invoice {run} sent" in capsys.readouterr().out
    assert app_example.app.state.value == "created"


@pytest.mark.rabbitmq
async def test_rabbitmq_orders_runs_on_the_broker_of_the_user_facing_fixture(
    foxwork_rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # Given the broker an application's tests get from foxwork's own pytest plugin
    monkeypatch.setenv("FOXWORK_URL", foxwork_rabbitmq_url)
    # When the example runs against it
    await example("rabbitmq_orders").main()
    # Then its five orders were handled: four shipped, one dead letter listed and purged
    out = capsys.readouterr().out
    assert out.count("shipped") == 4
    assert "dead letter o3: unknown SKU 'ZZ-404'" in out
    assert "purged 1 dead letter(s)" in out
