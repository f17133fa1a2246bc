"""`foxwork run --processes N`: N worker processes under one supervising parent.

Each child is a plain `foxwork run` with its own broker connection, consuming the same
queues; RabbitMQ spreads the messages over them (prefetch bounds what each holds). The
parent forwards SIGINT and SIGTERM to every child, waits for them to shut down gracefully,
and restarts a child that died on its own, with exponential backoff so that a child that
crashes at start-up does not spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["supervise"]

logger = logging.getLogger("foxwork.supervisor")

#: First delay before restarting a crashed child, in seconds; doubles per quick crash.
RESTART_INITIAL_DELAY = 1.0
#: Longest delay between restarts, in seconds.
RESTART_MAX_DELAY = 30.0
#: A child that ran this long before dying restarts with the initial delay again.
RESTART_RESET_AFTER = 60.0


class _Child:
    def __init__(self, index: int, argv: list[str], env: dict[str, str]) -> None:
        self.index = index
        self.argv = argv
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.delay = RESTART_INITIAL_DELAY
        self.restarts = 0

    async def start(self, stop_signals: list[int]) -> None:
        """Start the process, unless a stop was requested (`stop_signals` is not empty).

        A stop requested while the process is being created cannot reach it through the
        signal handler (there is no process to signal yet): it is sent here, at once.
        """
        if stop_signals:
            return
        env = dict(
            os.environ,
            **self.env,
            FOXWORK_PROCESS_INDEX=str(self.index),
            FOXWORK_SUPERVISOR_PID=str(os.getpid()),
        )
        # A process group of its own: a Ctrl-C at the terminal reaches the parent only, which
        # forwards it once (a child that saw it twice would force its shutdown). A child
        # whose parent dies shuts itself down (see `foxwork.cli`).
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=env, start_new_session=True
        )
        self.started = time.monotonic()
        logger.info("worker process %d started (pid %d)", self.index, self.process.pid)
        if stop_signals:
            self.signal(stop_signals[-1])

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


async def supervise(
    child_argv: Sequence[str], processes: int, *, env: dict[str, str] | None = None
) -> int:
    """Run `processes` copies of `python -m foxwork <child_argv>` until a signal.

    Args:
        child_argv: the arguments of each child's `foxwork` command.
        processes: how many children.
        env: extra environment of the children (secrets go here, not on the command line).

    Returns:
        0 when every child shut down gracefully, else the first non-zero exit code.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        stopping.set()
        logger.info(
            "received %s: forwarding it to %d worker process(es)",
            signal.Signals(signum).name,
            processes,
        )
        for child in children:
            child.signal(signum)

    argv = [sys.executable, "-m", "foxwork", *child_argv]
    children = [_Child(index, argv, env or {}) for index in range(processes)]
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        for child in children:
            await child.start(signals_seen)
        results = await asyncio.gather(
            *(_keep_alive(child, stopping, signals_seen) for child in children)
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    failures = [code for code in results if code != 0]
    logger.info(
        "all %d worker process(es) stopped%s",
        processes,
        f"; exit codes {results}" if failures else "",
    )
    return failures[0] if failures else 0


async def _keep_alive(child: _Child, stopping: asyncio.Event, signals_seen: list[int]) -> int:
    while True:
        if child.process is None:
            return 0  # the stop came before it was ever started
        code = await child.process.wait()
        if stopping.is_set():
            if code < 0 and -code in signals_seen:
                # The forwarded signal reached a child still starting, before it installed
                # its handlers: it had consumed nothing yet, so this is a clean stop.
                logger.info(
                    "worker process %d (pid %d) was stopped by %s while starting",
                    child.index,
                    child.process.pid,
                    signal.Signals(-code).name,
                )
                return 0
            return code
        ran = time.monotonic() - child.started
        if ran >= RESTART_RESET_AFTER:
            child.delay = RESTART_INITIAL_DELAY
        logger.warning(
            "worker process %d (pid %d) exited with code %d after %.1f s; restarting it in %.1f s",
            child.index,
            child.process.pid,
            code,
            ran,
            child.delay,
        )
        try:
            async with asyncio.timeout(child.delay):
                await stopping.wait()
            return code  # a signal came while waiting: do not restart
        except TimeoutError:
            pass
        child.delay = min(child.delay * 2, RESTART_MAX_DELAY)
        child.restarts += 1
        await child.start(signals_seen)
