"""Throughput on a real broker: raw aio-pika vs foxwork (bare, full chain) vs FastStream.

For each candidate and round: a fresh queue (declared as foxwork declares it) is filled with
N persistent ~120-byte JSON messages (publisher confirms, gathered in batches of 1,000);
then the candidate runs as its own process and consumes → decodes the JSON → acks each
message until all N are acked and the broker has applied the acks. The candidate measures
itself (see `consumers/_common.py`): elapsed time from the first delivery to the last ack,
its CPU seconds in that window, its peak RSS. Afterwards the queue must be empty.

Candidates run interleaved, A B C D A B C D ..., so that drift in the machine's load hits
them alike; each candidate's ratio to raw aio-pika is taken within the same round.

Usage:
    python -m benchmarks.throughput [-n N] [--rounds R] [--url URL] [--candidates a,b]

Results: `benchmarks/results/throughput.json` and a table on stdout; the chart
(`python -m benchmarks.plot`) goes to `docs/benchmarks/throughput.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s

#: Candidate name → (module in benchmarks/consumers, extra arguments).
CANDIDATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw_aiopika": ("raw_aiopika", ()),
    # aio-pika with the same telemetry written by hand (what a team without foxwork runs).
    "raw_aiopika_otel": ("raw_aiopika_otel", ()),
    # aio-pika acking with `multiple=True` every 100 messages (the best hand-tuned client).
    "raw_aiopika_multi": ("raw_aiopika_multi", ()),
    "foxwork_bare": ("foxwork_bare", ()),
    "foxwork_full": ("foxwork_full", ()),
    "faststream_sub": ("faststream_sub", ()),
    # FastStream exactly as it comes, with its two log lines per message.
    "faststream_logged": ("faststream_sub", ("--access-log",)),
    # foxwork on uvloop (`foxwork run --loop uvloop`), whatever `--loop` says for the others:
    # reported apart from the headline comparison, which stays on asyncio's own loop.
    "foxwork_bare_uvloop": ("foxwork_bare", ("--loop", "uvloop")),
    "foxwork_full_uvloop": ("foxwork_full", ("--loop", "uvloop")),
}
DEFAULT_CANDIDATES = (
    "raw_aiopika",
    "raw_aiopika_multi",
    "raw_aiopika_otel",
    "foxwork_bare",
    "foxwork_full",
    "faststream_sub",
)
#: The candidate every other is compared with, within each round.
BASELINE = "raw_aiopika"
DEFAULT_MESSAGES = 50_000
DEFAULT_ROUNDS = 3
DEFAULT_PREFETCH = 256
#: Messages of the untimed warm-up run of each candidate (0: none).
DEFAULT_WARMUP = 2_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument(
        "--candidates",
        default=",".join(DEFAULT_CANDIDATES),
        help=f"comma-separated, run in this order; known: {', '.join(CANDIDATES)}",
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each run with pyinstrument into DIR (slows the runs down a lot)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="run each candidate under py-spy, collapsed stacks into DIR (see hotspots.py)",
    )
    parser.add_argument("--output", type=Path, default=s.RESULTS / "throughput.json")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the chart")


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown or not names:
        parser.error(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    if args.messages < 1 or args.rounds < 1 or args.prefetch < 1:
        parser.error("--messages, --rounds and --prefetch must be at least 1")
    return names


async def one_run(
    channel: Any,
    broker: s.Broker,
    name: str,
    *,
    messages: int,
    prefetch: int,
    loop: str,
    tag: str,
    profile: Path | None = None,
    py_spy: Path | None = None,
) -> dict[str, Any]:
    module, extra = CANDIDATES[name]
    queue = s.unique_queue(f"tp-{name}")
    try:
        publish_s = await s.fill_queue(channel, queue, messages, tag=tag)
        broker_cpu = broker.cpu_seconds()
        result, _ = await s.run_candidate(
            module,
            url=broker.url,
            queue=queue,
            expected=messages,
            prefetch=prefetch,
            result_path=s.RESULTS / f".{queue}.json",
            extra=extra,
            loop=loop,
            timeout=max(120.0, messages / 200),
            profile=profile,
            py_spy=py_spy,
        )
        if broker_cpu is not None:
            after = broker.cpu_seconds()
            result["broker_cpu_s"] = None if after is None else after - broker_cpu
        # The candidate has exited: anything it left unacked is back in the queue.
        result["left_in_queue"] = left = await s.ready_count(channel, queue)
        if left and not result.get("error"):
            result["error"] = f"{left} message(s) left in the queue after the run"
        result.update(candidate=name, queue=queue, publish_s=round(publish_s, 3))
    finally:
        await s.delete_queues(channel, [queue])
        (s.RESULTS / f".{queue}.json").unlink(missing_ok=True)
    return result


def summarise(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per candidate: throughput median/min/max, ratio to the baseline within each round,
    CPU and memory."""
    baseline_by_round = {
        r["round"]: r["msgs_per_s"]
        for r in runs
        if r["candidate"] == BASELINE and not r.get("error")
    }
    summary: dict[str, Any] = {}
    for name in names:
        good = [r for r in runs if r["candidate"] == name and not r.get("error")]
        rates = [r["msgs_per_s"] for r in good]
        ratios = [
            r["msgs_per_s"] / baseline_by_round[r["round"]]
            for r in good
            if r["round"] in baseline_by_round
        ]
        cpu = [r["cpu_s"] for r in good]
        summary[name] = {
            "runs": len(good),
            "failed_runs": sum(1 for r in runs if r["candidate"] == name and r.get("error")),
            "msgs_per_s": {
                "median": s.median(rates),
                "min": min(rates, default=None),
                "max": max(rates, default=None),
                "all": rates,
            },
            "ratio_to_baseline": {
                "median": s.median(ratios),
                "min": min(ratios, default=None),
                "max": max(ratios, default=None),
            },
            "cpu_s_median": s.median(cpu),
            "cpu_us_per_msg_median": s.median([r["cpu_s"] / r["acked"] * 1e6 for r in good]),
            "peak_rss_mib_median": s.median([r["peak_rss_kib"] / 1024 for r in good]),
            "broker_cpu_s_median": s.median(
                [r["broker_cpu_s"] for r in good if r.get("broker_cpu_s") is not None]
            ),
        }
    return summary


