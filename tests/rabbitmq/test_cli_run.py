"""`foxwork run` against the session broker, as a subprocess: several worker processes
under one parent (`--processes`), and the health endpoints (`--http-port`) through a broker
outage."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foxwork import MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env
from tests.apps.recorder import CRASH_ID
from tests.harness.rabbitmq import RabbitMQNode

from .support import RabbitProbe, delete_topology, wait_until

#: Seconds to wait for a worker process to start, or for a restarted one to come back
#: (the parent waits 1 s before a restart).
START_TIMEOUT = 20.0
#: Seconds the ResilientBackend may take to notice an outage and to reconnect after it.
RECONNECT_TIMEOUT = 30.0


@pytest.fixture
async def publisher(
    rabbitmq_url: str, queue_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[RabbitMQBackend]:
    """A connected backend for publishing to `queue_name`; the queue's topology is deleted
    at teardown (through a new connection: a test may have dropped every connection)."""
    backend = RabbitMQBackend(url=rabbitmq_url, queue=queue_name, connection_name="publisher")
    await backend.connect()
    await backend.declare(queue_name)
    yield backend
    await backend.close()
    probe = RabbitProbe(rabbitmq_url, connection_name=request.node.nodeid)
    await probe.connect()
    try:
        await delete_topology(probe, backend)
    finally:
        await probe.close()


async def publish(backend: RabbitMQBackend, queue: str, ids: list[str]) -> None:
    properties = MessageProperties(content_type="application/json")
    await asyncio.gather(
        *(
            backend.publish(queue, json.dumps({"id": i}).encode(), properties.with_message_id(i))
            for i in ids
        )
    )


class Processed:
    """The lines "PROCESS_INDEX PID MESSAGE_ID" that `tests.apps.recorder` appends."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[tuple[int, int, str]]:
        return [
            (int(index), int(pid), message_id)
            for index, pid, message_id in (line.split() for line in read_lines(self.path))
        ]

    def ids(self) -> collections.Counter[str]:
        return collections.Counter(message_id for _, _, message_id in self.records())

    async def wait_for_all(self, ids: list[str], timeout: float = START_TIMEOUT) -> None:
        async def complete() -> bool:
            return set(ids) <= set(self.ids())

        await wait_until(complete, what=f"all of {len(ids)} ids processed", timeout=timeout)


def recorder(url: str, queue: str, tmp_path: Path, *options: str) -> FoxworkProcess:
    return FoxworkProcess(
        "run",
        "tests.apps.recorder:pool",
        "--url",
        url,
        "--queue",
        queue,
        *options,
        env=foxwork_env(
            FOXWORK_TEST_PROCESSED_FILE=str(tmp_path / "processed"),
            FOXWORK_TEST_CRASH_MARKER=str(tmp_path / "crashed"),
        ),
    )


# -- --processes -------------------------------------------------------------------------


async def test_two_worker_processes_share_the_queue_and_stop_on_one_sigterm(
    rabbitmq_url: str,
    queue_name: str,
    publisher: RabbitMQBackend,
    probe: RabbitProbe,
    tmp_path: Path,
) -> None:
    # Given `foxwork run --processes 2` with both worker processes consuming, a few
    # messages at a time each
    ids = [f"m{i:03d}" for i in range(60)]
    processed = Processed(tmp_path / "processed")
    options = ("--processes", "2", "--concurrency", "1", "--prefetch", "2")
    async with recorder(rabbitmq_url, queue_name, tmp_path, *options) as foxwork:
        await foxwork.wait_for(r"pool 'recorder' running on", count=2, timeout=START_TIMEOUT)

        # When messages arrive
        await publish(publisher, queue_name, ids)

        # Then both worker processes take a share of them
        await processed.wait_for_all(ids)
        pids = {pid for _, pid, _ in processed.records()}
        assert {index for index, _, _ in processed.records()} == {0, 1}
        assert len(pids) == 2
        assert pids == set(foxwork.child_pids)
        assert foxwork.pid not in pids

        # When the parent receives SIGTERM
        foxwork.send_signal(signal.SIGTERM)

        # Then it forwards it, both stop gracefully, and it exits with code 0
        assert await foxwork.wait(timeout=START_TIMEOUT) == 0, foxwork.output
    assert len(re.findall(r"graceful shutdown complete", foxwork.output)) == 2
    # and every message was processed at least once, none left in the queue
    assert set(processed.ids()) == set(ids)
    await probe.wait_for_ready(queue_name, 0)


