"""A publisher with a spool across a broker SIGKILL and restart: the publishes made while
the broker is down are spooled (on disk before publish() returns), and once it is back
they are drained in order, ahead of what is published after; every message whose
publish() returned is in the queue at least once. And across a blackholed connection: a
publish whose confirm does not come within the publish timeout is spooled, and drained
once the connection flows again."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest

from foxwork import Publisher, PublishReceipt, SpoolConfig
from foxwork.backends import RabbitMQBackend, ResilientBackend
from foxwork.spool import read_status
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import FAST_RECONNECT, QueueProbe, in_thread, publish_numbered
from .proxy import TcpProxy

#: Publishes the producer makes at most (a bound on the test, not a target).
MAX_PUBLISHES = 3_000
#: Seconds to wait for a phase of the scenario.
PHASE_TIMEOUT = 60.0


@pytest.mark.timeout(240)
async def test_publishes_while_the_broker_is_down_are_spooled_then_drained_in_order(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, tmp_path: Path
) -> None:
    began = time.monotonic()
    await publish_numbered(rabbitmq_node.url, fault_queue, [])  # declares the queue
    backend = ResilientBackend(
        RabbitMQBackend(url=rabbitmq_node.url, queue=[], connection_name="spool-faults"),
        strategy=FAST_RECONNECT,
    )
    await backend.connect()
    publisher = Publisher(backend, spool=SpoolConfig(directory=tmp_path))
    await publisher.start()
    receipts: list[PublishReceipt] = []
    progress = asyncio.Event()
    stop = asyncio.Event()

    async def produce() -> None:
        # One publish at a time, so that the order they returned in is the order expected.
        for number in range(MAX_PUBLISHES):
            if stop.is_set():
                return
            receipts.append(
                await publisher.publish(
                    {"n": number}, routing_key=fault_queue, message_id=f"m{number:05d}"
                )
            )
            progress.set()

    async def returned(count: int) -> None:
        while len(receipts) < count and not producer.done():
            progress.clear()
            await progress.wait()

    producer = asyncio.create_task(produce())
    try:
        # Given a producer publishing straight to the broker
        await asyncio.wait_for(returned(200), PHASE_TIMEOUT)
        assert not any(receipt.spooled for receipt in receipts), "spooled with the broker up"

        # When the broker is SIGKILLed mid-stream, and the producer goes on
        await in_thread(rabbitmq_node.kill)
        at_kill = len(receipts)
        await asyncio.wait_for(returned(at_kill + 300), PHASE_TIMEOUT)
        stop.set()
        await producer
        published_while_down = len(receipts) - at_kill
        spooled_while_down = sum(receipt.spooled for receipt in receipts[at_kill:])
        depth_while_down = publisher.spool.depth if publisher.spool else 0

        # ...and comes back, and more is published once it is
        await in_thread(rabbitmq_node.restart)
        await asyncio.wait_for(backend.wait_connected(), PHASE_TIMEOUT)
        for number in range(len(receipts), len(receipts) + 100):
            receipts.append(
                await publisher.publish(
                    {"n": number}, routing_key=fault_queue, message_id=f"m{number:05d}"
                )
            )
        await asyncio.wait_for(publisher.flush_spool(), PHASE_TIMEOUT)
    finally:
        stop.set()
        await asyncio.wait([producer])
        await publisher.close()
        await backend.close()

    # Then every publish made while the broker was down was spooled (but the one whose
    # confirm may have arrived as the kill landed), and the spool is empty now
    assert spooled_while_down >= published_while_down - 1
    assert read_status(tmp_path).depth == 0
    # And every message whose publish() returned is in the queue, in order (a message in
    # flight at the kill may be there twice: kept by the broker, and spooled)
    received = [str(m.message_id) for m in await probe.get_all(fault_queue)]
    counts = collections.Counter(received)
    missing = [receipt for receipt in receipts if counts[receipt] == 0]
    first_seen = list(dict.fromkeys(received))
    print(
        f"\n[faults] spool across a broker kill: {len(receipts)} published "
        f"({at_kill} before the kill, {spooled_while_down} spooled while down, depth "
        f"{depth_while_down}), {len(received)} delivered, "
        f"{sum(c - 1 for c in counts.values())} duplicate(s), {len(missing)} missing, "
        f"{time.monotonic() - began:.1f} s"
    )
    assert not missing
    assert first_seen == sorted(first_seen), "delivered out of order"
    assert set(first_seen) == set(receipts)


@pytest.mark.timeout(120)
async def test_a_publish_whose_confirm_times_out_is_spooled_and_drained_once_it_flows(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, proxy: TcpProxy,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given a publisher with a 1 s publish timeout, through a proxy, publishing directly
    await publish_numbered(rabbitmq_node.url, fault_queue, [])  # declares the queue
    backend = ResilientBackend(
        RabbitMQBackend(
            url=proxy.url_for(rabbitmq_node.url),
            queue=[],
            publish_timeout=1.0,
            connection_name="spool-blackhole",
        ),
        strategy=FAST_RECONNECT,
    )
    await backend.connect()
    publisher = Publisher(backend, spool=SpoolConfig(directory=tmp_path))
    ids = [f"b{number:03d}" for number in range(10)]
    try:
        first = await publisher.publish("0", routing_key=fault_queue, message_id=ids[0])

        # When the connection is blackholed (no confirm comes), and more is published
        proxy.blackhole()
        loop = asyncio.get_running_loop()
        before = loop.time()
        timed_out = await publisher.publish("1", routing_key=fault_queue, message_id=ids[1])
        waited = loop.time() - before
        behind = [
            await publisher.publish(str(n), routing_key=fault_queue, message_id=ids[n])
            for n in range(2, 10)
        ]

        # Then the one that timed out is spooled after the timeout, those behind it at once
        assert not first.spooled
        assert timed_out.spooled and 0.9 <= waited < 10, waited
        assert all(receipt.spooled for receipt in behind)

        # And once the connection flows again, the spool drains, in order
        proxy.heal()
        await asyncio.wait_for(publisher.flush_spool(), PHASE_TIMEOUT)
    finally:
        proxy.heal()
        await publisher.close()
        await backend.close()
    received = [str(m.message_id) for m in await probe.get_all(fault_queue)]
    counts = collections.Counter(received)
    print(
        f"\n[faults] spool across a blackhole: confirm timed out after {waited:.2f} s, "
        f"{len(received)} delivered of {len(ids)}, "
        f"{sum(c - 1 for c in counts.values())} duplicate(s)"
    )
    assert list(dict.fromkeys(received)) == ids
