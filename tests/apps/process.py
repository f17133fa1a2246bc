"""Run the `foxwork` command as a subprocess and wait on what it logs.

    async with FoxworkProcess("run", "tests.apps.slow:pool", "--url", url) as foxwork:
        await foxwork.wait_for(r"pool .* running on")
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0

Leaving the `async with` block kills the process if it is still running (and the worker
processes it started, for `--processes`), so no test leaves one behind. Every wait has a
deadline and fails the test with the output so far.

`run_foxwork(...)` runs a short command (`foxwork dlq ...`) to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["ROOT", "Completed", "FoxworkProcess", "foxwork_command", "foxwork_env", "run_foxwork"]

#: The repository root: the working directory of every `foxwork` subprocess, so that
#: `tests.apps.*` is importable.
ROOT = Path(__file__).resolve().parents[2]
#: Seconds a short command gets to finish.
COMMAND_TIMEOUT = 30.0
#: Seconds to wait for a log line unless told otherwise.
LINE_TIMEOUT = 20.0
#: Seconds a process gets to exit after SIGTERM at cleanup before it is killed.
CLEANUP_GRACE = 5.0

_CHILD_STARTED = re.compile(r"worker process \d+ started \(pid (\d+)\)")


def foxwork_command() -> list[str]:
    """The installed console script when there is one (it is what users run)."""
    script = Path(sys.executable).with_name("foxwork")
    return [str(script)] if script.exists() else [sys.executable, "-m", "foxwork"]


def foxwork_env(**extra: str) -> dict[str, str]:
    """This process's environment without any foxwork settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOXWORK_")}
    env.update(extra)
    return env


@dataclasses.dataclass(frozen=True)
class Completed:
    """A finished `foxwork` command."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run_foxwork(
    *args: str, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT
) -> Completed:
    """Run `foxwork ARGS` to completion; kill it and fail the test after `timeout` s."""
    process = await asyncio.create_subprocess_exec(
        *foxwork_command(),
        *args,
        cwd=ROOT,
        env=env if env is not None else foxwork_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        pytest.fail(f"foxwork {' '.join(args)} did not finish within {timeout} s")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


class FoxworkProcess:
    """`foxwork ARGS` running in the background; its stderr (the log) is read line by line.

    Args:
        *args: the command line after `foxwork`.
        env: the environment (default: `foxwork_env()`).
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env if env is not None else foxwork_env()
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FoxworkProcess:
        self.process = await asyncio.create_subprocess_exec(
            *foxwork_command(),
            *self.args,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "use `async with FoxworkProcess(...)`"
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def child_pids(self) -> list[int]:
        """Pids of the worker processes a `--processes` parent said it started."""
        return [int(m[1]) for line in self.lines if (m := _CHILD_STARTED.search(line))]

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        # Read to the end even when nobody waits: a full pipe would block the process.
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_for(
        self, pattern: str, *, count: int = 1, timeout: float = LINE_TIMEOUT
    ) -> list[re.Match[str]]:
        """Wait until `count` log lines match the regular expression `pattern`.

        Returns:
            The matches, in order (the first `count`).
        """
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            matches = [m for line in self.lines if (m := regex.search(line))]
            if len(matches) >= count:
                return matches[:count]
            if self._reader is None or self._reader.done():
                pytest.fail(
                    f"foxwork exited after {len(matches)} of {count} line(s) matching "
                    f"{pattern!r}:\n{self.output}",
                    pytrace=False,
                )
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(
                    f"{len(matches)} of {count} line(s) matching {pattern!r} after "
                    f"{timeout} s:\n{self.output}",
                    pytrace=False,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        """Wait for the exit (and the rest of the log); returns the exit code."""
        assert self.process is not None and self._reader is not None
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                await self._reader
        except TimeoutError:
            pytest.fail(f"foxwork did not exit within {timeout} s:\n{self.output}", pytrace=False)
        return code

    async def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL after `CLEANUP_GRACE` s; then the worker
        processes it started, should any have outlived it."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(CLEANUP_GRACE):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            await self._reader
        for pid in self.child_pids:
            # Only a worker process this one started (a pid may have been reused since).
            if _started_by(pid, process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _started_by(pid: int, supervisor: int) -> bool:
    # `foxwork run --processes` gives each worker process FOXWORK_SUPERVISOR_PID.
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"FOXWORK_SUPERVISOR_PID={supervisor}".encode() in environ
