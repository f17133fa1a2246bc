"""The files of a spool directory: numbered segments of records, and the read position.

    DIR/0000000000000007.seg   records appended in order; a new segment is begun when one
                               would grow past `segment_bytes`, or when the spool was drained
    DIR/position               {"segment": 7, "offset": 4096}: where the first record not yet
                               confirmed by the broker begins (written atomically)
    DIR/lock                   the owner's PID (see `_lock.py`)

Everything here is blocking file I/O: `Spool` calls it in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

from ._records import HEADER, MAGIC, VERSION, RecordError, check_payload, parse_header

__all__ = [
    "Damage",
    "Scan",
    "find_record",
    "fsync_directory",
    "parse_record",
    "read_position",
    "read_record",
    "remove_segment",
    "scan_segment",
    "segment_path",
    "segments",
    "write_position",
]

_SUFFIX = ".seg"
POSITION_NAME = "position"


def segment_path(directory: Path, index: int) -> Path:
    return directory / f"{index:016d}{_SUFFIX}"


def segments(directory: Path) -> list[int]:
    """The indexes of the segment files in `directory`, in order."""
    found = []
    for path in directory.iterdir():
        if path.suffix == _SUFFIX and path.stem.isdigit():
            found.append(int(path.stem))
    return sorted(found)


def fsync_directory(directory: Path) -> None:
    """Make the creation, rename or removal of a file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_position(directory: Path) -> tuple[int, int] | None:
    """(segment, offset) of the first record not yet confirmed, or None (no file yet)."""
    try:
        data = json.loads((directory / POSITION_NAME).read_text())
        return int(data["segment"]), int(data["offset"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"{directory / POSITION_NAME} is not a read position: {exc}") from exc


def write_position(directory: Path, position: tuple[int, int]) -> None:
    """Replace the read position atomically: a crash leaves the old one or the new one."""
    temporary = directory / (POSITION_NAME + ".tmp")
    segment, offset = position
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps({"segment": segment, "offset": offset}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / POSITION_NAME)
    fsync_directory(directory)


@dataclasses.dataclass(frozen=True, slots=True)
class Damage:
    """Damaged bytes inside a segment: from `offset` (where a record should begin but no
    intact one does) to `end` (where the next intact record begins, or the file ends)."""

    offset: int
    end: int
    #: What is wrong with the record at `offset`.
    reason: str

    @property
    def size(self) -> int:
        return self.end - self.offset


@dataclasses.dataclass(slots=True)
class Scan:
    """What `scan_segment` found from its start offset on."""

    records: int = 0
    #: Bytes of those records, headers included.
    size: int = 0
    #: The offset just past the last intact record.
    end: int = 0
    #: Damaged bytes with intact records after them, in order.
    damaged: list[Damage] = dataclasses.field(default_factory=list)
    #: Why the bytes from `end` to the end of the file hold no intact record, or None.
    error: str | None = None


def scan_segment(fd: int, start: int, *, verify: bool, sealed: bool = False) -> Scan:
    """Walk the records of an open segment from `start`; with `verify`, check each CRC.

    A record that is not intact, followed by an intact one, is `Damage` (skipped over, to
    go on walking); one with no intact record after it ends the walk (`Scan.error`), unless
    the segment is `sealed` (one that is no longer written to: nothing at its end can be an
    append cut short), where it is `Damage` up to the end of the file.
    """
    file_size = os.fstat(fd).st_size
    scan = Scan(end=start)
    offset = start
    while offset < file_size:
        try:
            length = _check_record(fd, offset, file_size, verify=verify)
        except RecordError as exc:
            following = _next_record(fd, offset, file_size)
            if following is None:
                if sealed:
                    scan.damaged.append(Damage(offset, file_size, str(exc)))
                else:
                    scan.error = f"offset {offset}: {exc}"
                break
            scan.damaged.append(Damage(offset, following, str(exc)))
            offset = scan.end = following
            continue
        offset += HEADER.size + length
        scan.records += 1
        scan.size += HEADER.size + length
        scan.end = offset
    return scan


def _check_record(fd: int, offset: int, file_size: int, *, verify: bool) -> int:
    """The payload length of the intact record at `offset`; raises `RecordError`."""
    length, crc = parse_header(os.pread(fd, HEADER.size, offset))
    if offset + HEADER.size + length > file_size:
        raise RecordError(
            f"the record at offset {offset} is cut short ({file_size - offset} bytes "
            f"of {HEADER.size + length})"
        )
    if verify:
        check_payload(os.pread(fd, length, offset + HEADER.size), length, crc)
    return length


def _next_record(fd: int, damaged: int, file_size: int) -> int | None:
    """Where the first intact record after the damaged one at `damaged` begins: where its
    header says, when that header is whole and a record begins there (damage in its
    payload: a payload may hold bytes that look like a record), else the first found."""
    try:
        length, _ = parse_header(os.pread(fd, HEADER.size, damaged))
    except RecordError:
        pass
    else:
        following = damaged + HEADER.size + length
        if following == file_size:
            return None
        if following < file_size:
            try:
                _check_record(fd, following, file_size, verify=True)
            except RecordError:
                pass
            else:
                return following
    return find_record(fd, damaged + 1, file_size)


#: Bytes read at a time while looking for the next intact record past damage.
_SEARCH_CHUNK = 1 << 20


def find_record(fd: int, start: int, file_size: int) -> int | None:
    """The offset of the first intact record (magic, version, and a CRC that matches)
    beginning at `start` or after, or None."""
    marker = MAGIC + bytes([VERSION])
    offset = start
    while offset < file_size:
        chunk = os.pread(fd, _SEARCH_CHUNK + len(marker) - 1, offset)
        found = chunk.find(marker)
        while found != -1:
            candidate = offset + found
            try:
                _check_record(fd, candidate, file_size, verify=True)
            except RecordError:
                found = chunk.find(marker, found + 1)
            else:
                return candidate
        offset += _SEARCH_CHUNK
    return None


def parse_record(buffer: bytes, at: int) -> tuple[bytes | None, int]:
    """(payload, record size) of the record at `at` in `buffer`, or (None, 0) when the
    buffer ends before it does.

    Raises:
        RecordError: no intact record there.
    """
    if at + HEADER.size > len(buffer):
        return None, 0
    length, crc = parse_header(buffer[at : at + HEADER.size])
    end = at + HEADER.size + length
    if end > len(buffer):
        return None, 0
    payload = buffer[at + HEADER.size : end]
    check_payload(payload, length, crc)
    return payload, HEADER.size + length


def read_record(fd: int, offset: int) -> tuple[bytes, int]:
    """(payload, record size) of the record at `offset`.

    Raises:
        RecordError: no intact record there.
    """
    length, crc = parse_header(os.pread(fd, HEADER.size, offset))
    payload = os.pread(fd, length, offset + HEADER.size)
    check_payload(payload, length, crc)
    return payload, HEADER.size + length


def remove_segment(directory: Path, index: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_path(directory, index))
