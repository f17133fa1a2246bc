"""A message that kills the worker process every time: on a quorum queue the broker's
delivery limit dead-letters it, and every other message is processed."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from foxwork import MessageProperties

from .conftest import BackendFactory
from .support import RabbitProbe

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("crash_worker.py")
#: Worker processes started at most: three die on the poison (delivery limit 2 means three
#: deliveries), one more processes the rest; the margin only bounds a broken run.
MAX_RUNS = 8
#: Seconds one worker process may run before it must have died or finished the work.
RUN_TIMEOUT = 20.0


async def test_a_message_that_crashes_the_worker_process_is_dead_lettered_by_the_delivery_limit(
    make_backend: BackendFactory,
    probe: RabbitProbe,
    queue_name: str,
    rabbitmq_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # Given a quorum queue with a delivery limit of 2, holding a poison among good messages
    backend = await make_backend(queue_type="quorum", delivery_limit=2)
    await backend.declare(queue_name)
    good = [f"good-{i}" for i in range(6)]
    for message_id in [*good[:3], "poison", *good[3:]]:
        await backend.publish(queue_name, b"{}", MessageProperties(message_id=message_id))
    processed = tmp_path / "processed.txt"
    processed.touch()
    log = tmp_path / "worker.log"
    dlq = f"{queue_name}-dlq"

    async def all_done() -> bool:
        return set(processed.read_text().split()) == set(good) and await probe.ready(dlq) == 1

    async def run_worker() -> int | None:
        """Run one worker process until it dies (its exit status) or the work is done
        (then stop it and return None)."""
        with log.open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                rabbitmq_url,
                queue_name,
                str(processed),
                request.node.nodeid,
                stdout=output,
                stderr=output,
            )
        exited = asyncio.ensure_future(process.wait())
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                while not exited.done():
                    if await all_done():
                        process.send_signal(signal.SIGTERM)
                        assert await exited == 0, log.read_text()
                        return None
                    await asyncio.wait([exited], timeout=0.1)
            return exited.result()
        finally:
            if process.returncode is None:
                process.kill()
            await exited

    # When the worker process is started again each time it dies
    exits: list[int] = []
    for _ in range(MAX_RUNS):
        status = await run_worker()
        if status is None:
            break
        exits.append(status)
    else:
        pytest.fail(f"not done after {MAX_RUNS} worker processes; exits {exits}\n{log.read_text()}")

    # Then the poison killed three processes (its three deliveries), no more
    assert exits == [1, 1, 1], log.read_text()
    # and the broker dead-lettered it for its delivery limit
    [dead] = await probe.take(dlq)
    assert dead.message_id == "poison"
    [death] = dead.headers["x-death"]
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == queue_name
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    # and every other message was processed, each exactly once
    assert sorted(processed.read_text().split()) == sorted(good)
    assert await probe.ready(queue_name) == 0
