"""On a real broker: a pool built without `middleware=` retries a transient error, its dead
letters carry `x-exception-traceback`, and `foxwork run --log-format json` writes JSON lines."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from foxwork import DeadLetter, Message, MessageProperties, Worker, WorkerPool, wire
from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.apps.process import FoxworkProcess
from tests.harness.rabbitmq import RabbitMQNode

from .support import RabbitProbe

#: Seconds to wait for a retried message: the default first retry comes after about 1 s.
RETRY_TIMEOUT = 15.0


class FlakyWorker(Worker[Any]):
    """Fails its first attempt with a transient error, then succeeds."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.attempts: list[int] = []
        self.succeeded = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.attempts.append(message.attempt)
        if message.attempt == 1:
            raise ConnectionError("connection reset by peer")
        self.succeeded.set()


class UnknownSku(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        raise DeadLetter(f"unknown SKU {message.payload['sku']!r}")


def json_logging_run(url: str, queue: str) -> FoxworkProcess:
    """`foxwork run tests.apps.json_logs:pool --log-format json` on `queue`."""
    return FoxworkProcess(
        "run", "tests.apps.json_logs:pool", "--url", url, "--queue", queue, "--log-format", "json"
    )


async def publish(backend: RabbitMQBackend, queue: str, payload: Any, message_id: str) -> None:
    await backend.publish(
        queue,
        json.dumps(payload).encode(),
        MessageProperties(content_type="application/json", message_id=message_id),
    )


async def test_a_pool_with_the_default_chain_retries_a_transient_error_and_succeeds(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool built without middleware= and a worker that loses a connection once
    worker = FlakyWorker()
    pool = WorkerPool(workers=[worker], queues=[queue_name])
    await pool.start(backend)
    try:
        # When a message arrives
        await publish(backend, queue_name, {"order": 1}, "order-1")

        # Then it comes back through the retry queue and succeeds on its second attempt
        await asyncio.wait_for(worker.succeeded.wait(), timeout=RETRY_TIMEOUT)
    finally:
        await pool.shutdown(timeout=5)
    assert worker.attempts == [1, 2]
    assert await probe.ready(wire.dead_letter_queue_name(queue_name)) == 0
    assert await probe.ready(queue_name) == 0


async def test_a_dead_letter_carries_the_traceback_of_its_exception(
    backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool with the default chain whose worker refuses a message
    pool = WorkerPool(workers=[UnknownSku()], queues=[queue_name])
    await pool.start(backend)
    dlq = wire.dead_letter_queue_name(queue_name)
    try:
        # When it is dead-lettered
        await publish(backend, queue_name, {"sku": "X-1"}, "order-2")
        await probe.wait_for_ready(dlq, 1)
    finally:
        await pool.shutdown(timeout=5)

    # Then the copy in Q-dlq carries the traceback next to the other diagnostic headers
    [dead] = await probe.take(dlq)
    headers = dead.properties.headers
    trace = headers[wire.EXCEPTION_TRACEBACK]
    trace = trace.decode() if isinstance(trace, bytes) else trace
    assert trace.startswith("Traceback (most recent call last):")
    assert "in process\n    raise DeadLetter(" in trace
    assert trace.endswith("foxwork.errors.DeadLetter: unknown SKU 'X-1'\n")
    assert len(trace.encode()) <= wire.MAX_EXCEPTION_TRACEBACK
    assert headers[wire.EXCEPTION_TYPE] == "foxwork.errors.DeadLetter"


async def test_foxwork_run_with_log_format_json_writes_one_json_object_per_line(
    rabbitmq_url: str, backend: RabbitMQBackend, queue_name: str
) -> None:
    # Given `foxwork run --log-format json` consuming from the broker
    async with json_logging_run(rabbitmq_url, queue_name) as foxwork:
        await foxwork.wait_for(r'"message": "pool \'json-logs\' running on')

        # When a message fails once with a transient error, then succeeds
        await publish(backend, queue_name, {"order": 3}, "order-3")
        await foxwork.wait_for(r'"message": "processing order-3"', count=2, timeout=RETRY_TIMEOUT)
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0, foxwork.output

    # Then every line of the log is a JSON object
    lines = [json.loads(line) for line in foxwork.lines]
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    # the worker's lines name the pool, queue, message, attempt and worker
    worker_lines = [line for line in lines if line["logger"] == "tests.apps.json_logs"]
    assert [line["attempt"] for line in worker_lines] == [1, 2]
    for line in worker_lines:
        assert line["pool"] == "json-logs" and line["queue"] == queue_name
        assert line["message_id"] == "order-3" and line["worker"] == "flaky"
    # and the failure is one WARNING saying it is retried
    [failure] = [line for line in lines if line["level"] == "WARNING"]
    assert failure["logger"] == "foxwork.pool"
    assert failure["message"].startswith(
        "message order-3 failed on attempt 1 in worker flaky: ConnectionError: connection "
        "reset by peer (at json_logs.py:"
    )
    assert "; retrying in " in failure["message"] and failure["attempt"] == 1


async def test_a_dropped_connection_is_one_warning_and_the_clients_own_lines_are_info(
    rabbitmq_node: RabbitMQNode, rabbitmq_url: str, queue_name: str, request: Any
) -> None:
    # Given `foxwork run` consuming, logging JSON lines at INFO
    async with json_logging_run(rabbitmq_url, queue_name) as foxwork:
        await foxwork.wait_for(r'"message": "pool \'json-logs\' running on')
        before = len(foxwork.lines)

        # When the broker closes its connection
        listed = await asyncio.to_thread(rabbitmq_node.ctl, "list_connections", "pid", "name")
        pids = [
            line.split("\t")[0]
            for line in listed.splitlines()
            if line.startswith("<") and request.node.nodeid not in line
        ]
        assert pids, listed
        for pid in pids:
            await asyncio.to_thread(rabbitmq_node.ctl, "close_connection", pid, "test")
        await foxwork.wait_for(r'"message": "reconnected after', timeout=RETRY_TIMEOUT)
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0, foxwork.output

    # Then foxwork said it once, and everything the AMQP client said is at INFO or below
    lines = [json.loads(line) for line in foxwork.lines[before:]]
    warnings = [line for line in lines if line["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert [line["logger"] for line in warnings] == ["foxwork.backends.rabbitmq"], warnings
    assert "lost" in warnings[0]["message"]
    client = [line for line in lines if line["logger"].startswith(("aiormq", "aio_pika"))]
    assert all(line["level"] in ("INFO", "DEBUG") for line in client), client