async def test_a_crashed_worker_process_is_restarted_and_its_message_redelivered(
    rabbitmq_url: str,
    queue_name: str,
    publisher: RabbitMQBackend,
    probe: RabbitProbe,
    tmp_path: Path,
) -> None:
    # Given `foxwork run --processes 2`, whose worker processes die on the first "crash"
    ids = [f"m{i:03d}" for i in range(20)]
    processed = Processed(tmp_path / "processed")
    options = ("--processes", "2", "--concurrency", "2")
    async with recorder(rabbitmq_url, queue_name, tmp_path, *options) as foxwork:
        await foxwork.wait_for(r"pool 'recorder' running on", count=2, timeout=START_TIMEOUT)

        # When a "crash" message arrives among others
        await publish(publisher, queue_name, [*ids[:10], CRASH_ID, *ids[10:]])

        # Then the parent notices the death and restarts that worker process
        [exited] = await foxwork.wait_for(
            r"worker process (\d) \(pid (\d+)\) exited with code 3 after [\d.]+ s; "
            r"restarting it in [\d.]+ s",
            timeout=START_TIMEOUT,
        )
        [_, restarted] = await foxwork.wait_for(
            rf"worker process {exited[1]} started \(pid (\d+)\)", count=2, timeout=START_TIMEOUT
        )
        assert restarted[1] != exited[2]
        assert (tmp_path / "crashed").exists()
        # and "crash" is redelivered and processed, like everything else
        await processed.wait_for_all([*ids, CRASH_ID])
        crash_pids = [pid for _, pid, message_id in processed.records() if message_id == CRASH_ID]
        assert crash_pids and int(exited[2]) not in crash_pids
        # and the restarted worker process consumes again, next to the other one
        await foxwork.wait_for(r"pool 'recorder' running on", count=3, timeout=START_TIMEOUT)
        more = [f"n{i:03d}" for i in range(40)]
        await publish(publisher, queue_name, more)
        await processed.wait_for_all(more)
        assert int(restarted[1]) in {
            pid for _, pid, message_id in processed.records() if message_id in more
        }

        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait(timeout=START_TIMEOUT) == 0, foxwork.output
    await probe.wait_for_ready(queue_name, 0)


async def test_a_sigterm_while_the_worker_processes_start_still_exits_0(
    rabbitmq_url: str, queue_name: str, publisher: RabbitMQBackend, tmp_path: Path
) -> None:
    # Given `foxwork run --processes 2` that has just started its worker processes (they
    # are still importing, before they handle signals)
    async with recorder(rabbitmq_url, queue_name, tmp_path, "--processes", "2") as foxwork:
        await foxwork.wait_for(r"worker process 1 started", timeout=START_TIMEOUT)

        # When it receives SIGTERM at once
        foxwork.send_signal(signal.SIGTERM)

        # Then it still stops cleanly, with exit code 0
        assert await foxwork.wait(timeout=START_TIMEOUT) == 0, foxwork.output


# -- --http-port -------------------------------------------------------------------------


async def http_get(url: str) -> tuple[int, str]:
    """GET `url` (http://host:port/path); returns the status and the body."""
    match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    host, port, path = match[1], int(match[2]), match[3]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        async with asyncio.timeout(5):
            response = await reader.read()  # the server closes the connection
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def wait_for_status(url: str, status: int, *, timeout: float) -> None:
    async def reached() -> bool:
        return (await http_get(url))[0] == status

    await wait_until(reached, what=f"{url} answers {status}", timeout=timeout)


@pytest.mark.faults
async def test_ready_follows_the_broker_connection_and_metrics_count_processed_messages(
    rabbitmq_node: RabbitMQNode,
    rabbitmq_url: str,
    queue_name: str,
    publisher: RabbitMQBackend,
    tmp_path: Path,
) -> None:
    # Given `foxwork run --http-port 0`, consuming
    processed = Processed(tmp_path / "processed")
    async with recorder(rabbitmq_url, queue_name, tmp_path, "--http-port", "0") as foxwork:
        [serving] = await foxwork.wait_for(
            r"serving /health, /ready and /metrics on (http://127\.0\.0\.1:(\d+))"
        )
        base = serving[1]
        assert int(serving[2]) > 0
        await foxwork.wait_for(r"pool 'recorder' running on")

        # Then it is alive and ready
        assert (await http_get(f"{base}/health"))[0] == 200
        status, body = await http_get(f"{base}/ready")
        assert status == 200, body

        # When it has processed three messages
        await publish(publisher, queue_name, ["a", "b", "c"])
        await processed.wait_for_all(["a", "b", "c"])

        # Then /metrics counts them
        status, metrics = await http_get(f"{base}/metrics")
        assert status == 200
        counts = re.findall(r"^foxwork_messages_processed_total\{[^}]*\} (\S+)$", metrics, re.M)
        assert sum(float(c) for c in counts) == 3, metrics

        # When the broker stops its applications (every connection drops)
        try:
            await asyncio.to_thread(rabbitmq_node.ctl, "stop_app")

            # Then the process is not ready any more, and says why
            await wait_for_status(f"{base}/ready", 503, timeout=RECONNECT_TIMEOUT)
            status, body = await http_get(f"{base}/ready")
            assert "backend is not connected" in json.loads(body)["reasons"], body
            # while it stays alive
            assert (await http_get(f"{base}/health"))[0] == 200
        finally:
            await asyncio.to_thread(rabbitmq_node.ctl, "start_app")

        # And when the broker is back, it reconnects and is ready again
        await wait_for_status(f"{base}/ready", 200, timeout=RECONNECT_TIMEOUT)
        # and consumes again
        await publisher.connect()  # its connection dropped too
        await publish(publisher, queue_name, ["d"])
        await processed.wait_for_all(["d"])

        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0, foxwork.output
