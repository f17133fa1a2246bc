"""A message that kills the worker process every time: it ends in the DLQ, and every other
message is processed.

On a quorum queue the broker's delivery limit dead-letters it; on a classic queue
`RetryMiddleware` counts its crashes in a header of a confirmed copy, so the count survives
the restarts, even for a message published without a message id. After a crash the
consumer takes redelivered messages one at a time, so the messages checked out beside the
crasher are not charged with its crashes.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from foxwork import MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend

from .conftest import BackendFactory
from .support import RabbitProbe, publish_without_message_id

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("crash_worker.py")
#: Worker processes started at most; the margin only bounds a broken run.
MAX_RUNS = 8
#: Seconds one worker process may run before it must have died or finished the work.
RUN_TIMEOUT = 20.0


class CrashRuns:
    """Starts `crash_worker.py` again each time it dies, until `done()` holds."""

    def __init__(
        self,
        *,
        rabbitmq_url: str,
        queue: str,
        tmp_path: Path,
        connection_name: str,
        queue_type: str,
        prefetch: int,
    ) -> None:
        self.args = [
            rabbitmq_url,
            queue,
            str(tmp_path / "processed.txt"),
            connection_name,
            queue_type,
            str(prefetch),
        ]
        self.processed_file = tmp_path / "processed.txt"
        self.processed_file.touch()
        self.log = tmp_path / "worker.log"

    @property
    def processed(self) -> list[str]:
        return sorted(self.processed_file.read_text().split())

    async def run_until(self, done: Callable[[], Awaitable[bool]]) -> list[int]:
        """The exit status of each worker process that died before `done()` held."""
        exits: list[int] = []
        for _ in range(MAX_RUNS):
            if await done():  # the last process's death finished the work (broker-side)
                return exits
            status = await self._run_one(done)
            if status is None:
                return exits
            exits.append(status)
        pytest.fail(f"not done after {MAX_RUNS} worker processes; exits {exits}\n{self.text}")

    @property
    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    async def _run_one(self, done: Callable[[], Awaitable[bool]]) -> int | None:
        """Run one worker process until it dies (its exit status) or the work is done
        (then stop it and return None)."""
        with self.log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), *self.args, stdout=output, stderr=output
            )
        exited = asyncio.ensure_future(process.wait())
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                while not exited.done():
                    if await done():
                        process.send_signal(signal.SIGTERM)
                        # 0: stopped gracefully; -SIGTERM: stopped before it installed its
                        # handler (the broker dead-letters a crasher a moment after the
                        # crash, so the work may be done as the next process starts).
                        assert await exited in (0, -signal.SIGTERM), self.text
                        return None
                    await asyncio.wait([exited], timeout=0.1)
            return exited.result()
        finally:
            if process.returncode is None:
                process.kill()
            await exited


@pytest.fixture
def crash_runs(
    rabbitmq_url: str, queue_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., CrashRuns]:
    def make(*, queue_type: str, prefetch: int = 1) -> CrashRuns:
        return CrashRuns(
            rabbitmq_url=rabbitmq_url,
            queue=queue_name,
            tmp_path=tmp_path,
            connection_name=request.node.nodeid,
            queue_type=queue_type,
            prefetch=prefetch,
        )

    return make


async def declared(make_backend: BackendFactory, queue: str, **fields: object) -> RabbitMQBackend:
    backend = await make_backend(delivery_limit=2, **fields)
    await backend.declare(queue)
    return backend


async def test_a_message_that_crashes_the_worker_process_is_dead_lettered_by_the_delivery_limit(
    make_backend: BackendFactory,
    probe: RabbitProbe,
    queue_name: str,
    crash_runs: Callable[..., CrashRuns],
) -> None:
    # Given a quorum queue with a delivery limit of 2, holding a poison among good messages
    backend = await declared(make_backend, queue_name, queue_type="quorum")
    good = [f"good-{i}" for i in range(6)]
    for message_id in [*good[:3], "poison", *good[3:]]:
        await backend.publish(
            queue_name, message_id.encode(), MessageProperties(message_id=message_id)
        )
    runs = crash_runs(queue_type="quorum")
    dlq = f"{queue_name}-dlq"

    async def all_done() -> bool:
        return runs.processed == sorted(good) and await probe.ready(dlq) == 1

    # When the worker process is started again each time it dies
    exits = await runs.run_until(all_done)

    # Then the poison killed three processes (its three deliveries), no more
    assert exits == [1, 1, 1], runs.text
    # and the broker dead-lettered it for its delivery limit
    [dead] = await probe.take(dlq)
    assert dead.message_id == "poison"
    [death] = dead.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == queue_name
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    # and every other message was processed, each exactly once
    assert runs.processed == sorted(good)
    assert await probe.ready(queue_name) == 0


async def test_good_messages_checked_out_beside_a_crashing_one_are_not_dead_lettered_with_it(
    make_backend: BackendFactory,
    probe: RabbitProbe,
    queue_name: str,
    crash_runs: Callable[..., CrashRuns],
) -> None:
    # Given a quorum queue (delivery limit 2) holding a poison, then three good messages,
    # consumed with a prefetch of 4: all four are checked out when the poison kills the
    # process
    backend = await declared(make_backend, queue_name, queue_type="quorum")
    good = ["good-1", "good-2", "good-3"]
    for message_id in ["poison", *good]:
        await backend.publish(
            queue_name, message_id.encode(), MessageProperties(message_id=message_id)
        )
    runs = crash_runs(queue_type="quorum", prefetch=4)
    dlq = f"{queue_name}-dlq"

    async def all_settled() -> bool:
        # The queue is empty, the poison dead-lettered, and every good message processed
        # or dead-lettered too.
        dead = await probe.ready(dlq) or 0
        return (
            await probe.ready(queue_name) == 0
            and dead >= 1
            and (runs.processed == good or dead == 4)
        )

    # When the worker process is started again each time it dies
    await runs.run_until(all_settled)

    # Then the three good messages were processed, and only the poison was dead-lettered
    dead = await probe.take(dlq)
    assert [d.message_id for d in dead] == ["poison"], runs.text
    assert dead[0].headers["x-first-death-reason"] == "delivery_limit"
    assert runs.processed == good, runs.text


async def test_a_message_without_id_that_crashes_the_worker_process_is_dead_lettered_on_a_classic_queue(  # noqa: E501
    make_backend: BackendFactory,
    probe: RabbitProbe,
    queue_name: str,
    rabbitmq_url: str,
    crash_runs: Callable[..., CrashRuns],
) -> None:
    # Given a classic queue holding, without message ids, a poison between good messages,
    # and a worker process taking one delivery at a time (on a classic queue, messages
    # checked out beside a crashing one are counted with it; see README "Crash loops")
    await declared(make_backend, queue_name, queue_type="classic")
    good = ["good-1", "good-2", "good-3"]
    for body in ["good-1", "poison", "good-2", "good-3"]:
        await publish_without_message_id(rabbitmq_url, queue_name, body.encode())
    runs = crash_runs(queue_type="classic", prefetch=1)
    dlq = f"{queue_name}-dlq"

    async def all_done() -> bool:
        return runs.processed == good and await probe.ready(dlq) == 1

    # When the worker process (max_redeliveries=2) is started again each time it dies
    exits = await runs.run_until(all_done)

    # Then the poison killed two processes, and went to the DLQ with a crash-loop reason
    assert exits == [1, 1], runs.text
    [dead] = await probe.take(dlq)
    assert dead.body == b"poison"
    reason = dead.headers["x-failure-reason"]
    assert "redelivered 2 times without being settled" in reason
    assert "max_redeliveries=2" in reason
    # and every good message was processed exactly once
    assert runs.processed == good
    assert await probe.ready(queue_name) == 0
