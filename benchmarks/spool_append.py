"""How fast the spool takes messages, and what group commit buys: N appends one at a time
(one fsync each) against N appends from C concurrent publishers (one fsync per group).

    python -m benchmarks.spool_append [-n 20000] [--concurrency 1,10,100,1000] [--repeat 3]
                                      [--dir PATH]

First measures the disk: the latency of 1,000 fsyncs (and fdatasyncs) of a 4 KiB append,
which bounds appends per second at (appends per group) / (fsync latency). Then, for each
concurrency, appends per second (the messages are built beforehand: what is timed is the
spool's work, encoding, framing, writing and fsyncing), fsyncs per append, and the drain
speed without a broker (read ahead and acked as the drainer does, the read position
written behind the acks); the median of --repeat runs, with the range. The directory
defaults to a temporary one on the file system of /tmp: measure on the disk the spool will
live on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from foxwork import MessageProperties
from foxwork.spool import Spool, SpoolConfig, SpooledMessage

#: Messages the drain reads ahead and acks at a time (the drainer's window).
DRAIN_WINDOW = 1000


def _message(number: int) -> SpooledMessage:
    return SpooledMessage(
        exchange="",
        routing_key="orders",
        body=b'{"sku": "A-1", "qty": 2, "note": "' + b"x" * 64 + b'"}',
        properties=MessageProperties(message_id=f"m{number}", content_type="application/json"),
        spooled_at=time.time(),
    )


def sync_latency(directory: Path, sync: Callable[[int], None], count: int = 1000) -> float:
    """Mean seconds of `sync` after each 4 KiB append to a file in `directory`."""
    path = directory / "latency"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    block = b"x" * 4096
    try:
        total = 0.0
        for _ in range(count):
            os.write(fd, block)
            began = time.perf_counter()
            sync(fd)
            total += time.perf_counter() - began
    finally:
        os.close(fd)
        path.unlink()
    return total / count


async def _run(directory: Path, count: int, concurrency: int) -> tuple[float, int, float]:
    """(appends/s, fsyncs, drained/s) for `count` appends `concurrency` at a time."""
    fsyncs = 0
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    spool = await Spool.open(SpoolConfig(directory=directory, max_bytes=1 << 32))
    prepared = [_message(number) for number in range(count)]
    os.fsync = counting  # type: ignore[assignment]
    try:
        messages = iter(prepared)

        async def publisher() -> None:
            for message in messages:
                await spool.append(message)

        began = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        appended = count / (time.perf_counter() - began)
        appends_fsyncs = fsyncs
        began = time.perf_counter()
        while spool.depth:
            await spool.ack(len(await spool.read_ahead(DRAIN_WINDOW)))
        await spool.sync_position()
        drained = count / (time.perf_counter() - began)
    finally:
        os.fsync = real_fsync
        await spool.close()
    return appended, appends_fsyncs, drained


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):>8.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to put the spools (default: /tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        fsync = sync_latency(Path(directory), os.fsync)
        fdatasync = sync_latency(Path(directory), os.fdatasync)
    print(
        f"disk: fsync {fsync * 1e3:.2f} ms, fdatasync {fdatasync * 1e3:.2f} ms (mean of 1,000 "
        f"after a 4 KiB append): at most {1 / fsync:,.0f} groups/s, so 20,000 appends/s "
        f"need groups of {20_000 * fsync:.0f} or more\n"
    )
    print(f"{'concurrency':>11} {'appends/s':>22} {'fsyncs/append':>14} {'drained/s':>22}")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                runs.append(
                    asyncio.run(_run(Path(directory) / "spool", args.messages, concurrency))
                )
        appended = [run[0] for run in runs]
        per_append = statistics.median(run[1] for run in runs) / args.messages
        drained = [run[2] for run in runs]
        print(
            f"{concurrency:>11} {_spread(appended):>22} {per_append:>14.3f} {_spread(drained):>22}"
        )


if __name__ == "__main__":
    main()
