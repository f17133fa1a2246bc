"""Line files shared between a test and the `foxwork` process it runs.

Each line is written with a single `write()` on a file opened with `O_APPEND`, so lines
from concurrent coroutines, and from several worker processes, never interleave.
"""

from __future__ import annotations

import os
from pathlib import Path


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append `line` (and a newline) to `path` atomically."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The complete lines of `path` so far ([] while it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    # A line being written has no newline yet: leave it for the next read.
    return text.split("\n")[:-1]
