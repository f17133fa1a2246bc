"""On a three-node cluster with a quorum queue, SIGKILL of the node the pool is connected to
(which also leads the queue) loses nothing: the pool fails over to another node's URL and
processes every message."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness.rabbitmq import RabbitMQCluster

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

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
async def test_pool_fails_over_when_its_node_is_killed(
    cluster: RabbitMQCluster, fault_queue: str, make_run: RunFactory
) -> None:
    n = 5_000
    began = time.monotonic()
    ids = numbered_ids(n)
    # Declared through the first node, so the queue's leader is where the pool connects.
    await publish_numbered(cluster.urls[0], fault_queue, ids, queue_type="quorum")
    ledger = Ledger(ids)
    run = make_run(
        urls=cluster.urls,
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.02)],
        concurrency=20,
        queue_type="quorum",
    )
    await run.start()
    port = run.connected_port
    victim = next(node for node in cluster.nodes if node.amqp_port == port)
    survivors = [node for node in cluster.nodes if node is not victim]
    await ledger.wait_processed(n // 5, timeout=60)

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    await in_thread(victim.kill)
    await run.wait_lost(killed_at, timeout=15)
    processed_at_kill = ledger.processed
    assert processed_at_kill < n, "the stream ended before the kill: pace the worker slower"
    run.assert_running()
    failover = await run.wait_connected(timeout=60)
    assert run.connected_port in {node.amqp_port for node in survivors}
    run.assert_running()

    await ledger.wait_complete(timeout=120)
    probe = QueueProbe(survivors[0].url)
    try:
        queues = topology_names(fault_queue, RETRY_TIER_MS)
        await run.drain(probe, queues, timeout=60)
        run.assert_running()
        assert run.backend.reconnects >= 1
        await run.stop()
        await probe.assert_empty(queues)
    finally:
        await probe.close()
    ledger.assert_complete()
    report(
        "cluster: SIGKILL of the pool's node (quorum queue leader)",
        n,
        ledger,
        began,
        killed=victim.name,
        failed_over_to=run.rabbit.url,
        failover_s=round(failover, 1),
        processed_before_kill=processed_at_kill,
        settle_failures=run.rabbit.settle_failures,
    )
