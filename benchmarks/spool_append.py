"""How fast the spool takes messages, and what group commit buys: N appends one at a time
(one fsync each) against N appends from C concurrent publishers (one fsync per group).

    python -m benchmarks.spool_append [-n 2000] [--concurrency 1,10,100] [--dir PATH]

Prints appends per second and fsyncs per append for each concurrency, then drain speed
(next + ack, with the read position written behind the acks). The directory defaults to a
temporary one on the file system of /tmp: measure on the disk the spool will live on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from foxwork import MessageProperties
from foxwork.spool import Spool, SpoolConfig, SpooledMessage


def _message(number: int) -> SpooledMessage:
    return SpooledMessage(
        exchange="",
        routing_key="orders",
        body=b'{"sku": "A-1", "qty": 2, "note": "' + b"x" * 64 + b'"}',
        properties=MessageProperties(message_id=f"m{number}", content_type="application/json"),
        spooled_at=time.time(),
    )


async def _run(directory: Path, count: int, concurrency: int) -> tuple[float, int, float]:
    """(appends/s, fsyncs, drained/s) for `count` appends `concurrency` at a time."""
    fsyncs = 0
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    spool = await Spool.open(SpoolConfig(directory=directory))
    os.fsync = counting  # type: ignore[assignment]
    try:
        messages = iter(range(count))

        async def publisher() -> None:
            for number in messages:
                await spool.append(_message(number))

        began = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        appended = count / (time.perf_counter() - began)
        appends_fsyncs = fsyncs
        began = time.perf_counter()
        for _ in range(count):
            await spool.next()
            await spool.ack()
        await spool.sync_position()
        drained = count / (time.perf_counter() - began)
    finally:
        os.fsync = real_fsync
        await spool.close()
    return appended, appends_fsyncs, drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,10,100")
    parser.add_argument("--dir", type=Path, help="where to put the spools (default: /tmp)")
    args = parser.parse_args()
    print(f"{'concurrency':>11} {'appends/s':>10} {'fsyncs/append':>14} {'drained/s':>10}")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            appended, fsyncs, drained = asyncio.run(
                _run(Path(directory) / "spool", args.messages, concurrency)
            )
        print(
            f"{concurrency:>11} {appended:>10.0f} {fsyncs / args.messages:>14.3f} {drained:>10.0f}"
        )


if __name__ == "__main__":
    main()
