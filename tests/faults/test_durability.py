"""Retry copies waiting in a delay tier, and dead letters in `Q-dlq`, survive a SIGKILL of the
broker: after the restart they are still there, and the retried ones come back and are
processed once their delay is over, by the same pool, which never stopped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from foxwork import DeadLetter, Message, RetryLater, wire
from foxwork.backends import ConnectionState
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import (
    RETRY_TIER_MS,
    Ledger,
    LedgerWorker,
    QueueProbe,
    RunFactory,
    in_thread,
    numbered_ids,
    publish_numbered,
    report,
    topology_names,
)

#: Seconds a retried copy waits in its tier. Longer than a kill + restart (about 7 s here,
#: 17 s seen on a loaded 2-core CI machine) plus the time to fail every message first, so
#: the copies are still waiting when the broker is back and can be counted.
RETRY_DELAY = 40.0
#: Slack for a TTL expiry against the test's clock (expiry is never early, but the two
#: clocks and the 10 ms TTL tier rounding differ slightly).
EXPIRY_SLACK = 0.5


@pytest.mark.timeout(180)
async def test_retry_copies_and_dead_letters_survive_a_broker_kill(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, make_run: RunFactory
) -> None:
    n = 5_000
    began = time.monotonic()
    ids = numbered_ids(n)
    # Two in five fail once with RetryLater(20 s), one in five is poison, the rest succeed.
    retried = {m for i, m in enumerate(ids) if i % 5 in (0, 1)}
    poison = {m for i, m in enumerate(ids) if i % 5 == 2}
    ledger = Ledger(set(ids) - poison)
    loop = asyncio.get_running_loop()
    first_failed: dict[str, float] = {}
    came_back: dict[str, float] = {}

    async def steer(message: Message[Any]) -> None:
        if message.id in poison:
            raise DeadLetter("poison for the durability test")
        if message.id in retried:
            if message.attempt == 1:
                first_failed.setdefault(message.id, loop.time())
                raise RetryLater(RETRY_DELAY)
            came_back.setdefault(message.id, loop.time())

    await publish_numbered(rabbitmq_node.url, fault_queue, ids)
    run = make_run(
        urls=rabbitmq_node.url,
        queue=fault_queue,
        workers=[LedgerWorker(ledger, hook=steer)],
        concurrency=20,
    )
    tier = wire.retry_queue_name(fault_queue, wire.delay_tier_ms(RETRY_DELAY))
    dlq = wire.dead_letter_queue_name(fault_queue)
    await run.start()
    await probe.wait_count(dlq, len(poison), timeout=30)
    await probe.wait_count(tier, len(retried), timeout=30)
    await run.drain(probe, [fault_queue], timeout=30)
    assert ledger.processed == n - len(poison) - len(retried)
    assert not came_back, "a retried copy came back before its delay"

    killed_at = loop.time()
    await in_thread(rabbitmq_node.kill)
    await in_thread(rabbitmq_node.restart)
    restart_s = loop.time() - killed_at
    waited = loop.time() - min(first_failed.values())
    assert waited < RETRY_DELAY - 1, (
        f"the broker took {restart_s:.1f} s to come back: the first copies ({waited:.1f} s "
        f"old) may be expiring already; raise RETRY_DELAY"
    )
    # Still there after the restart. More, not fewer, is possible: the pool may already have
    # reprocessed originals whose acks the broker lost in the crash (at-least-once).
    after_restart = await probe.counts([tier, dlq])
    assert (after_restart[tier] or 0) >= len(retried), after_restart
    assert (after_restart[dlq] or 0) >= len(poison), after_restart

    await run.wait_connected(timeout=30)
    run.assert_running()
    assert run.backend.reconnects >= 1
    await ledger.wait_complete(timeout=RETRY_DELAY + 30)
    queues = topology_names(fault_queue, RETRY_TIER_MS, wire.delay_tier_ms(RETRY_DELAY))
    await run.drain(probe, [q for q in queues if q != dlq], timeout=RETRY_DELAY + 30)
    run.assert_running()
    await run.stop()

    # Every retried message came back on a later attempt, and only after its delay.
    assert came_back.keys() == retried
    early = {m: came_back[m] - first_failed[m] for m in retried}
    too_early = {m: round(s, 2) for m, s in early.items() if s < RETRY_DELAY - EXPIRY_SLACK}
    assert not too_early, f"retried before their {RETRY_DELAY} s delay: {too_early}"

    # Every poison message is in the DLQ, with its diagnostic headers; take them out.
    dead = await probe.get_all(dlq)
    assert {m.message_id for m in dead} == poison
    for message in dead:
        assert message.headers[wire.FAILURE_REASON] == "poison for the durability test"
        assert message.headers[wire.ORIGINAL_QUEUE] == fault_queue
    await probe.assert_empty(queues)
    ledger.assert_complete()
    assert run.backend.state is ConnectionState.CLOSED
    report(
        "durability of retry tier + DLQ across SIGKILL",
        n,
        ledger,
        began,
        retried=len(retried),
        dead_lettered=len(poison),
        dlq_copies=len(dead),
        tier_after_restart=after_restart[tier],
        dlq_after_restart=after_restart[dlq],
        restart_s=round(restart_s, 1),
        first_retry_after_s=round(min(early.values()), 1),
    )
