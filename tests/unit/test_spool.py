"""The spool on disk (`foxwork.spool`): order, torn records, the read position as a lower
bound, the PID lock, the bound on its size, group commit and its metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from foxwork import MessageProperties, OutboundMessage, Publisher, PublishNotConfirmed
from foxwork.backends import MemoryBackend
from foxwork.backends._backoff import Backoff
from foxwork.errors import ConfigurationError, ConnectionLost
from foxwork.spool import (
    Drainer,
    Spool,
    SpoolConfig,
    SpoolCorrupt,
    SpooledMessage,
    SpoolFull,
    SpoolLocked,
    _files,
    _metrics,
    read_status,
    store,
)
from foxwork.spool._records import HEADER, encode_message, frame, parse_header
from tests.support.waiting import wait_until

SpoolFactory = Callable[..., Awaitable[Spool]]


def message(number: int, *, body: bytes | None = None) -> SpooledMessage:
    return SpooledMessage(
        exchange="",
        routing_key="orders",
        body=body if body is not None else f"order {number}".encode(),
        properties=MessageProperties(
            message_id=f"id-{number}", content_type="text/plain", headers={"n": number}
        ),
        spooled_at=time.time(),
    )


@pytest.fixture
async def open_spool(tmp_path: Path) -> AsyncIterator[SpoolFactory]:
    """Opens spools in tmp_path/spool (settings as keywords); closes them at teardown."""
    opened: list[Spool] = []

    async def factory(**settings: object) -> Spool:
        spool = await Spool.open(SpoolConfig(directory=tmp_path / "spool", **settings))  # type: ignore[arg-type]
        opened.append(spool)
        return spool

    yield factory
    for spool in opened:
        await spool.close()


async def take(spool: Spool, count: int) -> list[str | None]:
    """Read and ack `count` messages; their ids."""
    ids = []
    for _ in range(count):
        ids.append((await spool.next()).properties.message_id)
        await spool.ack()
    return ids


async def test_messages_come_out_in_the_order_they_were_appended(
    open_spool: SpoolFactory,
) -> None:
    spool = await open_spool()
    for number in range(50):
        await spool.append(message(number))

    assert spool.depth == 50
    assert await take(spool, 50) == [f"id-{n}" for n in range(50)]
    assert spool.depth == 0
    assert spool.size == 0


async def test_a_message_comes_back_with_every_property_and_header(
    open_spool: SpoolFactory,
) -> None:
    sent = SpooledMessage(
        exchange="shop",
        routing_key="orders.new",
        body=b"\x00\xff binary",
        properties=MessageProperties(
            content_type="application/octet-stream",
            priority=7,
            expiration="5000",
            correlation_id="c-1",
            message_id="m-1",
            timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            delivery_mode=1,
            headers={
                "raw": b"\x01\x02",
                "when": datetime(2026, 1, 1, tzinfo=UTC),
                "amount": Decimal("1.50"),
                "nested": {"$bytes": "not a tag", "list": [1, "two", b"3"]},
                "plain": {"a": 1},
            },
        ),
        spooled_at=123.5,
    )
    spool = await open_spool()
    await spool.append(sent)

    assert await spool.next() == sent


async def test_segments_roll_over_and_are_deleted_once_drained(
    open_spool: SpoolFactory, tmp_path: Path
) -> None:
    spool = await open_spool(segment_bytes=300)
    for number in range(20):
        await spool.append(message(number))
    assert len(_files.segments(tmp_path / "spool")) > 3

    assert await take(spool, 20) == [f"id-{n}" for n in range(20)]
    await spool.sync_position()

    assert _files.segments(tmp_path / "spool") == []
    await spool.append(message(20))
    assert await take(spool, 1) == ["id-20"]


async def test_what_was_not_acked_is_there_after_a_reopen(open_spool: SpoolFactory) -> None:
    spool = await open_spool(segment_bytes=300)
    for number in range(10):
        await spool.append(message(number))
    await take(spool, 4)
    await spool.close()

    reopened = await open_spool()

    assert reopened.depth == 6
    assert await take(reopened, 6) == [f"id-{n}" for n in range(4, 10)]


@pytest.mark.parametrize("damage", ["truncated mid-record", "garbage appended"])
async def test_a_torn_last_record_is_cut_off_on_open(
    open_spool: SpoolFactory, tmp_path: Path, damage: str
) -> None:
    # Given a spool whose last record was being written when the process died
    spool = await open_spool()
    for number in range(2):
        await spool.append(message(number))
    [index] = _files.segments(tmp_path / "spool")
    path = _files.segment_path(tmp_path / "spool", index)
    two_records = path.stat().st_size
    await spool.append(message(2))
    await spool.close()
    intact = path.stat().st_size
    with path.open("r+b") as file:
        if damage == "truncated mid-record":
            file.truncate(intact - 5)
        else:
            file.seek(0, os.SEEK_END)
            file.write(b"FX\x01\x00\x00\x00\x00\x10garbage")

    # When it is opened again
    reopened = await open_spool()

    # Then the torn record is gone, the intact ones are there, and appends go on after them
    expected = 2 if damage == "truncated mid-record" else 3
    assert reopened.depth == expected
    assert path.stat().st_size == (intact if expected == 3 else two_records)
    await reopened.append(message(9))
    ids = await take(reopened, expected + 1)
    assert ids == [f"id-{n}" for n in range(expected)] + ["id-9"]


async def test_a_record_whose_crc_does_not_match_is_not_replayed(
    open_spool: SpoolFactory, tmp_path: Path
) -> None:
    spool = await open_spool()
    await spool.append(message(0))
    await spool.append(message(1, body=b"x" * 100))
    await spool.close()
    [index] = _files.segments(tmp_path / "spool")
    path = _files.segment_path(tmp_path / "spool", index)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the last record's body
    path.write_bytes(bytes(data))

    reopened = await open_spool()

    assert reopened.depth == 1
    assert await take(reopened, 1) == ["id-0"]


async def test_the_read_position_is_a_lower_bound_after_a_crash(
    open_spool: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given messages appended, and the first two confirmed and acked
    spool = await open_spool()
    for number in range(4):
        await spool.append(message(number))
    await take(spool, 2)
    await spool.sync_position()
    # ...and a third confirmed, but the process dies before its position is written
    monkeypatch.setattr(_files, "write_position", lambda directory, position: None)
    assert (await spool.next()).properties.message_id == "id-2"
    await spool.ack()
    await spool.sync_position()
    # The crash: nothing more is written; the lock file stays, its flock goes with the process.
    spool._closed = True
    spool._lock.release()
    (tmp_path / "spool" / "lock").write_text("999999999\n")
    monkeypatch.undo()

    # When the spool is opened again
    reopened = await open_spool()

    # Then the third message comes again, with the same id, and none is skipped
    assert await take(reopened, 2) == ["id-2", "id-3"]


async def test_a_lock_file_of_a_live_process_is_refused_and_of_a_dead_one_taken_over(
    open_spool: SpoolFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        (directory / "lock").write_text(f"{child.pid}\n")

        with pytest.raises(SpoolLocked, match=f"process {child.pid}") as refused:
            await open_spool()
        assert refused.value.pid == child.pid
    finally:
        child.kill()
        await child.wait()  # reaped: the PID names no process now

    spool = await open_spool()

    assert (directory / "lock").read_text().strip() == str(os.getpid())
    assert read_status(directory).owner_pid == os.getpid()
    await spool.close()
    assert not (directory / "lock").exists()


async def test_a_spool_open_in_this_process_cannot_be_opened_twice(
    open_spool: SpoolFactory,
) -> None:
    await open_spool()

    with pytest.raises(SpoolLocked, match=f"process {os.getpid()}"):
        await open_spool()


async def test_a_full_spool_refuses_with_what_to_change(open_spool: SpoolFactory) -> None:
    spool = await open_spool(max_bytes=400)
    with pytest.raises(SpoolFull) as full:
        for number in range(100):
            await spool.append(message(number))

    assert "max_bytes=400" in str(full.value)
    assert "block_when_full=True" in str(full.value)
    assert 0 < spool.size <= 400
    await take(spool, 1)
    await spool.append(message(100))  # room again


async def test_a_message_larger_than_the_bound_is_refused_at_once(
    open_spool: SpoolFactory,
) -> None:
    spool = await open_spool(max_bytes=100, block_when_full=True)

    with pytest.raises(SpoolFull, match=r"does not fit .* at all: raise SpoolConfig\(max_bytes"):
        await spool.append(message(0, body=b"x" * 200))


async def test_a_full_spool_can_wait_for_room_instead(open_spool: SpoolFactory) -> None:
    record = len(frame(encode_message(message(0))))
    spool = await open_spool(max_bytes=2 * record + 5, block_when_full=True)
    await spool.append(message(0))
    await spool.append(message(1))
    blocked = asyncio.create_task(spool.append(message(2)))
    await asyncio.sleep(0.05)
    assert not blocked.done()

    await take(spool, 1)
    await asyncio.wait_for(blocked, 5)

    assert await take(spool, 2) == ["id-1", "id-2"]


async def test_concurrent_appends_share_fsyncs(
    open_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = await open_spool()
    await spool.append(message(0))  # the segment file exists: only record fsyncs below
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)

    await asyncio.gather(*(spool.append(message(n)) for n in range(1, 101)))

    assert spool.depth == 101
    assert 1 <= fsyncs < 10, f"{fsyncs} fsyncs for 100 concurrent appends"


async def test_a_failed_write_leaves_nothing_behind(
    open_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = await open_spool()
    await spool.append(message(0))

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        await spool.append(message(1))
    monkeypatch.undo()

    await spool.append(message(2))
    assert spool.depth == 2
    assert await take(spool, 2) == ["id-0", "id-2"]


async def test_status_counts_what_waits_without_opening_the_spool(
    open_spool: SpoolFactory, tmp_path: Path
) -> None:
    spool = await open_spool(segment_bytes=300)
    for number in range(7):
        await spool.append(message(number))
    await take(spool, 2)
    await spool.sync_position()

    status = read_status(tmp_path / "spool")

    assert (status.depth, status.bytes) == (5, spool.size)
    assert status.segments == len(_files.segments(tmp_path / "spool"))
    assert status.oldest_age is not None and 0 <= status.oldest_age < 60
    assert status.owner_pid == os.getpid() and status.owner_alive


async def test_depth_and_bytes_are_reported_as_metrics(open_spool: SpoolFactory) -> None:
    spool = await open_spool()
    await spool.append(message(0))
    await spool.append(message(1))

    def observed(field: str) -> int:
        [value] = [
            o.value
            for o in _metrics._observe(field)(None)  # type: ignore[arg-type]
            if o.attributes == {"spool": str(spool.directory)}
        ]
        return int(value)

    assert observed("depth") == 2
    assert observed("size") == spool.size > 0
    await spool.close()
    assert not [
        o
        for o in _metrics._observe("depth")(None)  # type: ignore[arg-type]
        if o.attributes == {"spool": str(spool.directory)}
    ]


def test_a_spool_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_bytes=0"):
        SpoolConfig(directory="x", max_bytes=0)
    assert SpoolConfig(directory="x").max_bytes == store.DEFAULT_MAX_BYTES


# -- Publisher with a spool, on the in-memory backend ---------------------------------


@pytest.fixture
async def memory(queue_name: str) -> MemoryBackend:
    backend = MemoryBackend(queues=[queue_name])
    await backend.connect()
    return backend


async def test_a_publisher_spools_while_the_broker_is_down_and_drains_in_order_after(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    # Given a publisher with a spool, and a broker that went away
    async with Publisher(memory, spool=SpoolConfig(directory=tmp_path)) as publisher:
        await memory.close()

        # When messages are published
        receipts = [await publisher.publish(n, routing_key=queue_name) for n in range(20)]

        # Then each is spooled, on disk before publish() returned
        assert all(receipt.spooled for receipt in receipts)
        assert read_status(tmp_path).depth == 20

        # And once the broker is back, they reach it in order, and the spool empties
        await memory.connect()
        await asyncio.wait_for(publisher.flush_spool(), 10)
    stored = memory.messages(queue_name)
    assert [m.properties.message_id for m in stored] == receipts
    assert [m.body for m in stored] == [str(n).encode() for n in range(20)]
    assert read_status(tmp_path).depth == 0


async def test_a_publish_goes_behind_what_the_spool_holds(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    async with Publisher(memory, spool=SpoolConfig(directory=tmp_path)) as publisher:
        await memory.close()
        first = await publisher.publish("first", routing_key=queue_name)
        await memory.connect()

        second = await publisher.publish("second", routing_key=queue_name)
        await asyncio.wait_for(publisher.flush_spool(), 10)

        third = await publisher.publish("third", routing_key=queue_name)

    # While the spool held "first", "second" was spooled behind it; "third" went direct.
    assert (first.spooled, second.spooled, third.spooled) == (True, True, False)
    assert [m.body for m in memory.messages(queue_name)] == [b"first", b"second", b"third"]


async def test_an_unroutable_message_is_refused_not_spooled(
    memory: MemoryBackend, tmp_path: Path
) -> None:
    async with Publisher(memory, spool=SpoolConfig(directory=tmp_path)) as publisher:
        with pytest.raises(PublishNotConfirmed, match="unroutable"):
            await publisher.publish("x", routing_key="no-such-queue")

        assert publisher.spool is not None and publisher.spool.depth == 0


async def test_publish_many_reports_which_messages_were_spooled(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    async with Publisher(memory, spool=SpoolConfig(directory=tmp_path)) as publisher:
        await memory.close()
        outcomes = await publisher.publish_many(OutboundMessage(n, queue_name) for n in range(10))

        assert all(o.spooled and o.error is None and not o.confirmed for o in outcomes)
        await memory.connect()
        await asyncio.wait_for(publisher.flush_spool(), 10)
    assert len(memory.messages(queue_name)) == 10


async def test_what_a_closed_publisher_did_not_drain_is_sent_by_the_next_one(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    config = SpoolConfig(directory=tmp_path)
    async with Publisher(memory, spool=config) as publisher:
        await memory.close()
        ids = [await publisher.publish(n, routing_key=queue_name) for n in range(5)]
    assert read_status(tmp_path).depth == 5
    assert read_status(tmp_path).owner_pid is None
    await memory.connect()

    async with Publisher(memory, spool=config) as publisher:
        await asyncio.wait_for(publisher.flush_spool(), 10)

    assert [m.properties.message_id for m in memory.messages(queue_name)] == ids


async def test_without_a_spool_publish_still_returns_the_message_id(
    memory: MemoryBackend, queue_name: str
) -> None:
    receipt = await Publisher(memory).publish("x", routing_key=queue_name, message_id="m-1")

    assert receipt == "m-1" and isinstance(receipt, str)
    assert receipt.message_id == "m-1" and not receipt.spooled and receipt.confirmed


async def test_an_append_racing_the_ack_that_empties_the_spool_is_not_lost(
    open_spool: SpoolFactory,
) -> None:
    spool = await open_spool()
    await spool.append(message(0))
    await spool.next()

    # The ack empties the spool (a new segment is begun) while an append comes in.
    await asyncio.gather(spool.ack(), spool.append(message(1)))

    assert spool.depth == 1
    assert await asyncio.wait_for(take(spool, 1), 5) == ["id-1"]


async def test_a_closed_publisher_with_a_spool_refuses_to_publish(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    publisher = Publisher(memory, spool=SpoolConfig(directory=tmp_path))
    await publisher.publish("x", routing_key=queue_name)
    await publisher.close()

    with pytest.raises(ConnectionLost, match="closed"):
        await publisher.publish("y", routing_key=queue_name)
    assert read_status(tmp_path).owner_pid is None


async def test_a_full_spool_refuses_a_publish_with_what_to_change(
    memory: MemoryBackend, queue_name: str, tmp_path: Path
) -> None:
    config = SpoolConfig(directory=tmp_path, max_bytes=1000)
    async with Publisher(memory, spool=config) as publisher:
        await memory.close()
        with pytest.raises(SpoolFull, match="max_bytes=1000"):
            for number in range(100):
                await publisher.publish(number, routing_key=queue_name)


# -- bad input: an unusable directory, a damaged record inside the spool ---------------


@pytest.mark.parametrize(
    "where",
    [
        # Both refuse writes to root as well (the tests may run as root, where a chmod
        # does not stop writes): a path under a regular file, and a directory of /proc.
        "under a regular file",
        "a read-only directory (/proc/self)",
    ],
)
async def test_a_spool_directory_that_cannot_be_written_fails_at_start_with_one_line(
    memory: MemoryBackend, tmp_path: Path, where: str
) -> None:
    if where == "under a regular file":
        (tmp_path / "file").write_text("not a directory")
        directory = tmp_path / "file" / "spool"
    else:
        directory = Path("/proc/self")
    publisher = Publisher(memory, spool=SpoolConfig(directory=directory))

    with pytest.raises(ConfigurationError) as raised:
        await publisher.start()

    text = str(raised.value)
    assert "\n" not in text
    assert f"SpoolConfig(directory={str(directory)!r})" in text
    assert "writable directory" in text
    assert publisher.spool is None


class LogRecords(logging.Handler):
    """Keeps the records logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def record_offsets(path: Path) -> list[int]:
    """Where each record of the segment file `path` begins."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        length, _ = parse_header(data[offset : offset + HEADER.size])
        offset += HEADER.size + length
    return offsets


async def spool_with_a_damaged_record(
    directory: Path, damage: str, *, count: int = 5, damaged: int = 2
) -> tuple[Path, int, int]:
    """`count` messages spooled in `directory`, record `damaged` then damaged in place;
    (segment file, the damaged record's offset, its size)."""
    spool = await Spool.open(SpoolConfig(directory=directory))
    for number in range(count):
        await spool.append(message(number))
    await spool.close()
    [index] = _files.segments(directory)
    path = _files.segment_path(directory, index)
    offsets = record_offsets(path)
    start, end = offsets[damaged], offsets[damaged + 1]
    data = bytearray(path.read_bytes())
    if damage == "body bits flipped":
        data[end - 3] ^= 0xFF
    elif damage == "header overwritten":
        data[start : start + HEADER.size] = b"\x00" * HEADER.size
    else:  # "length too long": the header points past the next record
        data[start + 4 : start + 8] = (end - start + 40).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path, start, end - start


DAMAGE = ["body bits flipped", "header overwritten", "length too long"]


@pytest.mark.parametrize("damage", DAMAGE)
async def test_a_damaged_record_inside_the_spool_stops_the_reader_at_its_offset(
    open_spool: SpoolFactory, tmp_path: Path, damage: str
) -> None:
    # Given five spooled messages, the third damaged on disk (not the torn end of a crash)
    path, offset, _ = await spool_with_a_damaged_record(tmp_path / "spool", damage)

    # When the spool is opened and read
    logged = LogRecords()
    logging.getLogger("foxwork.spool").addHandler(logged)
    try:
        spool = await open_spool()
    finally:
        logging.getLogger("foxwork.spool").removeHandler(logged)
    assert await take(spool, 2) == ["id-0", "id-1"]

    # Then the reader stops at the damaged record, naming the file and the offset, and
    # nothing after it is skipped silently or cut off
    with pytest.raises(SpoolCorrupt, match="--skip-corrupt") as raised:
        await spool.next()
    assert (raised.value.path, raised.value.offset) == (path, offset)
    assert f"{path}" in str(raised.value) and f"offset {offset}" in str(raised.value)
    assert spool.depth == 2  # id-3 and id-4, still there
    with pytest.raises(SpoolCorrupt):
        await spool.next()
    assert any(
        r.levelname == "ERROR" and f"{path} is damaged at offset {offset}" in r.getMessage()
        for r in logged.records
    )

    # And the status shows the damage
    [shown] = read_status(tmp_path / "spool").damaged
    assert (shown.path, shown.offset) == (path, offset)


@pytest.mark.parametrize("damage", DAMAGE)
async def test_skip_corrupt_skips_to_the_next_intact_record_and_counts_the_bytes(
    open_spool: SpoolFactory, tmp_path: Path, damage: str
) -> None:
    # Given five spooled messages, the third damaged
    _, _, size = await spool_with_a_damaged_record(tmp_path / "spool", damage)

    # When the spool is opened with skip_corrupt and read
    spool = await open_spool(skip_corrupt=True)

    # Then every intact message comes out, and the bytes skipped are counted
    assert await take(spool, 4) == ["id-0", "id-1", "id-3", "id-4"]
    assert spool.skipped_bytes == size
    assert spool.depth == 0
    await spool.sync_position()
    await spool.close()
    assert read_status(tmp_path / "spool").damaged == ()


async def test_a_damaged_end_of_a_sealed_segment_is_no_torn_record(
    open_spool: SpoolFactory, tmp_path: Path
) -> None:
    # Given two segments, the last record of the first damaged
    spool = await open_spool(segment_bytes=400)
    for number in range(6):
        await spool.append(message(number))
    await spool.close()
    first, *_ = _files.segments(tmp_path / "spool")
    path = _files.segment_path(tmp_path / "spool", first)
    offsets = record_offsets(path)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    # When it is opened: then the damage is reported (and the file left as it is)
    spool = await open_spool()
    assert await take(spool, len(offsets) - 1) == [f"id-{n}" for n in range(len(offsets) - 1)]
    with pytest.raises(SpoolCorrupt) as raised:
        await spool.next()
    assert raised.value.offset == offsets[-1] and path.stat().st_size == size
    await spool.close()

    # And with skip_corrupt, the messages of the next segment come after it
    spool = await open_spool(skip_corrupt=True)
    assert await take(spool, 6 - len(offsets)) == [f"id-{n}" for n in range(len(offsets), 6)]


async def test_a_publisher_drains_up_to_a_damaged_record_and_flush_spool_says_so(
    tmp_path: Path,
) -> None:
    # Given a spool whose third message (of five, for the queue "orders") is damaged
    _, offset, _ = await spool_with_a_damaged_record(tmp_path, "body bits flipped")
    broker = MemoryBackend(queues=["orders"])
    await broker.connect()

    # When a publisher opens it with the broker up
    async with Publisher(broker, spool=SpoolConfig(directory=tmp_path)) as publisher:
        # Then it sends what comes before the damage, and flush_spool raises the damage
        with pytest.raises(SpoolCorrupt, match=f"offset {offset}"):
            await asyncio.wait_for(publisher.flush_spool(), 10)
    assert [m.properties.message_id for m in broker.messages("orders")] == ["id-0", "id-1"]
    assert read_status(tmp_path).depth == 2


# -- the drainer: a window of confirms awaited at once, acked in order -------------------


class SlowConfirms(MemoryBackend):
    """A MemoryBackend whose publishes take a loop turn or two to be confirmed, counting
    how many wait at once, and refusing the first `refuse` publishes of the id `refused`."""

    def __init__(self, *, refused: str | None = None, refuse: int = 0) -> None:
        super().__init__(queues=["orders"])
        self.in_flight = self.most_in_flight = 0
        self.refused, self.refuse = refused, refuse

    async def publish(
        self, routing_key: str, body: bytes, properties: Any = None, *, exchange: str = ""
    ) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if properties.message_id == self.refused and self.refuse:
                self.refuse -= 1
                raise PublishNotConfirmed("nacked, for the test")
            await super().publish(routing_key, body, properties, exchange=exchange)
            await asyncio.sleep(0)
        finally:
            self.in_flight -= 1


async def test_the_drainer_keeps_a_window_of_publishes_in_flight_and_acks_in_order(
    open_spool: SpoolFactory,
) -> None:
    spool = await open_spool()
    await asyncio.gather(*(spool.append(message(n)) for n in range(500)))
    broker = SlowConfirms()
    await broker.connect()

    sent = await Drainer(spool, broker, window=64).drain()

    assert sent == 500 and spool.depth == 0
    assert broker.most_in_flight == 64
    ids = [m.properties.message_id for m in broker.messages("orders")]
    assert ids == [f"id-{n}" for n in range(500)]


async def test_after_a_refused_publish_the_drainer_sends_again_from_it_alone_first(
    open_spool: SpoolFactory,
) -> None:
    # Given 100 spooled messages, the 10th refused twice by the broker
    spool = await open_spool()
    await asyncio.gather(*(spool.append(message(n)) for n in range(100)))
    broker = SlowConfirms(refused="id-10", refuse=2)
    await broker.connect()
    drainer = Drainer(spool, broker, window=16, backoff=Backoff(initial=0.001, max=0.001))

    # When it is drained
    sent = await asyncio.wait_for(drainer.drain(), 10)

    # Then every message arrives, the ones confirmed behind the refused one twice at most,
    # and the spool is empty
    assert sent == 100 and spool.depth == 0 and drainer.last_error is None
    ids = [m.properties.message_id for m in broker.messages("orders")]
    assert set(ids) == {f"id-{n}" for n in range(100)}
    assert len(ids) - 100 <= 15, f"{len(ids) - 100} duplicates"
    assert ids[:10] == [f"id-{n}" for n in range(10)]


async def test_publish_many_keeps_at_most_max_in_flight_publishes_waiting() -> None:
    broker = SlowConfirms()
    await broker.connect()

    outcomes = await Publisher(broker).publish_many(
        (OutboundMessage(n, "orders") for n in range(300)), max_in_flight=50
    )

    assert all(o.confirmed for o in outcomes) and broker.most_in_flight == 50
    assert [m.body for m in broker.messages("orders")] == [str(n).encode() for n in range(300)]


class HangingConfirms(MemoryBackend):
    """A MemoryBackend whose publishes wait for a confirm that never comes."""

    def __init__(self) -> None:
        super().__init__(queues=["orders"])
        self.started = 0

    async def publish(
        self, routing_key: str, body: bytes, properties: Any = None, *, exchange: str = ""
    ) -> None:
        self.started += 1
        await asyncio.Event().wait()


async def test_stopping_the_drainer_abandons_the_publishes_in_flight(
    open_spool: SpoolFactory,
) -> None:
    # Given a drainer whose publishes are never confirmed
    spool = await open_spool()
    await asyncio.gather(*(spool.append(message(n)) for n in range(10)))
    broker = HangingConfirms()
    await broker.connect()
    drainer = Drainer(spool, broker, window=4)
    drainer.start()
    await wait_until(lambda: broker.started >= 1, what="a publish started")

    # When it is stopped: then it returns at once, and every message is still spooled
    await asyncio.wait_for(drainer.stop(), 5)
    assert spool.depth == 10 and drainer.sent == 0
