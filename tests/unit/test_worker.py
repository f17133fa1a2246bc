"""Worker: timeouts, blocking code in threads, typed payloads, and bad input."""

from __future__ import annotations

import asyncio
import math
import re
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from foxwork import (
    ConfigurationError,
    Message,
    MessageProperties,
    PoisonMessage,
    PoolState,
    ProcessingTimeout,
    Worker,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.conftest import PoolFactory, run_until_idle

from .helpers import RecordingWorker, make_message

FAST_RETRY: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}
SOON = 2.0


class Order(BaseModel):
    sku: str
    qty: int


class OrderWorker(Worker[Order]):
    payload_model = Order

    def __init__(self) -> None:
        super().__init__()
        self.orders: list[Order] = []

    async def process(self, message: Message[Order]) -> None:
        self.orders.append(message.payload)


class HangingWorker(Worker[Any]):
    processing_timeout = 0.01

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts = 0

    async def process(self, message: Message[Any]) -> None:
        self.attempts += 1
        await asyncio.Event().wait()


# -- identity and configuration ---------------------------------------------------------


def test_a_worker_gets_a_unique_default_id_from_its_class_name() -> None:
    first, second = RecordingWorker(), RecordingWorker()
    assert first.id.startswith("RecordingWorker-")
    assert first.id != second.id
    assert RecordingWorker("orders-1").id == "orders-1"
    assert "orders-1" in repr(RecordingWorker("orders-1"))


@pytest.mark.parametrize("timeout", [0, -1.0, True, "10", math.nan])
def test_a_processing_timeout_that_is_not_a_positive_number_is_refused(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match=f"processing_timeout={timeout!r} must be"):
        RecordingWorker(processing_timeout=timeout)


def test_the_constructor_timeout_overrides_the_class_attribute() -> None:
    assert HangingWorker().processing_timeout == 0.01
    assert HangingWorker(processing_timeout=3.0).processing_timeout == 3.0
    assert RecordingWorker().processing_timeout is None


# -- timeouts ---------------------------------------------------------------------------


async def test_a_process_exceeding_its_timeout_fails_with_processing_timeout() -> None:
    # Given
    worker = HangingWorker()

    # When / Then
    with pytest.raises(
        ProcessingTimeout, match=re.escape("did not finish within 0.01 s")
    ) as caught:
        await worker.handle(make_message())
    assert caught.value.worker_id == worker.id
    assert caught.value.timeout == 0.01
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_process_within_its_timeout_succeeds() -> None:
    worker = RecordingWorker(processing_timeout=SOON)
    await worker.handle(make_message(b"[1]"))
    assert worker.payloads == [[1]]


async def test_a_timed_out_message_is_retried_then_dead_lettered_like_any_failure(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a worker that never finishes within its timeout
    worker = HangingWorker()
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=2, **FAST_RETRY)]
    )
    await memory_backend.add_message(queue_name, {"order": 1})

    # When
    failures = await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then
    assert worker.attempts == 2
    assert [type(e) for e in failures.exceptions] == [ProcessingTimeout, ProcessingTimeout]
    [dead] = memory_backend.dead_letters(queue_name)
    assert dead.headers["x-exception-type"] == "foxwork.errors.ProcessingTimeout"
    assert "did not finish within 0.01 s" in dead.headers["x-failure-reason"]
    assert dead.headers["x-final-attempt"] == 2


# -- blocking code ----------------------------------------------------------------------