def render(summary: dict[str, Any]) -> str:
    rows = []
    for name, item in summary.items():
        rate, ratio = item["msgs_per_s"], item["ratio_to_baseline"]
        if not item["runs"]:
            rows.append([name, "failed", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                f"{rate['median']:,.0f}",
                f"{rate['min']:,.0f}-{rate['max']:,.0f}",
                "" if ratio["min"] is None else f"{ratio['median']:.2f}",
                "" if ratio["min"] is None else f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                f"{item['cpu_s_median']:.2f}",
                f"{item['cpu_us_per_msg_median']:.1f}",
                f"{item['peak_rss_mib_median']:.1f}",
            ]
        )
    headers = [
        "candidate",
        "msgs/s",
        "min-max",
        f"x {BASELINE}",
        "x min-max",
        "CPU s",
        "CPU µs/msg",
        "peak RSS MiB",
    ]
    return s.table(headers, rows)


async def bench(args: argparse.Namespace, names: Sequence[str], broker: s.Broker) -> dict[str, Any]:
    meta = {
        "benchmark": "throughput",
        "messages": args.messages,
        "rounds": args.rounds,
        "prefetch": args.prefetch,
        "loop": args.loop,
        "body_bytes": s.BODY_SIZE,
        "candidates": list(names),
        "baseline": BASELINE,
        "profiled": args.profile is not None or args.py_spy is not None,
        "rabbitmq": await s.server_version(broker.url),
        "versions": s.versions(),
        "machine_before": s.machine(),
    }
    runs: list[dict[str, Any]] = []
    async with s.amqp(broker.url) as channel:
        if args.warmup:
            s.log(f"warm-up: {args.warmup:,} messages per candidate (not recorded)")
            for name in names:
                await one_run(
                    channel,
                    broker,
                    name,
                    messages=args.warmup,
                    prefetch=args.prefetch,
                    loop=args.loop,
                    tag="warmup-",
                )
        for number in range(1, args.rounds + 1):
            for name in names:
                profile = args.profile / f"{name}-r{number}.txt" if args.profile else None
                spy = args.py_spy / f"{name}-r{number}.raw" if args.py_spy else None
                result = await one_run(
                    channel,
                    broker,
                    name,
                    messages=args.messages,
                    prefetch=args.prefetch,
                    loop=args.loop,
                    tag=f"r{number}-",
                    profile=profile,
                    py_spy=spy,
                )
                result["round"] = number
                runs.append(result)
                if result.get("error"):
                    s.log(f"round {number} {name:>17}: FAILED: {result['error']}")
                else:
                    s.log(
                        f"round {number} {name:>17}: {result['msgs_per_s']:8,.0f} msgs/s, "
                        f"CPU {result['cpu_s']:.2f} s, peak RSS "
                        f"{result['peak_rss_kib'] / 1024:.0f} MiB"
                    )
    meta["machine_after"] = s.machine()
    return {"meta": meta, "summary": summarise(runs, names), "runs": runs}


def run(args: argparse.Namespace, names: Sequence[str], broker: s.Broker) -> dict[str, Any]:
    """Run the benchmark on `broker`, print the table, write the JSON (and the chart)."""
    s.log(
        f"throughput: {args.messages:,} messages x {args.rounds} round(s), prefetch "
        f"{args.prefetch}, candidates {', '.join(names)}"
    )
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    data = asyncio.run(bench(args, names, broker))
    print()
    print(
        f"Throughput, {args.messages:,} messages, {args.rounds} round(s), RabbitMQ "
        f"{data['meta']['rabbitmq']} on {data['meta']['machine_before']['cpus']} CPUs"
    )
    print(render(data["summary"]))
    # Against the other hand-written baselines, when they ran: the same telemetry written
    # by hand, and the best hand-tuned acks.
    from .compare_otel import MULTI_CANDIDATE, OTEL_CANDIDATE, ratios, render_ratios

    if OTEL_CANDIDATE in names and MULTI_CANDIDATE in names:
        data["ratio_to_raw_otel"] = ratios(data["runs"], names, OTEL_CANDIDATE)
        data["ratio_to_raw_multi"] = ratios(data["runs"], names, MULTI_CANDIDATE)
        print()
        print(render_ratios(data))
    from .plot import throughput_chart

    s.save("throughput", data, args.output, chart=None if args.no_plot else throughput_chart)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    args = parser.parse_args(argv)
    names = check(args, parser)
    with s.broker(args.url) as broker:
        data = run(args, names, broker)
    return 0 if all(not r.get("error") for r in data["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
