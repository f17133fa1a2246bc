"""`Spool`: a durable, ordered log of messages on local disk, and `SpoolConfig`.

A message appended is on disk, fsynced, when `append()` returns. Appends made while an
fsync runs wait for the next one and share it (group commit): N concurrent appends cost
far fewer than N fsyncs. The file I/O runs in a thread (`asyncio.to_thread`), never on the
event loop.

A reader takes the records in order (`next()`), one at a time, and `ack()`s each once the
broker confirmed it. The read position is written atomically, after the acks (a later
write covers every ack made meanwhile), so after a crash it is a lower bound: a restart
may send again a message that was confirmed (with the same message id), never skip one.
A segment is deleted once the written position has moved past it.

On open, every record from the read position on is checked (length and CRC-32): a torn
record at the end of the last segment (a crash mid-append, before its fsync, so its
`append()` never returned) is cut off. A damaged record inside the spool (intact records
after it, or at the end of a sealed segment) is logged as an ERROR with its segment file
and offset, and the reader stops there (`next()` raises `SpoolCorrupt`): the messages
behind it wait, nothing is skipped silently. With `SpoolConfig(skip_corrupt=True)` the
reader skips to the next intact record (its magic and a matching CRC) and counts the bytes
skipped (`skipped_bytes`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigurationError, FoxworkError
from . import _files
from ._lock import PidLock, pid_alive, read_owner
from ._metrics import observe_spool
from ._records import SpooledMessage, decode_message, encode_message, frame

__all__ = [
    "DamagedRecord",
    "Spool",
    "SpoolConfig",
    "SpoolCorrupt",
    "SpoolFull",
    "SpoolStatus",
    "read_status",
]

logger = logging.getLogger("foxwork.spool")

#: Default bound of the spool: bytes of records not yet confirmed.
DEFAULT_MAX_BYTES = 1 << 30
#: Default size at which a new segment is begun.
DEFAULT_SEGMENT_BYTES = 64 << 20
#: Bytes of records read from disk at a time by the reader.
READ_AHEAD_BYTES = 1 << 20

#: A record read: the message, where it begins (segment, offset), its size.
_Record = tuple[SpooledMessage, tuple[int, int], int]


class SpoolFull(FoxworkError):
    """The spool holds `max_bytes` of messages the broker has not confirmed yet."""


@dataclasses.dataclass(frozen=True, slots=True)
class DamagedRecord:
    """Damaged bytes inside a spool: no intact record begins at `offset` of the segment
    file `path`; the next one begins `size` bytes later (or the segment ends).

    Attributes:
        path: the segment file.
        offset: where the damaged bytes begin.
        size: how many bytes `skip_corrupt` skips.
        reason: what is wrong with them.
    """

    path: Path
    offset: int
    size: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} at offset {self.offset} ({self.size} bytes: {self.reason})"


class SpoolCorrupt(FoxworkError):
    """The next record of the spool is damaged: the reader stops there, so that no message
    is skipped unless asked (`SpoolConfig(skip_corrupt=True)`, `foxwork spool drain
    --skip-corrupt`).

    Attributes:
        path: the segment file.
        offset: the damaged record's offset in it.
        size: the bytes up to the next intact record (what skipping loses).
    """

    def __init__(self, damage: DamagedRecord) -> None:
        self.path = damage.path
        self.offset = damage.offset
        self.size = damage.size
        super().__init__(
            f"the spool segment {damage.path} is damaged at offset {damage.offset} "
            f"({damage.reason}): the messages behind it wait. Skip its {damage.size} bytes "
            f"with `foxwork spool drain {damage.path.parent} --skip-corrupt`, or "
            "SpoolConfig(skip_corrupt=True); what they held is lost"
        )


@dataclasses.dataclass(frozen=True)
class SpoolConfig:
    """Where and how much a `Publisher` spools while the broker is unreachable.

    Args:
        directory: the spool's directory (created if missing); one process at a time.
        max_bytes: the most bytes of unconfirmed messages (records, headers included)
            kept on disk; at the bound, publishing raises `SpoolFull`, or waits for room
            with `block_when_full`.
        segment_bytes: the size of one segment file before a new one is begun.
        block_when_full: wait for the drainer to make room instead of raising `SpoolFull`.
        skip_corrupt: skip a damaged record inside the spool (to the next intact one,
            logging where and how many bytes) instead of stopping there with
            `SpoolCorrupt`.

    Example:
        SpoolConfig(directory="/var/spool/orders", max_bytes=512 * 1024 * 1024)
    """

    directory: str | os.PathLike[str]
    max_bytes: int = DEFAULT_MAX_BYTES
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    block_when_full: bool = False
    skip_corrupt: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigurationError(f"SpoolConfig(max_bytes={self.max_bytes!r}) must be >= 1")
        if not isinstance(self.segment_bytes, int) or self.segment_bytes < 1:
            raise ConfigurationError(
                f"SpoolConfig(segment_bytes={self.segment_bytes!r}) must be >= 1"
            )

    @property
    def path(self) -> Path:
        return Path(self.directory)


@dataclasses.dataclass(frozen=True, slots=True)
class SpoolStatus:
    """A spool directory at a glance (`read_status`, `foxwork spool status`).

    Attributes:
        directory: the directory.
        depth: messages not yet confirmed by the broker.
        bytes: their size on disk, record headers included.
        segments: segment files.
        oldest_age: seconds since the oldest of them was spooled, or None when empty.
        owner_pid: the PID the lock file names, or None.
        owner_alive: whether that process exists.
        damaged: damaged records inside it, where the drainer stops (see `SpoolCorrupt`).
    """

    directory: Path
    depth: int
    bytes: int
    segments: int
    oldest_age: float | None
    owner_pid: int | None
    owner_alive: bool
    damaged: tuple[DamagedRecord, ...] = ()


class Spool:
    """A durable FIFO of messages in a directory. Open it with `await Spool.open(config)`.

    Appends may come from many tasks at once; one reader (a drainer) calls `next()` and
    `ack()`. Use it from one event loop.
    """

    def __init__(self, config: SpoolConfig) -> None:
        self.config = config
        self.directory = config.path
        self._lock = PidLock(self.directory)
        #: Where each segment's intact records end (the written part of the last one).
        self._ends: dict[int, int] = {}
        self._read = (0, 0)
        self._depth = 0
        self._bytes = 0
        #: Where the next record to read begins (after those buffered and handed out).
        self._cursor = (0, 0)
        #: Records read, not handed out yet; and handed out, not acked yet (oldest first).
        self._buffer: collections.deque[_Record] = collections.deque()
        self._handed: collections.deque[_Record] = collections.deque()
        #: Damaged bytes not read past yet, by (segment, offset).
        self._damaged: dict[tuple[int, int], DamagedRecord] = {}
        #: Bytes of damaged records skipped (`skip_corrupt`).
        self.skipped_bytes = 0
        #: The damaged record the reader stopped at, or None.
        self.corruption: SpoolCorrupt | None = None
        self._read_fd: tuple[int, int] | None = None
        # The writer: its segment and offset belong to the flusher's thread while it runs.
        self._write_segment = 0
        self._write_offset = 0
        self._write_fd: int | None = None
        self._sealed_end = 0
        #: The last segment whose end `_ends` holds (the writer's, as of the last flush).
        self._last_segment = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._position_dirty = False
        self._position_writer: asyncio.Task[None] | None = None
        self._oldest_segment = 0
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._acked = asyncio.Event()
        self._stop_metrics: Callable[[], None] = lambda: None
        self._closed = False

    @classmethod
    async def open(cls, config: SpoolConfig) -> Spool:
        """Open (or create) the spool of `config`, checking what it holds.

        Raises:
            SpoolLocked: another live process has it open.
            ConfigurationError: the directory cannot be created or written to.
        """
        spool = cls(config)
        try:
            await asyncio.to_thread(spool._open)
        except OSError as exc:
            raise _unusable(config.path, exc) from None
        spool._stop_metrics = observe_spool(spool)
        if spool._depth:
            spool._readable.set()
        return spool

    def __repr__(self) -> str:
        return f"<Spool {str(self.directory)!r} depth={self._depth} size={self._bytes}>"

    @property
    def depth(self) -> int:
        """Messages on disk not yet acked."""
        return self._depth

    @property
    def size(self) -> int:
        """Bytes of the messages not yet acked, record headers included."""
        return self._bytes

    @property
    def busy(self) -> bool:
        """Whether it holds a message, or one is being appended."""
        return bool(self._depth or self._pending or self._flusher is not None)

    # -- opening and closing -----------------------------------------------------------

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", str(self.directory))
        self._lock.acquire()
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            raise

    def _recover(self) -> None:
        indexes = _files.segments(self.directory)
        position = _files.read_position(self.directory)
        if position is None:
            position = (indexes[0] if indexes else 0, 0)
        first, offset = position
        for index in indexes:
            if index < first:  # drained before the crash, not yet deleted
                _files.remove_segment(self.directory, index)
        indexes = [index for index in indexes if index >= first]
        for number, index in enumerate(indexes):
            start = offset if index == first else 0
            fd = os.open(_files.segment_path(self.directory, index), os.O_RDWR)
            try:
                scan = _files.scan_segment(fd, start, verify=True, sealed=number < len(indexes) - 1)
                if scan.error is not None:
                    self._repair(fd, index, scan)
            finally:
                os.close(fd)
            self._ends[index] = scan.end
            self._depth += scan.records
            self._bytes += scan.size
            path = _files.segment_path(self.directory, index)
            for bad in scan.damaged:
                self._damaged[index, bad.offset] = DamagedRecord(
                    path, bad.offset, bad.size, bad.reason
                )
        for damage in self._damaged.values():
            logger.error(
                "the spool segment %s is damaged at offset %d (%s; %d bytes up to the next "
                "intact record): %s",
                damage.path,
                damage.offset,
                damage.reason,
                damage.size,
                "they will be skipped (skip_corrupt)"
                if self.config.skip_corrupt
                else "the drainer stops there; skip them with foxwork spool drain DIR "
                "--skip-corrupt, or SpoolConfig(skip_corrupt=True)",
            )
        self._read = self._cursor = position
        self._oldest_segment = first
        self._write_segment = indexes[-1] if indexes else first
        self._write_offset = self._ends.get(self._write_segment, 0)
        self._ends.setdefault(self._write_segment, self._write_offset)
        self._last_segment = self._write_segment
        if self._write_segment == first and self._write_offset < offset:
            self._write_offset = self._ends[first] = offset

    def _repair(self, fd: int, index: int, scan: _files.Scan) -> None:
        # The end of the last segment: a crash during an append. That append never
        # returned, nobody was told the message was kept.
        path = _files.segment_path(self.directory, index)
        logger.warning("cutting a torn record off the end of %s (%s)", path, scan.error)
        os.ftruncate(fd, scan.end)
        os.fsync(fd)

    async def close(self) -> None:
        """Finish the appends under way, write the read position, give the lock up.
        What is not yet acked stays on disk for the next open."""
        if self._closed:
            return
        self._closed = True
        self._stop_metrics()
        while self._flusher is not None:
            await asyncio.wait([self._flusher])
        await self.sync_position()
        await asyncio.to_thread(self._close_files)

    def _close_files(self) -> None:
        for fd in (self._write_fd, self._read_fd[1] if self._read_fd else None):
            if fd is not None:
                os.close(fd)
        self._write_fd = self._read_fd = None
        self._lock.release()

    # -- appending -------------------------------------------------------------------

    async def append(self, message: SpooledMessage) -> None:
        """Add `message` at the end; it is on disk (fsynced) when this returns.

        Raises:
            SpoolFull: the spool holds `max_bytes` already (unless `block_when_full`, which
                waits for room instead), or the message alone is larger than that.
            OSError: the disk refused the write; the message is not in the spool.
        """
        if self._closed:
            raise FoxworkError(f"the spool {str(self.directory)!r} is closed")
        record = frame(encode_message(message))
        limit = self.config.max_bytes
        if len(record) > limit:
            raise SpoolFull(
                f"a message of {len(record)} bytes does not fit in the spool "
                f"{str(self.directory)!r} at all: raise SpoolConfig(max_bytes={limit})"
            )
        while self._bytes + self._pending_bytes + len(record) > limit:
            if not self.config.block_when_full:
                raise SpoolFull(
                    f"the spool {str(self.directory)!r} is full: {self._depth} message(s), "
                    f"{self._bytes + self._pending_bytes} bytes of max_bytes={limit} wait "
                    "for the broker. Raise SpoolConfig(max_bytes=...), or set "
                    "block_when_full=True to wait for room instead"
                )
            self._room.clear()
            await self._room.wait()
        done = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        self._pending_bytes += len(record)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="foxwork-spool-flush"
            )
        # Not shielded: the record is written whether or not its caller still waits.
        await done

    async def _flush(self) -> None:
        # Group commit: each round writes and fsyncs every record appended until it began.
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                records = [record for record, _ in batch]
                self._pending_bytes -= sum(map(len, records))
                try:
                    written, ends, error = await asyncio.to_thread(self._write, records)
                except BaseException as exc:
                    # Never leave an append waiting forever (cancelled: the loop is closing).
                    failure = (
                        exc
                        if isinstance(exc, Exception)
                        else FoxworkError(
                            f"the spool {str(self.directory)!r} stopped writing: {exc!r}"
                        )
                    )
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(failure)
                    raise
                # Published on the loop, after the fsync: the reader never sees a record
                # whose append has not returned.
                self._ends.update(ends)
                self._last_segment = max(self._last_segment, *ends)
                for record, done in batch[:written]:
                    self._depth += 1
                    self._bytes += len(record)
                    if not done.done():
                        done.set_result(None)
                for _, done in batch[written:]:
                    if not done.done():
                        assert error is not None
                        done.set_exception(error)
                if written:
                    self._readable.set()
        finally:
            self._flusher = None

    def _write(self, records: list[bytes]) -> tuple[int, dict[int, int], OSError | None]:
        """Write and fsync `records` (in a thread): how many are durable, where each
        segment written to now ends, and the error that stopped the batch, if any."""
        ends: dict[int, int] = {}
        durable = written = 0
        batch_start = self._write_offset
        limit = self.config.segment_bytes
        try:
            # One write() per segment the group goes to, then one fsync.
            chunk: list[bytes] = []
            for record in records:
                if self._write_offset and self._write_offset + len(record) > limit:
                    self._write_all(chunk)
                    chunk = []
                    self._seal()
                    ends[self._write_segment - 1] = self._sealed_end
                    batch_start = 0
                    durable = written
                chunk.append(record)
                self._write_offset += len(record)
                written += 1
            self._write_all(chunk)
            os.fsync(self._writer())
        except OSError as exc:
            # Nothing after the last fsync is durable: cut it off, so that no record half
            # written, or written but refused to its publisher, is left behind.
            if self._write_fd is not None:
                os.ftruncate(self._write_fd, batch_start)
            self._write_offset = batch_start
            ends[self._write_segment] = batch_start
            return durable, ends, exc
        ends[self._write_segment] = self._write_offset
        return written, ends, None

    def _write_all(self, records: list[bytes]) -> None:
        view = memoryview(b"".join(records))
        fd = self._writer()
        while view:
            view = view[os.write(fd, view) :]

    def _writer(self) -> int:
        if self._write_fd is None:
            path = _files.segment_path(self.directory, self._write_segment)
            created = not path.exists()
            self._write_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if created:
                _files.fsync_directory(self.directory)
        return self._write_fd

    def _seal(self) -> None:
        """Finish the current segment (fsynced) and begin the next."""
        fd = self._writer()
        os.fsync(fd)
        os.close(fd)
        self._sealed_end = self._write_offset
        self._write_fd = None
        self._write_segment += 1
        self._write_offset = 0

    # -- reading ---------------------------------------------------------------------

    async def next(self) -> SpooledMessage:
        """The oldest message not yet acked; waits for one. Until `ack()`, every call
        returns the same message.

        Raises:
            SpoolCorrupt: the next record is damaged (without `skip_corrupt`).
        """
        while not self._handed:
            await self.read_ahead(1)
        return self._handed[0][0]

    async def read_ahead(self, limit: int, *, wait: bool = True) -> list[SpooledMessage]:
        """Hand out up to `limit` messages after those handed out already (and not acked),
        oldest first, for a reader that sends several at once; `ack(count)` acks the
        oldest `count` handed out, `rewind()` hands the unacked ones out again.

        Waits for one when there is none (unless `wait` is False: then returns `[]`).
        Returns `[]` as well when the next record is damaged while messages handed out
        are not acked yet (the damage is raised, or skipped, once they are).

        Raises:
            SpoolCorrupt: the next record is damaged (without `skip_corrupt`), and every
                message handed out was acked.
        """
        while not self._buffer:
            segment, offset = self._cursor
            damage = self._damaged.get(self._cursor)
            if damage is not None:
                if self._handed:
                    return []
                self._pass_damage(damage)
            elif offset < self._ends.get(segment, 0):
                stop = min(
                    (at for index, at in self._damaged if index == segment and at > offset),
                    default=self._ends[segment],
                )
                records = await asyncio.to_thread(self._read_many, segment, offset, stop)
                if self._cursor == (segment, offset):  # not rolled over meanwhile
                    self._buffer.extend(records)
                    _, (_, last), size = records[-1]
                    self._cursor = (segment, last + size)
            elif segment < self._last_segment:
                self._cursor = (segment + 1, 0)  # the segment is read through
            elif not wait:
                return []
            else:
                self._readable.clear()
                await self._readable.wait()
        handed: list[SpooledMessage] = []
        while self._buffer and len(handed) < limit:
            record = self._buffer.popleft()
            self._handed.append(record)
            handed.append(record[0])
        return handed

    def rewind(self) -> None:
        """Hand the messages handed out and not acked out again (`read_ahead`)."""
        self._handed.extend(self._buffer)
        self._buffer, self._handed = self._handed, collections.deque()

    def _pass_damage(self, damage: DamagedRecord) -> None:
        if not self.config.skip_corrupt:
            if self.corruption is None:
                self.corruption = SpoolCorrupt(damage)
                self._acked.set()  # wake `wait_empty()`, to raise it
            raise self.corruption
        logger.warning("skipping %d damaged bytes of the spool segment %s", damage.size, damage)
        del self._damaged[self._cursor]
        segment, offset = self._cursor
        self._read = self._cursor = (segment, offset + damage.size)
        self.skipped_bytes += damage.size
        self._moved()

    def _read_many(self, segment: int, offset: int, stop: int) -> list[_Record]:
        """The intact records of `segment` from `offset` up to `stop` (at least one; at
        most `READ_AHEAD_BYTES` of them, unless the first alone is larger)."""
        if self._read_fd is None or self._read_fd[0] != segment:
            if self._read_fd is not None:
                os.close(self._read_fd[1])
            fd = os.open(_files.segment_path(self.directory, segment), os.O_RDONLY)
            self._read_fd = (segment, fd)
        fd = self._read_fd[1]
        chunk = os.pread(fd, min(stop - offset, READ_AHEAD_BYTES), offset)
        records: list[_Record] = []
        at = 0
        while at < len(chunk):
            payload, size = _files.parse_record(chunk, at)
            if payload is None:
                if records:
                    break  # the rest of this record is read next time
                payload, size = _files.read_record(fd, offset + at)
            records.append((decode_message(payload), (segment, offset + at), size))
            at += size
        return records

    async def ack(self, count: int = 1) -> None:
        """The oldest `count` messages handed out (`next()`, `read_ahead()`) were
        confirmed: move past them."""
        if count < 1 or count > len(self._handed):
            raise FoxworkError(
                f"ack({count}) with {len(self._handed)} message(s) handed out by next()"
            )
        size = 0
        for _ in range(count):
            _, (segment, offset), last = self._handed.popleft()
            size += last
        self._read = (segment, offset + last)
        self._depth -= count
        self._bytes -= size
        self._room.set()
        self._acked.set()
        if not self.busy and self._write_offset:
            # Drained: the next append begins a new segment, and this one can go. No await
            # in between: an append cannot slip into the old segment meanwhile.
            self._roll()
        self._moved()

    def _moved(self) -> None:
        """The read position moved: write it (soon, in the background)."""
        self._position_dirty = True
        if self._position_writer is None:
            self._position_writer = asyncio.get_running_loop().create_task(
                self._write_positions(), name="foxwork-spool-position"
            )

    def _roll(self) -> None:
        fd, self._write_fd = self._write_fd, None
        if fd is not None:
            os.close(fd)  # closing a file written and fsynced does not wait for the disk
        self._write_segment += 1
        self._write_offset = 0
        self._last_segment = self._write_segment
        self._ends[self._write_segment] = 0
        self._read = self._cursor = (self._write_segment, 0)

    async def _write_positions(self) -> None:
        try:
            while self._position_dirty:
                self._position_dirty = False
                await asyncio.to_thread(self._persist_position, self._read)
        finally:
            self._position_writer = None

    def _persist_position(self, position: tuple[int, int]) -> None:
        _files.write_position(self.directory, position)
        while self._oldest_segment < position[0]:
            _files.remove_segment(self.directory, self._oldest_segment)
            self._ends.pop(self._oldest_segment, None)
            self._oldest_segment += 1

    async def wait_empty(self) -> None:
        """Return once every message appended so far was acked.

        Raises:
            SpoolCorrupt: the reader stopped at a damaged record.
        """
        while self.busy:
            if self.corruption is not None:
                raise self.corruption
            self._acked.clear()
            await self._acked.wait()

    async def sync_position(self) -> None:
        """Return once the read position of every ack so far is on disk."""
        while self._position_writer is not None:
            await asyncio.wait([self._position_writer])


def read_status(directory: str | os.PathLike[str]) -> SpoolStatus:
    """Look at a spool directory without opening it (its owner may be running).

    Raises:
        FileNotFoundError: there is no such directory.
    """
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"no spool directory {str(path)!r}")
    indexes = _files.segments(path)
    first, offset = _files.read_position(path) or (indexes[0] if indexes else 0, 0)
    depth = size = 0
    oldest: float | None = None
    damaged: list[DamagedRecord] = []
    remaining = [index for index in indexes if index >= first]
    for index in remaining:
        segment = _files.segment_path(path, index)
        try:
            fd = os.open(segment, os.O_RDONLY)
        except FileNotFoundError:  # drained and deleted meanwhile
            continue
        try:
            start = offset if index == first else 0
            scan = _files.scan_segment(fd, start, verify=True, sealed=index != remaining[-1])
            first_record = start
            if scan.damaged and scan.damaged[0].offset == start:
                first_record = scan.damaged[0].end
            if scan.records and oldest is None:
                oldest = decode_message(_files.read_record(fd, first_record)[0]).spooled_at
        finally:
            os.close(fd)
        depth += scan.records
        size += scan.size
        damaged += [DamagedRecord(segment, d.offset, d.size, d.reason) for d in scan.damaged]
    owner = read_owner(path)
    return SpoolStatus(
        directory=path,
        depth=depth,
        bytes=size,
        segments=len([index for index in indexes if index >= first]),
        oldest_age=None if oldest is None else max(0.0, time.time() - oldest),
        owner_pid=owner,
        owner_alive=owner is not None and pid_alive(owner),
        damaged=tuple(damaged),
    )


def _unusable(directory: Path, exc: OSError) -> ConfigurationError:
    """The one-line error of a spool directory that cannot be created or written to."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
    return ConfigurationError(
        f"SpoolConfig(directory={str(directory)!r}) cannot be used: "
        f"{exc.strerror or exc}{where}: give it a writable directory on a local disk "
        "(it is created if missing)"
    )
