"""No message is lost when the broker dies, drops every connection, or vanishes behind a
blackholed network, or when the TCP connection is reset; settling deliveries of a dead
channel neither crashes nor stalls the pool.

Each scenario publishes N numbered, persistent messages with confirms to a durable queue,
runs a pool (AckNack + Retry) on `ResilientBackend(RabbitMQBackend(...))`, injects the
fault mid-stream, and checks that every id was processed at least once and that the queue,
its retry tier and its DLQ end empty. Duplicates are printed (`pytest -s`), not asserted.
Network faults go through `TcpProxy` (tests/faults/proxy.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from foxwork import Message, MessageProperties, PublishNotConfirmed
from foxwork.backends import ConnectionState
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import (
    Ledger,
    LedgerWorker,
    QueueProbe,
    RunFactory,
    in_thread,
    numbered_ids,
    publish_numbered,
    wait_until,
)
from .proxy import TcpProxy

DISCONNECTED = ConnectionState.DISCONNECTED


def _now() -> float:
    return asyncio.get_running_loop().time()


@pytest.mark.timeout(120)
async def test_broker_killed_mid_stream_loses_nothing(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, make_run: RunFactory
) -> None:
    """SIGKILL of the broker mid-stream, restart: the pool stays RUNNING, reconnects, and
    every message is processed (unacked ones come back redelivered)."""
    n = 10_000
    began = time.monotonic()
    ids = numbered_ids(n)
    await publish_numbered(rabbitmq_node.url, fault_queue, ids)
    ledger = Ledger(ids)
    # ~2,000 messages/s at most: the kill lands well before the end.
    run = make_run(
        urls=rabbitmq_node.url,
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.01)],
        concurrency=20,
    )
    await run.start()
    await ledger.wait_processed(n // 5, timeout=30)

    killed_at = _now()
    await in_thread(rabbitmq_node.kill)
    await run.wait_lost(killed_at, timeout=10)
    processed_at_kill = ledger.processed
    assert processed_at_kill < n, "the stream ended before the kill: pace the worker slower"
    run.assert_running()

    await in_thread(rabbitmq_node.restart)
    await run.wait_connected(timeout=30)
    run.assert_running()

    queues = await run.settle(ledger, probe)
    assert run.backend.reconnects >= 1
    await run.finish(
        probe,
        queues,
        ledger,
        "broker SIGKILL + restart",
        n,
        began,
        processed_before_kill=processed_at_kill,
        reconnects=run.backend.reconnects,
        settle_failures=run.rabbit.settle_failures,
    )


@pytest.mark.timeout(120)
async def test_connections_closed_by_broker_every_two_seconds(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, make_run: RunFactory
) -> None:
    """`rabbitmqctl close_all_connections` every 2 s, ten times, while consuming."""
    n, closes, interval = 6_000, 10, 2.0
    began = time.monotonic()
    ids = numbered_ids(n)
    await publish_numbered(rabbitmq_node.url, fault_queue, ids)
    ledger = Ledger(ids)
    # At most 200 messages/s: 30 s of work, so all ten closes (about 20 s) land mid-stream.
    run = make_run(
        urls=rabbitmq_node.url,
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.05)],
        concurrency=10,
    )
    await run.start()

    last_close = _now()
    for _ in range(closes):
        await run.wait_connected(timeout=15)
        await asyncio.sleep(max(0.0, last_close + interval - _now()))  # the fault's pacing
        assert ledger.processed < n, "the stream ended before the last close: pace it slower"
        last_close = _now()
        await in_thread(rabbitmq_node.ctl, "close_all_connections", "test")
        await run.wait_lost(last_close, timeout=10)
        run.assert_running()

    queues = await run.settle(ledger, probe)
    assert run.backend.reconnects >= closes
    await run.finish(
        probe,
        queues,
        ledger,
        "close_all_connections x10",
        n,
        began,
        reconnects=run.backend.reconnects,
        settle_failures=run.rabbit.settle_failures,
    )


@pytest.mark.timeout(120)
async def test_blackholed_connection_detected_by_heartbeat_then_failover(
    rabbitmq_node: RabbitMQNode,
    fault_queue: str,
    probe: QueueProbe,
    proxy: TcpProxy,
    make_run: RunFactory,
) -> None:
    """The pool's path to the broker goes silent (no bytes, no FIN, no RST). Heartbeats find
    the dead connection within (heartbeat + 1) * 3 s (+3 s slack); the reconnect tries the
    blackholed proxy first, whose connect hangs until `connect_timeout`, then succeeds on the
    second URL, straight to the broker."""
    n, heartbeat, connect_timeout = 5_000, 2, 3.0
    began = time.monotonic()
    direct = rabbitmq_node.url
    ids = numbered_ids(n)
    await publish_numbered(direct, fault_queue, ids)
    ledger = Ledger(ids)
    run = make_run(
        urls=[proxy.url_for(direct), direct],
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.02)],
        concurrency=20,
        heartbeat=heartbeat,
        connect_timeout=connect_timeout,
    )
    await run.start()
    assert run.connected_port == proxy.port, "the pool should start on the first URL"
    await ledger.wait_processed(n // 5, timeout=30)

    blackholed_at = _now()
    proxy.blackhole()
    bound = (heartbeat + 1) * 3 + 3
    lost_at = await run.wait_lost(blackholed_at, timeout=bound + 10)
    detection = lost_at - blackholed_at
    assert detection <= bound, f"dead connection noticed after {detection:.1f} s (> {bound} s)"
    # A reset would be noticed at once: this was the heartbeat, not a leaked close.
    assert detection >= 2 * heartbeat, f"noticed after {detection:.1f} s: not by heartbeats"
    assert ledger.processed < n, "the stream ended before the blackhole: pace it slower"
    run.assert_running()

    reconnect = await run.wait_connected(timeout=connect_timeout + 20)
    assert run.connected_port == rabbitmq_node.amqp_port, "expected failover to the direct URL"
    assert proxy.blackholed
    run.assert_running()

    queues = await run.settle(ledger, probe)
    await run.finish(
        probe,
        queues,
        ledger,
        "blackhole",
        n,
        began,
        detection_s=round(detection, 1),
        reconnect_s=round(reconnect, 1),
        reconnects=run.backend.reconnects,
        settle_failures=run.rabbit.settle_failures,
    )


@pytest.mark.timeout(90)
async def test_settling_deliveries_of_a_dead_channel(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, make_run: RunFactory
) -> None:
    """Deliveries in flight when the broker closes the connection: the workers holding them
    finish after the channel died, half succeeding (ack) and half failing (retry copy, or
    requeue when the copy cannot be published). Each of those settlements reaches a dead
    channel: counted in `settle_failures`, never raised; the pool keeps running and the
    broker redelivers them."""
    n, concurrency = 5_000, 20
    began = time.monotonic()
    ids = numbered_ids(n)
    await publish_numbered(rabbitmq_node.url, fault_queue, ids)
    ledger = Ledger(ids)
    gate = asyncio.Event()
    held: list[str] = []

    async def hold_first_ones(message: Message[Any]) -> None:
        if gate.is_set() or len(held) >= concurrency:
            return
        held.append(message.id)
        fail = len(held) % 2 == 0
        await gate.wait()
        if fail:
            raise RuntimeError(f"{message.id} fails after its channel died")

    run = make_run(
        urls=rabbitmq_node.url,
        queue=fault_queue,
        workers=[LedgerWorker(ledger, hook=hold_first_ones)],
        concurrency=concurrency,
    )
    # Release the held messages the moment the connection is lost, before any reconnect.
    run.backend.add_state_callback(lambda old, new: gate.set() if new is DISCONNECTED else None)
    await run.start()
    await wait_until(
        lambda: run.pool.in_flight == concurrency,
        timeout=10,
        what=f"{concurrency} messages are held in flight",
    )
    assert len(held) == concurrency

    closed_at = _now()
    await in_thread(rabbitmq_node.ctl, "close_all_connections", "test")
    await run.wait_lost(closed_at, timeout=10)
    await wait_until(
        lambda: run.rabbit.settle_failures >= concurrency,
        timeout=10,
        what=lambda: (
            f"{concurrency} settlements failed on the dead channel "
            f"(now {run.rabbit.settle_failures})"
        ),
    )
    run.assert_running()
    await run.wait_connected(timeout=15)

    queues = await run.settle(ledger, probe)
    settle_failures = run.rabbit.settle_failures
    # One failed settlement per held message (its ack, or the nack after its retry copy
    # could not be published), and none on the new connection.
    assert settle_failures == len(held)
    assert all(ledger.counts[message_id] >= 1 for message_id in held)
    await run.finish(
        probe,
        queues,
        ledger,
        "settling on a dead channel",
        n,
        began,
        held=len(held),
        settle_failures=settle_failures,
        reconnects=run.backend.reconnects,
    )


#: A publish big enough to wedge the connection's writer while the proxy reads nothing: far
#: more than the loopback socket buffers on both sides of the proxy hold (a few MiB each).
WEDGE_BYTES = 32 * 1024 * 1024


@pytest.mark.timeout(90)
async def test_settlements_behind_a_wedged_writer_when_the_connection_resets(
    rabbitmq_node: RabbitMQNode,
    fault_queue: str,
    probe: QueueProbe,
    proxy: TcpProxy,
    make_run: RunFactory,
) -> None:
    """The worst moment for a settlement: the connection's writer is stuck (the network
    stopped taking bytes in the middle of a large publish) with the settlements of 40
    messages behind it, half acks and half nacks (each nack its own frame: aiormq's bounded
    frame queue is full and more frames wait for room), when the connection is reset. An
    ack is handed to the channel's coalescer and its message leaves the pool at once; a
    nack holds its pool slot until its frame is written. Every one of those settlements must
    end (counted in `settle_failures`), none may hang and keep its pool slot; the pool
    reconnects and processes everything."""
    n, held_count = 5_000, 40
    began = time.monotonic()
    direct = rabbitmq_node.url
    ids = numbered_ids(n)
    await publish_numbered(direct, fault_queue, ids[:-1])
    ledger = Ledger(ids)
    gate = asyncio.Event()
    held: list[Message[Any]] = []

    async def hold_first_ones(message: Message[Any]) -> None:
        if gate.is_set() or len(held) >= held_count:
            return
        held.append(message)
        requeue = len(held) % 2 == 0
        await gate.wait()
        if requeue:
            # A nack is its own frame (acks may share one): these fill the frame queue.
            await message.nack(requeue=True)
            raise RuntimeError(f"{message.id} was requeued by its worker")

    run = make_run(
        urls=[proxy.url_for(direct), direct],
        queue=fault_queue,
        workers=[LedgerWorker(ledger, hook=hold_first_ones)],
        concurrency=held_count,
        heartbeat=2,
        connect_timeout=3,
    )
    await run.start()
    await wait_until(
        lambda: run.pool.in_flight == held_count,
        timeout=10,
        what=f"{held_count} messages are held in flight",
    )
    # The last message goes through the pool's own publisher channel, opening it (it stays
    # in the queue: the prefetch is used up by the held messages).
    props = MessageProperties(content_type="application/json")
    await run.rabbit.publish(fault_queue, b'{"last": true}', props.with_message_id(ids[-1]))

    proxy.blackhole()
    wedge = asyncio.create_task(
        run.rabbit.publish(fault_queue, bytes(WEDGE_BYTES), props.with_message_id("wedge"))
    )
    # One loop step: the publish task enqueues its frame without suspending, so the frame is
    # ahead of every settlement in the connection's FIFO frame queue. The writer wedges on it
    # (the proxy reads nothing) and no settlement can reach the socket after that.
    await asyncio.sleep(0)
    assert not wedge.done()
    gate.set()
    nacks = held_count // 2
    await wait_until(
        lambda: all(m.settled for m in held) and run.pool.in_flight == nacks,
        timeout=10,
        what="the held messages are settled, their settlements stuck behind the wedged writer "
        "(the acked ones out of the pool, the nacked ones waiting for their frames)",
    )

    reset_at = _now()
    proxy.sever()
    proxy.heal()
    await run.wait_lost(reset_at, timeout=10)
    await wait_until(
        lambda: run.pool.in_flight < nacks and run.rabbit.settle_failures >= held_count,
        timeout=10,
        what=lambda: (
            f"all {held_count} stuck settlements ended (settle_failures "
            f"{run.rabbit.settle_failures}, in flight {run.pool.in_flight})"
        ),
    )
    with pytest.raises(PublishNotConfirmed):
        await wedge
    run.assert_running()
    await run.wait_connected(timeout=15)

    queues = await run.settle(ledger, probe)
    settle_failures = run.rabbit.settle_failures
    assert settle_failures == held_count
    await run.finish(
        probe,
        queues,
        ledger,
        "settlements behind a wedged writer, then TCP reset",
        n,
        began,
        held=held_count,
        settle_failures=settle_failures,
        reconnects=run.backend.reconnects,
    )


@pytest.mark.timeout(90)
async def test_connection_reset_by_the_network(
    rabbitmq_node: RabbitMQNode,
    fault_queue: str,
    probe: QueueProbe,
    proxy: TcpProxy,
    make_run: RunFactory,
) -> None:
    """The pool's TCP connection is reset (no AMQP close) three times mid-stream; each time
    it reconnects through the same, healthy, path."""
    n, resets = 5_000, 3
    began = time.monotonic()
    direct = rabbitmq_node.url
    ids = numbered_ids(n)
    await publish_numbered(direct, fault_queue, ids)
    ledger = Ledger(ids)
    run = make_run(
        urls=[proxy.url_for(direct), direct],
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.01)],
        concurrency=20,
        heartbeat=2,
        connect_timeout=3,
    )
    await run.start()
    for k in range(1, resets + 1):
        await ledger.wait_processed(k * n // (resets + 2), timeout=30)
        await run.wait_connected(timeout=15)
        assert run.connected_port == proxy.port
        severed_at = _now()
        assert proxy.sever() == 1
        await run.wait_lost(severed_at, timeout=10)
        assert ledger.processed < n, "the stream ended before the reset: pace it slower"
        run.assert_running()

    queues = await run.settle(ledger, probe)
    assert run.backend.reconnects >= resets
    assert run.connected_port == proxy.port
    await run.finish(
        probe,
        queues,
        ledger,
        "TCP reset x3 (proxy sever)",
        n,
        began,
        reconnects=run.backend.reconnects,
        settle_failures=run.rabbit.settle_failures,
    )


@pytest.mark.timeout(60)
async def test_short_partition_healed_before_heartbeat_timeout(
    rabbitmq_node: RabbitMQNode,
    fault_queue: str,
    probe: QueueProbe,
    proxy: TcpProxy,
    make_run: RunFactory,
) -> None:
    """A partition shorter than either side's heartbeat timeout (1 s against 2 missed
    heartbeats of 2 s at the broker, 9 s at the client) heals unnoticed: the held bytes are
    delivered, the connection survives, nothing is lost or redelivered."""
    n, heartbeat, partition = 5_000, 2, 1.0
    began = time.monotonic()
    direct = rabbitmq_node.url
    ids = numbered_ids(n)
    await publish_numbered(direct, fault_queue, ids)
    ledger = Ledger(ids)
    run = make_run(
        urls=[proxy.url_for(direct), direct],
        queue=fault_queue,
        workers=[LedgerWorker(ledger, delay=0.01)],
        concurrency=20,
        heartbeat=heartbeat,
        connect_timeout=3,
    )
    await run.start()
    await ledger.wait_processed(n // 5, timeout=30)
    proxy.blackhole()
    await asyncio.sleep(partition)  # the fault's length, not a wait for a condition
    assert ledger.processed < n, "the stream ended before the partition: pace it slower"
    proxy.heal()

    queues = await run.settle(ledger, probe)
    assert run.states.first(DISCONNECTED, after=0.0) is None, run.states.changes
    assert run.backend.reconnects == 0
    assert run.rabbit.settle_failures == 0
    await run.finish(probe, queues, ledger, "1 s partition, healed", n, began)
