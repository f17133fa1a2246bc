"""Retries and dead letters on a quorum queue (the schedule, head-of-line blocking and the
rest are in tests/contract, run on every backend)."""

from __future__ import annotations

import pytest

from foxwork import MessageProperties, TopologyConflict

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while


def json_message(message_id: str) -> MessageProperties:
    return MessageProperties(content_type="application/json", message_id=message_id)


async def test_retry_and_dead_letter_work_the_same_on_a_quorum_queue(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a quorum queue, one message that fails twice and one that always fails
    backend = await make_backend(queue_type="quorum", delivery_limit=5)
    worker = Recorder(fail_while(lambda m: m.id == "broken" or m.attempt <= 2))
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", json_message("flaky"))
    await backend.publish(queue_name, b"{}", json_message("broken"))

    # When the pool runs them with three attempts
    pool = await start_pool(backend, worker)
    await worker.wait_processed("flaky")
    await worker.wait_for(lambda r: len(r.of("broken")) == 3, what="three attempts of 'broken'")
    await pool.shutdown(timeout=5)

    # Then the flaky one succeeded on its third attempt, the broken one is in Q-dlq
    assert [d.retry_attempt for d in worker.of("flaky")] == [None, 1, 2]
    assert worker.processed == ["flaky"]
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "broken"
    assert dead.headers["x-final-attempt"] == 3
    assert dead.headers["x-exception-type"] == "builtins.RuntimeError"
    assert await probe.ready(queue_name) == 0
    # and the queue really is a quorum queue
    classic = await make_backend()
    with pytest.raises(TopologyConflict, match="x-queue-type"):
        await classic.declare(queue_name)
