"""Run the whole benchmark suite on throwaway brokers: `python -m benchmarks`.

In order: Redis Streams throughput on a throwaway redis-server (raw redis-py, foxwork,
Dramatiq, Celery, taskiq-redis); then, on the RabbitMQ broker: throughput (raw aio-pika,
foxwork bare, foxwork full chain, FastStream), foxwork on uvloop (apart from the headline,
which stays on asyncio's loop), the dispatch overhead of the middleware chain (in memory),
memory under a backlog, retry accuracy, scaling over processes, a failure storm against a
hand-written consumer, the dead-letter tools, start-up; then the charts. Results go
to `benchmarks/results/*.json`, charts to `docs/benchmarks/*.png`.

Usage (from the repository root, after `pip install -e '.[bench]'`):
    python -m benchmarks                 # full size: about an hour on 2 CPUs
    python -m benchmarks --quick         # smoke test: small N, one round, no charts, ~1 min
    python -m benchmarks --only throughput,retry --url amqp://guest:guest@127.0.0.1:5672/
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _support as s
from . import (
    bench_dispatch,
    dlq_tools,
    failure_storm,
    memory_backlog,
    redis_throughput,
    retry_accuracy,
    scaling,
    startup,
    throughput,
)

BENCHMARKS = (
    "throughput",
    "uvloop",
    "dispatch",
    "memory",
    "retry",
    "scaling",
    "storm",
    "dlq",
    "startup",
    "redis",
)
#: The benchmarks run through their own `main(argv)`, on the suite's broker.
STANDALONE: dict[str, Callable[[Sequence[str] | None], int]] = {
    "storm": failure_storm.main,
    "dlq": dlq_tools.main,
    "startup": startup.main,
}
#: Their arguments in a full run, one list per call: sizes that keep the suite near an
#: hour on 2 CPUs (the storm's 50,000 messages x 4 consumers, a DLQ of 1,000,000 listed once).
FULL_ARGV: dict[str, list[list[str]]] = {
    "storm": [["--rounds", "2", "--paced-messages", "2000"]],
    "dlq": [
        ["--only", "replay", "--rounds", "3", "--output", str(s.RESULTS / "dlq_replay.json")],
        ["--only", "list", "--rounds", "1", "--output", str(s.RESULTS / "dlq_list.json")],
    ],
    "startup": [[]],
}
#: The benchmarks that need a RabbitMQ broker.
RABBITMQ_BENCHMARKS = BENCHMARKS[:-1]
#: The candidates of the uvloop pass: foxwork on uvloop against raw aio-pika on asyncio.
UVLOOP_CANDIDATES = "raw_aiopika,foxwork_bare_uvloop,foxwork_full_uvloop"
#: Sizes of `--quick`, a smoke test; it leaves the committed charts alone.
QUICK = {
    "throughput": {"messages": 5_000, "rounds": 1, "warmup": 1_000, "no_plot": True},
    "uvloop": {"messages": 5_000, "rounds": 1, "warmup": 1_000},
    "dispatch": {"messages": 5_000, "rounds": 2},
    "memory": {"messages": 50_000, "no_plot": True},
    "retry": {"messages": 100},
    "scaling": {"messages": 5_000, "rounds": 1},
    "redis": {"messages": 3_000, "rounds": 1, "warmup": 500},
}
#: `--quick` of the benchmarks run through their own `main(argv)`.
QUICK_ARGV = {name: [["--quick"]] for name in STANDALONE}


def defaults(
    add_arguments: Callable[[argparse.ArgumentParser], None], *layers: dict[str, Any]
) -> argparse.Namespace:
    """A benchmark's own defaults, overridden by each of `layers` in turn (a None value in
    a layer leaves the value before it)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    for layer in layers:
        for key, value in layer.items():
            if value is not None:
                setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument("-n", "--messages", type=int, help="throughput: messages per run")
    parser.add_argument("--rounds", type=int, help="throughput: rounds")
    parser.add_argument("--backlog", type=int, help="memory: backlog size")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help="throughput: event loop")
    parser.add_argument("--dispatch-messages", type=int, help="dispatch: messages per run")
    parser.add_argument("--redis-url", help="redis: a Redis URL (default: start a redis-server)")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    quick: dict[str, dict[str, Any]] = QUICK if args.quick else {b: {} for b in BENCHMARKS}
    failures = []
    began = time.monotonic()
    if "redis" in chosen:
        options = defaults(
            redis_throughput.add_arguments,
            quick["redis"],
            {"messages": args.messages, "rounds": args.rounds},
        )
        names = redis_throughput.check(options, parser)
        with redis_throughput.server(args.redis_url) as redis_server:
            data = redis_throughput.run(options, names, redis_server)
        failures += [f"redis {r['candidate']}" for r in data["runs"] if r.get("error")]
    rabbitmq = any(b in chosen for b in RABBITMQ_BENCHMARKS)
    # No RabbitMQ node is started when only the Redis benchmark runs.
    unused = contextlib.nullcontext(s.Broker(""))
    with s.broker(args.url) if rabbitmq else unused as broker:
        if "throughput" in chosen:
            options = defaults(
                throughput.add_arguments,
                quick["throughput"],
                {"messages": args.messages, "rounds": args.rounds, "loop": args.loop},
            )
            data = throughput.run(options, throughput.check(options, parser), broker)
            failures += [f"throughput {r['candidate']}" for r in data["runs"] if r.get("error")]
        if "uvloop" in chosen:
            options = defaults(
                throughput.add_arguments,
                {"candidates": UVLOOP_CANDIDATES, "no_plot": True},
                quick["uvloop"],
                {"messages": args.messages, "rounds": args.rounds},
                {"output": s.RESULTS / "throughput_uvloop.json"},
            )
            data = throughput.run(options, throughput.check(options, parser), broker)
            failures += [f"uvloop {r['candidate']}" for r in data["runs"] if r.get("error")]
        if "dispatch" in chosen:
            sizes = quick["dispatch"] | (
                {"messages": args.dispatch_messages} if args.dispatch_messages else {}
            )
            argv = [str(sizes["messages"])] if "messages" in sizes else []
            argv += ["--rounds", str(sizes["rounds"])] if "rounds" in sizes else []
            print()
            if bench_dispatch.main(argv) != 0:
                failures.append("dispatch (over budget)")
        if "memory" in chosen:
            options = defaults(
                memory_backlog.add_arguments, quick["memory"], {"messages": args.backlog}
            )
            if memory_backlog.run(options, broker)["summary"]["error"]:
                failures.append("memory")
        if "retry" in chosen:
            options = defaults(retry_accuracy.add_arguments, quick["retry"])
            delays = retry_accuracy.parse_delays(options.delays)
            if retry_accuracy.run(options, delays, broker)["error"]:
                failures.append("retry")
        if "scaling" in chosen:
            options = defaults(scaling.add_arguments, quick["scaling"])
            counts = [int(x) for x in options.processes.split(",")]
            data = scaling.run(options, counts, broker)
            failures += [f"scaling {r['processes']}" for r in data.get("runs", []) if r["error"]]
        for name, run in STANDALONE.items():
            if name in chosen:
                for argv in QUICK_ARGV[name] if args.quick else FULL_ARGV[name]:
                    print()
                    if run([*argv, "--url", broker.url]) != 0:
                        failures.append(name)
    print(f"\ndone in {time.monotonic() - began:.0f} s", end="")
    print(f"; FAILED: {', '.join(failures)}" if failures else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
