"""The lock file of a spool directory: one owner at a time, named by its PID.

The file holds the owner's PID. It is taken with `flock` as well, so that two processes
racing to take over a stale file cannot both win; the PID is what a person (and
`foxwork spool status`) reads. A file naming a process that is gone is taken over; one
naming a live process (other than the owner of an `flock`, which the kernel releases when
its process dies) is refused with `SpoolLocked`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from ..errors import FoxworkError

__all__ = ["LOCK_NAME", "PidLock", "SpoolLocked", "pid_alive", "read_owner"]

logger = logging.getLogger("foxwork.spool")

LOCK_NAME = "lock"


class SpoolLocked(FoxworkError):
    """Another live process owns the spool directory.

    Attributes:
        pid: that process's id.
    """

    def __init__(self, directory: Path, pid: int) -> None:
        self.pid = pid
        super().__init__(
            f"the spool {str(directory)!r} is in use by process {pid} (named in "
            f"{str(directory / LOCK_NAME)!r}): stop that process, or give this one a spool "
            "directory of its own"
        )


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(directory: Path) -> int | None:
    """The PID the lock file of `directory` names, or None (no file, or no PID in it)."""
    try:
        text = (directory / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class PidLock:
    """Holds the lock file of `directory` from `acquire()` to `release()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            SpoolLocked: a live process owns it.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SpoolLocked(self.directory, read_owner(self.directory) or 0) from None
            # The file may have been unlinked by its previous owner between our open and
            # our flock: then the lock is on a file nobody else will look at; start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            previous = os.read(fd, 32).decode(errors="replace").strip()
            if previous.isdigit() and int(previous) != os.getpid() and pid_alive(int(previous)):
                raise SpoolLocked(self.directory, int(previous))
            if previous:
                logger.warning(
                    "taking over the spool %s from process %s, which is gone",
                    self.directory,
                    previous,
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file is removed)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