class BlockingWorker(Worker[Any]):
    """A plain `def process`: waits (blocking) until another message opens the gate."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__("blocking")
        self.gate = gate
        self.thread_ids: list[int] = []
        self.gate_opened: list[bool] = []

    def process(self, message: Message[Any]) -> None:
        self.thread_ids.append(threading.get_ident())
        self.gate_opened.append(self.gate.wait(timeout=SOON))


class GateOpener(Worker[Any]):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__("opener")
        self.gate = gate

    async def process(self, message: Message[Any]) -> None:
        self.gate.set()


async def test_a_sync_process_runs_in_a_thread_while_the_loop_serves_other_messages(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a blocking worker that waits for the async one to open the gate
    gate = threading.Event()
    blocking, opener = BlockingWorker(gate), GateOpener(gate)
    pool = make_pool(blocking, opener, middleware=[AckNackMiddleware()])
    await memory_backend.add_message(queue_name, "first, to the blocking worker")
    await memory_backend.add_message(queue_name, "second, to the async worker")

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then the blocking call ran off the loop's thread, and the loop opened the gate meanwhile
    assert blocking.thread_ids and blocking.thread_ids[0] != threading.get_ident()
    assert blocking.gate_opened == [True]


# -- payload model ----------------------------------------------------------------------


async def test_a_valid_payload_arrives_as_the_worker_s_model(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    worker = OrderWorker()
    pool = make_pool(worker, middleware=[AckNackMiddleware(), RetryMiddleware()])
    await memory_backend.add_message(queue_name, {"sku": "A-1", "qty": 2})

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then
    assert worker.orders == [Order(sku="A-1", qty=2)]
    assert isinstance(worker.orders[0], Order)


async def test_an_invalid_payload_is_dead_lettered_without_retry_naming_the_field(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given retries configured, and a payload whose qty is not a number
    worker = OrderWorker()
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=5, **FAST_RETRY)]
    )
    await memory_backend.add_message(queue_name, {"sku": "A-1", "qty": "lots"})

    # When
    failures = await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then
    assert worker.orders == []
    assert memory_backend.retried[queue_name] == 0
    [dead] = memory_backend.dead_letters(queue_name)
    assert "qty" in dead.headers["x-failure-reason"]
    assert "payload does not match Order" in dead.headers["x-failure-reason"]
    assert dead.headers["x-exception-type"] == "foxwork.errors.PoisonMessage"
    assert [type(e) for e in failures.exceptions] == [PoisonMessage]


# -- bad input never crashes a worker ---------------------------------------------------


JSON = MessageProperties(content_type="application/json")


@pytest.mark.parametrize(
    ("body", "properties", "reason"),
    [
        pytest.param(b"{not json", JSON, "not valid JSON", id="undecodable-json"),
        pytest.param(
            b"\xff\xfe\xfa",
            MessageProperties(content_type="text/plain"),
            "not valid utf-8 text",
            id="invalid-utf8-text",
        ),
        pytest.param(
            b"{}",
            JSON.with_header("x-retry-attempt", "abc"),
            "invalid x-retry-attempt header 'abc'",
            id="retry-attempt-abc",
        ),
        pytest.param(
            b"{}",
            JSON.with_header("x-retry-attempt", -5),
            "invalid x-retry-attempt header -5",
            id="retry-attempt-negative",
        ),
        pytest.param(
            b"{}",
            JSON.with_header("x-retry-attempt", 10**12),
            "invalid x-retry-attempt header 1000000000000",
            id="retry-attempt-huge",
        ),
        pytest.param(
            b'"' + b"x" * 64 + b'"',
            JSON,
            "body of 66 bytes exceeds max_body_size of 32 bytes",
            id="oversize-body",
        ),
    ],
)
async def test_bad_input_is_dead_lettered_with_a_clear_reason_and_the_pool_keeps_running(
    make_pool: PoolFactory,
    make_memory_backend: Any,
    queue_name: str,
    body: bytes,
    properties: MessageProperties,
    reason: str,
) -> None:
    # Given a pool with retries, and one bad message
    backend: MemoryBackend = await make_memory_backend(max_body_size=32)
    worker = RecordingWorker()
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=5, **FAST_RETRY)]
    )
    await backend.enqueue_with_properties(queue_name, body, properties)

    # When
    await run_until_idle(pool, backend, queue_name, expect_failures=True)

    # Then it went to the DLQ at once, with the reason
    [dead] = backend.dead_letters(queue_name)
    assert reason in dead.headers["x-failure-reason"]
    assert dead.headers["x-final-attempt"] == 1
    assert backend.retried[queue_name] == 0

    # And the pool still processes good messages
    assert pool.state is PoolState.RUNNING
    await backend.add_message(queue_name, {"ok": True})
    await run_until_idle(pool, backend, queue_name)
    assert worker.payloads[-1] == {"ok": True}


# -- hooks ------------------------------------------------------------------------------


class HookedWorker(RecordingWorker):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def startup(self) -> None:
        self.events.append("startup")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


async def test_the_pool_calls_worker_startup_and_shutdown_once(
    make_pool: PoolFactory, memory_backend: MemoryBackend
) -> None:
    # Given
    worker = HookedWorker()
    pool = make_pool(worker)

    # When
    await pool.start(memory_backend)
    await pool.shutdown()
    await pool.shutdown()

    # Then
    assert worker.events == ["startup", "shutdown"]
