"""SIGTERM to `foxwork run` mid-stream, as an orchestrator sends it: in-flight messages
finish and are acked, prefetched ones go back to the queue, and a second SIGTERM forces the
exit without losing anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiormq
import pytest

from foxwork import MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env
from tests.rabbitmq.support import RabbitProbe, wait_until

MESSAGES = 150
CONCURRENCY = 50
PREFETCH = 100
#: Seconds each message takes: long enough that no message finishes, and no 51st starts,
#: between the 50th start and the signal.
WORK_SECONDS = 2.0
#: Seconds each message takes in the forced-exit scenario: far longer than the test waits,
#: so only the second signal can end the drain in time.
LONG_WORK_SECONDS = 30.0
IDS = [f"m{i:03d}" for i in range(MESSAGES)]


@pytest.fixture
def queue() -> str:
    return f"sigterm-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def broker(
    rabbitmq_url: str, queue: str, request: pytest.FixtureRequest
) -> AsyncIterator[RabbitProbe]:
    """Looks at the queue on a connection of its own; deletes the queue's topology after."""
    probe = RabbitProbe(rabbitmq_url, connection_name=request.node.nodeid)
    await probe.connect()
    yield probe
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await probe.delete_queues(queue, f"{queue}-dlq")
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await probe.delete_exchanges(f"{queue}-retry_exchange")
    await probe.close()


async def publish(url: str, queue: str, ids: list[str]) -> None:
    """Publish one persistent JSON message per id, each confirmed."""
    async with RabbitMQBackend(
        url=url, queue=queue, connection_name="sigterm-publisher"
    ) as backend:
        properties = MessageProperties(content_type="application/json")
        await asyncio.gather(
            *(
                backend.publish(
                    queue, json.dumps({"id": i}).encode(), properties.with_message_id(i)
                )
                for i in ids
            )
        )


def run_slow_pool(url: str, queue: str, files: Path, work_seconds: float) -> FoxworkProcess:
    return FoxworkProcess(
        "run",
        "tests.apps.slow:pool",
        "--url",
        url,
        "--queue",
        queue,
        "--concurrency",
        str(CONCURRENCY),
        "--prefetch",
        str(PREFETCH),
        "--shutdown-timeout",
        "30",
        env=foxwork_env(
            FOXWORK_TEST_STARTED_FILE=str(files / "started"),
            FOXWORK_TEST_FINISHED_FILE=str(files / "finished"),
            FOXWORK_TEST_SLEEP=str(work_seconds),
        ),
    )


async def start_mid_stream(foxwork: FoxworkProcess, url: str, queue: str, files: Path) -> None:
    """Wait until the pool consumes, publish `MESSAGES`, and wait until `CONCURRENCY` of
    them are being processed."""
    await foxwork.wait_for(r"pool 'slow' running on .* \(concurrency 50, prefetch 100\)")
    await publish(url, queue, IDS)

    async def in_flight() -> bool:
        return len(read_lines(files / "started")) >= CONCURRENCY

    await wait_until(in_flight, what=f"{CONCURRENCY} messages started")


async def test_sigterm_finishes_in_flight_messages_and_returns_prefetched_ones(
    rabbitmq_url: str, queue: str, broker: RabbitProbe, tmp_path: Path
) -> None:
    # Given `foxwork run` with 50 of 150 messages in flight and 50 more prefetched
    async with run_slow_pool(rabbitmq_url, queue, tmp_path, WORK_SECONDS) as foxwork:
        await start_mid_stream(foxwork, rabbitmq_url, queue, tmp_path)

        # When it receives SIGTERM
        in_flight = read_lines(tmp_path / "started")
        foxwork.send_signal(signal.SIGTERM)

        # Then it exits with code 0 after a graceful shutdown
        assert await foxwork.wait(timeout=30) == 0, foxwork.output

    started = read_lines(tmp_path / "started")
    finished = read_lines(tmp_path / "finished")
    # and no message started after the signal, and every one in flight then finished
    assert sorted(started) == sorted(in_flight)
    assert len(in_flight) == len(set(in_flight)) == CONCURRENCY
    assert sorted(finished) == sorted(in_flight)
    [summary] = await foxwork.wait_for(
        r"graceful shutdown complete: (\d+) in-flight message\(s\) finished, (\d+) nacked"
    )
    assert (int(summary[1]), int(summary[2])) == (len(finished), 0)
    # and the unstarted ones, prefetched or not, are back in the queue; the finished ones
    # were acked (with the connection closed, nothing can hide as unacked)
    await broker.wait_for_ready(queue, MESSAGES - len(finished))
    in_queue = [m.message_id or "" for m in await broker.take(queue)]
    assert len(in_queue) == len(set(in_queue))
    assert not set(in_queue) & set(finished)
    # and nothing was lost
    assert sorted(set(in_queue) | set(finished)) == IDS


async def test_a_second_sigterm_forces_the_exit_and_loses_nothing(
    rabbitmq_url: str, queue: str, broker: RabbitProbe, tmp_path: Path
) -> None:
    # Given `foxwork run` draining after a SIGTERM, with 50 messages that take 30 s
    async with run_slow_pool(rabbitmq_url, queue, tmp_path, LONG_WORK_SECONDS) as foxwork:
        await start_mid_stream(foxwork, rabbitmq_url, queue, tmp_path)
        foxwork.send_signal(signal.SIGTERM)
        await foxwork.wait_for(r"received SIGTERM: graceful shutdown")

        # When a second SIGTERM arrives
        foxwork.send_signal(signal.SIGTERM)

        # Then it exits at once (long before the messages could finish) with 128 + 15
        assert await foxwork.wait(timeout=LONG_WORK_SECONDS / 3) == 143, foxwork.output

    assert re.search(r"received SIGTERM again: forcing shutdown", foxwork.output)
    finished = read_lines(tmp_path / "finished")
    assert finished == []
    [summary] = await foxwork.wait_for(
        r"forced shutdown complete: (\d+) in-flight message\(s\) finished, (\d+) nacked"
    )
    started = read_lines(tmp_path / "started")
    assert (int(summary[1]), int(summary[2])) == (0, len(started)), foxwork.output
    # and every message, the interrupted ones included, is back in the queue: none lost
    await broker.wait_for_ready(queue, MESSAGES)
    in_queue = [m.message_id or "" for m in await broker.take(queue)]
    assert sorted(in_queue) == IDS
