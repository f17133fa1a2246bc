"""The spool at scale, across SIGKILLs: 10,000 messages published by concurrent producers
through a publisher with a spool while the broker is SIGKILLed and restarted all arrive;
and a process SIGKILLed while it drains a spool (`foxwork spool drain`) leaves what it did
not confirm in the spool, for the next drain. Duplicates are counted and printed, never
asserted away (at-least-once)."""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import time
from pathlib import Path
from typing import IO

import aio_pika
import pytest

from foxwork import OutboundMessage, Publisher, PublishReceipt, SpoolConfig
from foxwork.backends import RabbitMQBackend, ResilientBackend
from foxwork.spool import read_status
from tests.apps.process import ROOT
from tests.harness.rabbitmq import RabbitMQNode, find_free_port
from tests.support.waiting import wait_until

from .conftest import FAST_RECONNECT, QueueProbe, in_thread, publish_numbered

#: Messages the scenario publishes.
MESSAGES = 10_000
#: Producers publishing at once; each awaits its publishes one after another, so its own
#: messages must arrive in the order it published them.
PRODUCERS = 100
#: Seconds to wait for a phase of the scenario.
PHASE_TIMEOUT = 120.0


async def take_all(url: str, queue: str) -> list[str]:
    """The message ids of everything in `queue` (taken out, in queue order), read with a
    consumer (basic.get one at a time would take longer than the scenario)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2_000)
        declared = await channel.declare_queue(queue, passive=True)
        total = declared.declaration_result.message_count
        assert total is not None
        ids: list[str] = []
        complete = asyncio.Event()
        if not total:
            return ids

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            ids.append(str(message.message_id))
            if len(ids) % 1_000 == 0 or len(ids) == total:
                await message.ack(multiple=True)
            if len(ids) == total:
                complete.set()

        tag = await declared.consume(on_message)
        await asyncio.wait_for(complete.wait(), PHASE_TIMEOUT)
        await declared.cancel(tag)
        return ids
    finally:
        await connection.close()


def drain_output(log: IO[bytes]) -> str:
    """The last lines a child process wrote to the file `log`."""
    log.flush()
    return "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-15:])


def first_seen_in_order(received: list[str], prefix_of: int) -> list[str]:
    """The producers whose messages were first seen out of the order they were published
    (ids are `<producer>-<number>`; `prefix_of` is the length of the producer part)."""
    last: dict[str, int] = {}
    seen: set[str] = set()
    out_of_order = []
    for message_id in received:
        if message_id in seen:
            continue
        seen.add(message_id)
        producer, number = message_id[:prefix_of], int(message_id[prefix_of + 1 :])
        if number < last.get(producer, -1):
            out_of_order.append(message_id)
        last[producer] = number
    return out_of_order


@pytest.mark.timeout(300)
async def test_ten_thousand_publishes_through_the_spool_across_a_broker_kill_all_arrive(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, tmp_path: Path
) -> None:
    began = time.monotonic()
    await publish_numbered(rabbitmq_node.url, fault_queue, [])  # declares the queue
    probe.asked.add(fault_queue)
    backend = ResilientBackend(
        RabbitMQBackend(url=rabbitmq_node.url, queue=[], connection_name="spool-10k"),
        strategy=FAST_RECONNECT,
    )
    await backend.connect()
    publisher = Publisher(backend, spool=SpoolConfig(directory=tmp_path))
    await publisher.start()
    receipts: list[PublishReceipt] = []
    failures: list[BaseException] = []
    progress = asyncio.Event()
    per_producer = MESSAGES // PRODUCERS

    async def produce(producer: int) -> None:
        for number in range(per_producer):
            message_id = f"p{producer:03d}-{number:05d}"
            try:
                receipts.append(
                    await publisher.publish(
                        {"n": number}, routing_key=fault_queue, message_id=message_id
                    )
                )
            except Exception as exc:  # counted: its publish() did not return
                failures.append(exc)
            progress.set()

    async def returned(count: int) -> None:
        while len(receipts) + len(failures) < count:
            progress.clear()
            await progress.wait()

    producers = [asyncio.create_task(produce(p)) for p in range(PRODUCERS)]
    restart: asyncio.Task[object] | None = None
    try:
        # Given 100 producers publishing 10,000 messages through a publisher with a spool
        await asyncio.wait_for(returned(MESSAGES * 3 // 10), PHASE_TIMEOUT)
        direct = len(receipts)

        # When the broker is SIGKILLed at 3,000, and restarted at 6,000 while they go on
        await in_thread(rabbitmq_node.kill)
        killed_at = time.monotonic()
        await asyncio.wait_for(returned(MESSAGES * 6 // 10), PHASE_TIMEOUT)
        restart = asyncio.create_task(in_thread(rabbitmq_node.restart))
        await asyncio.wait_for(asyncio.gather(*producers), PHASE_TIMEOUT)
        produced_at = time.monotonic()
        await asyncio.wait_for(restart, PHASE_TIMEOUT)
        await asyncio.wait_for(backend.wait_connected(), PHASE_TIMEOUT)
        back_at = time.monotonic()
        await asyncio.wait_for(publisher.flush_spool(), PHASE_TIMEOUT)
        drained_at = time.monotonic()
    finally:
        for task in producers:
            task.cancel()
        await asyncio.wait([*producers, *([restart] if restart else [])])
        await publisher.close()
        await backend.close()

    # Then every one of the 10,000 publishes returned, and every message is in the queue,
    # each producer's in the order it published them; the spool is empty
    received = await take_all(rabbitmq_node.url, fault_queue)
    counts = collections.Counter(received)
    spooled = sum(receipt.spooled for receipt in receipts)
    missing = [receipt for receipt in receipts if counts[receipt] == 0]
    print(
        f"\n[faults] spool, 10,000 publishes across a broker kill: {len(receipts)} returned "
        f"({direct} before the kill, {spooled} spooled), {len(failures)} raised, "
        f"{len(received)} delivered, {len(received) - len(counts)} duplicate(s), "
        f"{len(missing)} missing; broker down {back_at - killed_at:.1f} s, publishing "
        f"{produced_at - began:.1f} s, drained {drained_at - back_at:.1f} s after it was "
        f"back, {time.monotonic() - began:.1f} s in all"
    )
    assert not failures, failures[:3]
    assert len(receipts) == MESSAGES and not missing
    assert set(counts) == set(receipts)
    assert not first_seen_in_order(received, len("p000")), "delivered out of order"
    assert read_status(tmp_path).depth == 0


@pytest.mark.timeout(300)
async def test_a_drain_sigkilled_midway_leaves_the_rest_for_the_next_drain(
    rabbitmq_node: RabbitMQNode, fault_queue: str, probe: QueueProbe, tmp_path: Path
) -> None:
    # Given 5,000 messages spooled by a publisher that could not reach the broker
    await publish_numbered(rabbitmq_node.url, fault_queue, [])  # declares the queue
    probe.asked.add(fault_queue)
    count = 5_000
    ids = [f"d-{number:05d}" for number in range(count)]
    unreachable = f"amqp://guest:guest@127.0.0.1:{find_free_port()}/"
    async with await Publisher.connect(
        unreachable, spool=SpoolConfig(directory=tmp_path)
    ) as spooling:
        outcomes = await spooling.publish_many(
            OutboundMessage({"n": n}, fault_queue, message_id=ids[n]) for n in range(count)
        )
    assert all(outcome.spooled for outcome in outcomes)

    # When `foxwork spool drain` is SIGKILLed once the queue holds a fifth of them
    log = (tmp_path.parent / f"{tmp_path.name}-drain.log").open("wb")
    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "foxwork", "spool", "drain", str(tmp_path),
        "--url", rabbitmq_node.url, "--timeout", "120",
        cwd=ROOT, stdout=log, stderr=log,
    )  # fmt: skip
    try:

        async def a_fifth_arrived() -> bool:
            return (await probe.count(fault_queue) or 0) >= count // 5

        await wait_until(
            a_fifth_arrived,
            timeout=PHASE_TIMEOUT,
            interval=0.01,
            what=lambda: f"a fifth was drained; the drain's output: {drain_output(log)}",
        )
        drain.send_signal(signal.SIGKILL)
        await drain.wait()
    finally:
        if drain.returncode is None:
            drain.kill()
            await drain.wait()
        log.close()
    assert drain.returncode == -signal.SIGKILL
    status = await asyncio.to_thread(read_status, tmp_path)
    in_queue = await probe.count(fault_queue) or 0
    assert status.owner_pid == drain.pid and not status.owner_alive
    assert 0 < status.depth < count, status

    # And a publisher opens the spool again (taking the dead drain's lock over)
    async with await Publisher.connect(
        rabbitmq_node.url, spool=SpoolConfig(directory=tmp_path)
    ) as publisher:
        await asyncio.wait_for(publisher.flush_spool(), PHASE_TIMEOUT)

    # Then every message is in the queue, in order, at least once
    received = await take_all(rabbitmq_node.url, fault_queue)
    counts = collections.Counter(received)
    print(
        f"\n[faults] drain SIGKILLed after {in_queue} of {count} were in the queue "
        f"({status.depth} left in the spool): {len(received)} delivered, "
        f"{len(received) - len(counts)} duplicate(s), {count - len(counts)} missing"
    )
    assert set(counts) == set(ids)
    assert list(dict.fromkeys(received)) == ids, "delivered out of order"
    assert (await asyncio.to_thread(read_status, tmp_path)).depth == 0
