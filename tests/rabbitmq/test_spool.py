"""The spool with a real broker: a publisher that cannot reach it spools, the next one
drains, a producer SIGKILLed mid-stream loses no message whose publish() returned, and
`foxwork spool status|drain` as a user runs them, a damaged record included."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from foxwork import Publisher, PublishNotConfirmed, SpoolConfig
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.spool import read_status
from tests.apps.process import ROOT, run_foxwork
from tests.harness.rabbitmq import find_free_port
from tests.unit.test_spool import record_offsets

from .support import RabbitProbe


#: An AMQP URL nobody answers on.
def unreachable_url() -> str:
    return f"amqp://guest:guest@127.0.0.1:{find_free_port()}/"


async def spool_messages(directory: Path, queue: str, count: int) -> list[str]:
    """Spool `count` messages for `queue` through a publisher that cannot reach a broker;
    their ids."""
    publisher = await Publisher.connect(unreachable_url(), spool=SpoolConfig(directory=directory))
    try:
        receipts = [await publisher.publish({"n": n}, routing_key=queue) for n in range(count)]
    finally:
        await publisher.close()
    assert all(receipt.spooled for receipt in receipts)
    return [str(receipt) for receipt in receipts]


async def test_a_publisher_that_cannot_reach_the_broker_spools_and_the_next_drains_in_order(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given messages spooled while the broker could not be reached
    await backend.declare(queue_name)
    ids = await spool_messages(tmp_path, queue_name, 50)
    assert read_status(tmp_path).depth == 50

    # When a publisher on the same spool connects to the broker
    async with await Publisher.connect(
        rabbitmq_url, spool=SpoolConfig(directory=tmp_path)
    ) as publisher:
        await asyncio.wait_for(publisher.flush_spool(), 30)
        # Then new publishes go straight to the broker, behind the drained ones
        after = await publisher.publish({"n": 50}, routing_key=queue_name)
        assert not after.spooled

    # And the broker has every message, in order, and the spool is empty
    received = await probe.take(queue_name)
    assert [r.properties.message_id for r in received] == [*ids, after]
    assert [json.loads(r.body)["n"] for r in received] == list(range(51))
    assert read_status(tmp_path).depth == 0


async def test_an_unroutable_publish_raises_with_a_spool_too(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    async with await Publisher.connect(
        rabbitmq_url, spool=SpoolConfig(directory=tmp_path)
    ) as publisher:
        with pytest.raises(PublishNotConfirmed, match="unroutable"):
            await publisher.publish("x", routing_key="no-such-queue-anywhere")

    assert read_status(tmp_path).depth == 0


@pytest.mark.timeout(120)
async def test_a_producer_killed_mid_stream_loses_no_message_whose_publish_returned(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given a producer spooling messages (20 publishes at a time), SIGKILLed mid-stream
    await backend.declare(queue_name)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.rabbitmq.spool_child",
        str(tmp_path), unreachable_url(), queue_name,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    returned: list[str] = []
    try:
        async with asyncio.timeout(60):
            assert await child.stdout.readline() == b"ready\n"
            while len(returned) < 500:
                returned.append((await child.stdout.readline()).decode().strip())
        child.send_signal(signal.SIGKILL)
        rest, _ = await child.communicate()  # ids printed before the kill landed
        returned += [line for line in rest.decode().split("\n") if line.strip()]
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    status = read_status(tmp_path)
    assert status.owner_pid == child.pid and not status.owner_alive
    assert status.depth >= len(returned)

    # When a new publisher opens the same spool (taking the dead owner's lock over)
    async with await Publisher.connect(
        rabbitmq_url, spool=SpoolConfig(directory=tmp_path)
    ) as publisher:
        await asyncio.wait_for(publisher.flush_spool(), 60)

    # Then every message whose publish() returned was delivered, at least once, in order
    received = [r.properties.message_id for r in await probe.take(queue_name)]
    counts = collections.Counter(received)
    missing = [message_id for message_id in returned if counts[message_id] == 0]
    duplicates = sum(count - 1 for count in counts.values())
    print(
        f"\n[spool] killed after {len(returned)} returned publishes: {len(received)} "
        f"delivered ({status.depth} spooled at the kill), {duplicates} duplicate(s), "
        f"{len(missing)} missing"
    )
    assert not missing
    numbers = [int(str(message_id).removeprefix("child-")) for message_id in received]
    assert numbers == sorted(numbers), "the spool replayed out of order"


# -- foxwork spool status | drain -------------------------------------------------------


async def test_spool_status_and_drain_from_the_command_line(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given 10 messages spooled
    await backend.declare(queue_name)
    ids = await spool_messages(tmp_path, queue_name, 10)

    # When the status is asked for, then the spool drained
    status = await run_foxwork("spool", "status", str(tmp_path), "--json")
    drained = await run_foxwork("spool", "drain", str(tmp_path), "--url", rabbitmq_url)
    after = await run_foxwork("spool", "status", str(tmp_path))

    # Then the status shows the 10, the drain sent them in order and exited 0
    assert status.code == 0, status.output
    shown = json.loads(status.stdout)
    assert (shown["depth"], shown["owner_pid"]) == (10, None)
    assert shown["bytes"] > 0 and shown["oldest_age"] >= 0
    assert drained.code == 0, drained.output
    assert f"sent 10 message(s); 0 left in {tmp_path}" in drained.stdout
    assert [r.properties.message_id for r in await probe.take(queue_name)] == ids
    assert after.code == 0, after.output
    assert "depth     0 message(s)" in after.stdout


async def test_spool_drain_exits_1_with_the_reason_when_messages_are_left(
    rabbitmq_url: str, tmp_path: Path, queue_name: str
) -> None:
    # Given messages for a queue that does not exist (unroutable)
    await spool_messages(tmp_path, queue_name, 3)

    # When the spool is drained with a short timeout
    drained = await run_foxwork(
        "spool", "drain", str(tmp_path), "--url", rabbitmq_url, "--timeout", "1"
    )

    # Then it exits 1, says what is left and why, and keeps the messages
    assert drained.code == 1, drained.output
    assert f"sent 0 message(s); 3 left in {tmp_path}" in drained.stdout
    assert "unroutable" in drained.stderr
    assert read_status(tmp_path).depth == 3


async def test_spool_drain_refuses_a_spool_another_live_process_owns(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    async with Publisher(
        RabbitMQBackend(url=rabbitmq_url, queue=[]), spool=SpoolConfig(directory=tmp_path)
    ):
        drained = await run_foxwork("spool", "drain", str(tmp_path), "--url", rabbitmq_url)

    assert drained.code == 2, drained.output
    assert f"in use by process {os.getpid()}" in drained.stderr


def damage_record(directory: Path, number: int) -> tuple[Path, list[int]]:
    """Flip a byte in the payload of record `number` of the one segment in `directory`;
    (the segment file, where each record begins)."""
    [segment] = sorted(directory.glob("*.seg"))
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[number + 1] - 3] ^= 0xFF
    segment.write_bytes(bytes(data))
    return segment, offsets


async def test_spool_drain_stops_at_a_damaged_record_and_skips_it_only_when_told(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given 5 spooled messages, the third damaged on disk
    await backend.declare(queue_name)
    ids = await spool_messages(tmp_path, queue_name, 5)
    segment, offsets = damage_record(tmp_path, 2)
    damaged_size = offsets[3] - offsets[2]

    # When the status is asked for, and the spool drained
    status = await run_foxwork("spool", "status", str(tmp_path))
    status_json = await run_foxwork("spool", "status", str(tmp_path), "--json")
    stopped = await run_foxwork("spool", "drain", str(tmp_path), "--url", rabbitmq_url)

    # Then the status names the segment and the offset, and the drain stops there, says
    # where and how to go on, and exits 1, having sent what came before
    assert status.code == 0, status.output
    assert f"damaged   {segment} at offset {offsets[2]} ({damaged_size} bytes" in status.stdout
    assert "--skip-corrupt" in status.stdout
    [shown] = json.loads(status_json.stdout)["damaged"]
    assert (shown["segment"], shown["offset"], shown["bytes"]) == (
        str(segment),
        offsets[2],
        damaged_size,
    )
    assert stopped.code == 1, stopped.output
    assert f"sent 2 message(s); 2 left in {tmp_path}" in stopped.stdout
    assert f"{segment} is damaged at offset {offsets[2]}" in stopped.stderr
    assert "--skip-corrupt" in stopped.stderr
    assert read_status(tmp_path).depth == 2

    # When it is drained with --skip-corrupt
    skipped = await run_foxwork(
        "spool", "drain", str(tmp_path), "--url", rabbitmq_url, "--skip-corrupt"
    )

    # Then the rest is sent, the bytes skipped are reported, and the spool is empty
    assert skipped.code == 0, skipped.output
    assert f"sent 2 message(s); 0 left in {tmp_path}" in skipped.stdout
    assert f"skipped {damaged_size} damaged byte(s)" in skipped.stdout
    received = [r.properties.message_id for r in await probe.take(queue_name)]
    assert received == [ids[0], ids[1], ids[3], ids[4]]
    assert read_status(tmp_path).depth == 0 and read_status(tmp_path).damaged == ()
