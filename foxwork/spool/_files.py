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

from ._records import HEADER, RecordError, check_payload, parse_header

__all__ = [
    "Scan",
    "fsync_directory",
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


@dataclasses.dataclass(slots=True)
class Scan:
    """What `scan_segment` found from its start offset on."""

    records: int = 0
    #: Bytes of those records, headers included.
    size: int = 0
    #: The offset just past the last intact record.
    end: int = 0
    #: Why scanning stopped before the end of the file, or None.
    error: str | None = None


def scan_segment(fd: int, start: int, *, verify: bool) -> Scan:
    """Walk the records of an open segment from `start`; with `verify`, check each CRC."""
    file_size = os.fstat(fd).st_size
    scan = Scan(end=start)
    offset = start
    while offset < file_size:
        try:
            length, crc = parse_header(os.pread(fd, HEADER.size, offset))
            if offset + HEADER.size + length > file_size:
                raise RecordError(
                    f"the record at offset {offset} is cut short ({file_size - offset} bytes "
                    f"of {HEADER.size + length})"
                )
            if verify:
                check_payload(os.pread(fd, length, offset + HEADER.size), length, crc)
        except RecordError as exc:
            scan.error = f"offset {offset}: {exc}"
            break
        offset += HEADER.size + length
        scan.records += 1
        scan.size = offset - start
        scan.end = offset
    return scan


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
