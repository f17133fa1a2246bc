"""Telemetry overhead: raw aio-pika (plain, with hand-written OpenTelemetry, and hand-tuned
multiple acks), foxwork bare and foxwork's full chain, side by side on a real broker.

The questions it answers: what does foxwork's full chain cost against what a team without
foxwork would run with the same telemetry (`consumers/raw_aiopika_otel.py`: per message,
the W3C context extracted, one CONSUMER span with the attributes foxwork sets, one
histogram record, one `basic.ack`; same SDK set-up and exporters as `foxwork_full`)? And
how does foxwork's bare pool (acks coalesced) compare with the best hand-tuned client code
(`consumers/raw_aiopika_multi.py`: one `basic.ack` with `multiple=True` per 100 messages)?

Each run is exactly one run of `benchmarks.throughput` (same queue, same messages, same
probe, same checks); the rounds alternate the order of the candidates (A B C D, then
D C B A, ...) so that neither end of a round is always the same candidate. Ratios are
taken within each round, against raw aio-pika, raw aio-pika + OpenTelemetry and raw
aio-pika with multiple acks.

Usage:
    python -m benchmarks.compare_otel [-n 50000] [--rounds 5] [--url URL] [--quick]

Results: `benchmarks/results/compare_otel.json` and two tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s
from . import throughput as tp

#: The candidates compared with, besides `raw_aiopika` (the throughput driver's baseline).
OTEL_CANDIDATE = "raw_aiopika_otel"
MULTI_CANDIDATE = "raw_aiopika_multi"
CANDIDATES = ("raw_aiopika", OTEL_CANDIDATE, MULTI_CANDIDATE, "foxwork_bare", "foxwork_full")
DEFAULT_ROUNDS = 5
QUICK_MESSAGES = 5_000
QUICK_ROUNDS = 2


def register() -> None:
    """Make sure the candidates are known to `benchmarks.throughput` (they are: a no-op
    unless an older throughput module lacks them)."""
    for name in (OTEL_CANDIDATE, MULTI_CANDIDATE):
        tp.CANDIDATES.setdefault(name, (name, ()))


def round_order(names: Sequence[str], number: int) -> list[str]:
    """Round 1 in the given order, round 2 reversed, and so on."""
    return list(names) if number % 2 else list(reversed(names))


def ratios(runs: Sequence[dict[str, Any]], names: Sequence[str], base: str) -> dict[str, Any]:
    """Per candidate: its msgs/s over `base`'s in the same round (median, min, max)."""
    base_by_round = {
        r["round"]: r["msgs_per_s"] for r in runs if r["candidate"] == base and not r.get("error")
    }
    out: dict[str, Any] = {}
    for name in names:
        values = [
            r["msgs_per_s"] / base_by_round[r["round"]]
            for r in runs
            if r["candidate"] == name and not r.get("error") and r["round"] in base_by_round
        ]
        out[name] = {
            "median": s.median(values),
            "min": min(values, default=None),
            "max": max(values, default=None),
        }
    return out


async def bench(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    names = list(CANDIDATES)
    meta = {
        "benchmark": "compare_otel",
        "messages": args.messages,
        "rounds": args.rounds,
        "prefetch": args.prefetch,
        "candidates": names,
        "rabbitmq": await s.server_version(broker.url),
        "versions": s.versions(),
        "machine_before": s.machine(),
    }
    runs: list[dict[str, Any]] = []
    common = {"prefetch": args.prefetch, "loop": "asyncio"}
    async with s.amqp(broker.url) as channel:
        if args.warmup:
            s.log(f"warm-up: {args.warmup:,} messages per candidate (not recorded)")
            for name in names:
                await tp.one_run(
                    channel, broker, name, messages=args.warmup, tag="warmup-", **common
                )
        for number in range(1, args.rounds + 1):
            for name in round_order(names, number):
                spy = args.py_spy / f"{name}-r{number}.raw" if args.py_spy else None
                result = await tp.one_run(
                    channel,
                    broker,
                    name,
                    messages=args.messages,
                    tag=f"r{number}-",
                    py_spy=spy,
                    **common,
                )
                result["round"] = number
                runs.append(result)
                if result.get("error"):
                    s.log(f"round {number} {name:>17}: FAILED: {result['error']}")
                else:
                    s.log(
                        f"round {number} {name:>17}: {result['msgs_per_s']:8,.0f} msgs/s, "
                        f"CPU {result['cpu_s'] / result['acked'] * 1e6:.1f} µs/msg"
                    )
    meta["machine_after"] = s.machine()
    return {
        "meta": meta,
        "summary": tp.summarise(runs, names),
        "ratio_to_raw_otel": ratios(runs, names, OTEL_CANDIDATE),
        "ratio_to_raw_multi": ratios(runs, names, MULTI_CANDIDATE),
        "runs": runs,
    }


def render_ratios(data: dict[str, Any]) -> str:
    """Each candidate over raw aio-pika + OpenTelemetry and over raw aio-pika with multiple
    acks (median, min-max within the rounds)."""

    def cells(item: dict[str, Any] | None) -> list[str]:
        if item is None or item["min"] is None:
            return ["", ""]
        return [f"{item['median']:.2f}", f"{item['min']:.2f}-{item['max']:.2f}"]

    otel, multi = data["ratio_to_raw_otel"], data.get("ratio_to_raw_multi", {})
    rows = [[name, *cells(otel.get(name)), *cells(multi.get(name))] for name in otel]
    headers = ["candidate", f"x {OTEL_CANDIDATE}", "min-max", f"x {MULTI_CANDIDATE}", "min-max"]
    return s.table(headers, rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_otel", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", "--messages", type=int, default=tp.DEFAULT_MESSAGES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--prefetch", type=int, default=tp.DEFAULT_PREFETCH)
    parser.add_argument("--warmup", type=int, default=tp.DEFAULT_WARMUP, metavar="N")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_MESSAGES:,} messages, {QUICK_ROUNDS} rounds, no warm-up",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="run each candidate under py-spy, collapsed stacks into DIR (see hotspots.py)",
    )
    parser.add_argument("--output", type=Path, default=s.RESULTS / "compare_otel.json")
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds, args.warmup = QUICK_MESSAGES, QUICK_ROUNDS, 0
    if args.messages < 1 or args.rounds < 1 or args.prefetch < 1:
        parser.error("--messages, --rounds and --prefetch must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    register()
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    with s.broker(args.url) as broker:
        data = asyncio.run(bench(args, broker))
    print(
        f"\nTelemetry overhead, {args.messages:,} messages, {args.rounds} round(s), RabbitMQ "
        f"{data['meta']['rabbitmq']} on {data['meta']['machine_before']['cpus']} CPUs, load "
        f"{data['meta']['machine_before']['load_average']} → "
        f"{data['meta']['machine_after']['load_average']}"
    )
    print(tp.render(data["summary"]))
    print()
    print(render_ratios(data))
    s.save("compare_otel", data, args.output)
    return 0 if all(not r.get("error") for r in data["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
