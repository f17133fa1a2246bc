"""Memory under a backlog: does a foxwork consumer's RSS stay flat while it drains a queue?

A fresh queue is filled with a backlog (default 1,000,000 persistent ~120-byte JSON
messages), then a foxwork consumer process (default: the full production chain, see
`consumers/foxwork_full.py`) drains it while this script samples the consumer's RSS and
the queue depth every 0.5 s. With prefetch as the only buffer, memory should be flat: a
consumer that grows with the backlog (or with the messages processed) leaks.

Reported: RSS at the first message, peak RSS (`VmHWM`), RSS after the last ack, the growth,
and the slope of RSS against messages consumed over the run after the first 10 % (KiB per
100,000 messages: about 0 when nothing leaks).

Usage:
    python -m benchmarks.memory_backlog [-n N] [--candidate foxwork_full] [--url URL]

Results: `benchmarks/results/memory_backlog.json`; chart `docs/benchmarks/memory_backlog.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s
from .throughput import CANDIDATES

DEFAULT_MESSAGES = 1_000_000
DEFAULT_CANDIDATE = "foxwork_full"
DEFAULT_PREFETCH = 256
#: Seconds between two samples.
DEFAULT_INTERVAL = 0.5
#: Part of the run left out of the slope (imports, caches and allocator pools settle).
SLOPE_SKIP = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument(
        "--candidate",
        default=DEFAULT_CANDIDATE,
        choices=sorted(CANDIDATES),
        help=f"the consumer to watch (default: {DEFAULT_CANDIDATE})",
    )
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, metavar="S")
    parser.add_argument("--output", type=Path, default=s.RESULTS / "memory_backlog.json")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the chart")


def slope_kib_per_100k(samples: Sequence[dict[str, Any]], total: int) -> float | None:
    """Least-squares slope of RSS against messages consumed, skipping the warm-up part."""
    points = [
        (total - x["ready"], x["rss_kib"])
        for x in samples
        if x.get("ready") is not None and total - x["ready"] >= total * SLOPE_SKIP
    ]
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_x) ** 2 for p in points)
    if var == 0:
        return None
    cov = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points)
    return float(cov / var * 100_000)


async def sample(
    process: asyncio.subprocess.Process, channel: Any, queue: str, interval: float
) -> list[dict[str, Any]]:
    """RSS of `process` and depth of `queue` every `interval` seconds until it exits."""
    import psutil  # type: ignore[import-untyped]

    watched = psutil.Process(process.pid)
    began = time.monotonic()
    samples: list[dict[str, Any]] = []
    while process.returncode is None:
        try:
            rss = watched.memory_info().rss // 1024
        except psutil.NoSuchProcess:
            break
        try:
            ready: int | None = await s.ready_count(channel, queue)
        except Exception:
            ready = None
        samples.append({"t": round(time.monotonic() - began, 3), "rss_kib": rss, "ready": ready})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), interval)
    return samples


async def bench(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    module, extra = CANDIDATES[args.candidate]
    queue = s.unique_queue(f"mem-{args.candidate}")
    result_path = s.RESULTS / f".{queue}.json"
    async with s.amqp(broker.url) as channel:
        try:
            s.log(f"publishing a backlog of {args.messages:,} messages ...")
            publish_s = await s.fill_queue(channel, queue, args.messages, progress=True)
            s.log(f"published in {publish_s:.1f} s; starting {args.candidate}")
            process = await s.start_candidate(
                module,
                url=broker.url,
                queue=queue,
                expected=args.messages,
                prefetch=args.prefetch,
                result_path=result_path,
                extra=extra,
                timeout=max(600.0, args.messages / 100),
            )
            # Read stderr all along, so a chatty child never blocks on a full pipe.
            assert process.stderr is not None
            stderr_task = asyncio.create_task(process.stderr.read())
            samples = await sample(process, channel, queue, args.interval)
            await process.wait()
            stderr = await stderr_task
            result = s.read_result(process, result_path, stderr)
            left = await s.ready_count(channel, queue)
        finally:
            await s.delete_queues(channel, [queue])
            result_path.unlink(missing_ok=True)
    if left and not result.get("error"):
        result["error"] = f"{left} message(s) left in the queue after the run"
    mib = 1 / 1024
    peak = max([result.get("peak_rss_kib", 0), *(x["rss_kib"] for x in samples)])
    start = result.get("rss_start_kib", 0)
    summary = {
        "rss_start_mib": start * mib,
        "rss_peak_mib": peak * mib,
        "rss_end_mib": result.get("rss_end_kib", 0) * mib,
        "rss_growth_mib": (result.get("rss_end_kib", 0) - start) * mib,
        "rss_peak_growth_mib": (peak - start) * mib,
        "slope_kib_per_100k_messages": slope_kib_per_100k(samples, args.messages),
        "msgs_per_s": result.get("msgs_per_s"),
        "elapsed_s": result.get("elapsed_s"),
        "error": result.get("error"),
    }
    meta = {
        "benchmark": "memory_backlog",
        "candidate": args.candidate,
        "messages": args.messages,
        "prefetch": args.prefetch,
        "interval_s": args.interval,
        "publish_s": round(publish_s, 3),
        "rabbitmq": await s.server_version(broker.url),
        "versions": s.versions(),
        "machine": s.machine(),
    }
    return {"meta": meta, "summary": summary, "result": result, "samples": samples}


def run(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    data = asyncio.run(bench(args, broker))
    summary = data["summary"]
    print()
    print(f"Memory while {args.candidate} drains {args.messages:,} messages")
    if summary["error"]:
        print(f"FAILED: {summary['error']}")
    slope = summary["slope_kib_per_100k_messages"]
    rows = [
        ["RSS at first message", f"{summary['rss_start_mib']:.1f} MiB"],
        ["peak RSS", f"{summary['rss_peak_mib']:.1f} MiB"],
        ["RSS after last ack", f"{summary['rss_end_mib']:.1f} MiB"],
        ["growth (end - start)", f"{summary['rss_growth_mib']:+.1f} MiB"],
        ["growth (peak - start)", f"{summary['rss_peak_growth_mib']:+.1f} MiB"],
        ["slope", "n/a" if slope is None else f"{slope:+.0f} KiB per 100k messages"],
        ["throughput", f"{summary['msgs_per_s'] or 0:,.0f} msgs/s"],
    ]
    print(s.table(["", "value"], rows))
    from .plot import memory_chart

    s.save("memory_backlog", data, args.output, chart=None if args.no_plot else memory_chart)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_backlog", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.prefetch < 1 or args.interval <= 0:
        parser.error("--messages and --prefetch must be at least 1, --interval above 0")
    with s.broker(args.url) as broker:
        data = run(args, broker)
    return 0 if not data["summary"]["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
