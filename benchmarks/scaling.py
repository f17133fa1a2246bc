"""Scaling: `foxwork run --processes 1` vs `--processes 2` (and more) on one queue.

For each process count and round (interleaved): a fresh queue is filled with N persistent
JSON messages, then `foxwork run benchmarks.consumers.foxwork_app:make_pool --processes P`
drains it (full production chain by default; `--chain bare` for none). Every worker
process reports how many messages it processed and the wall-clock times of its first and
last one; throughput is the total over (last of all - first of all). When the queue is
empty the command gets SIGTERM, shuts down gracefully, and the queue must still be empty.

The `--processes` option of `foxwork run` is new: when the installed foxwork does not have
it, the benchmark says so and stops, unless `--separate` asks it to start P separate
`foxwork run` processes instead (the same thing without the supervising parent).

Usage:
    python -m benchmarks.scaling [-n N] [--processes 1,2] [--rounds R] [--url URL]

Results: `benchmarks/results/scaling.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s
from .consumers.foxwork_app import ENV_CHAIN, ENV_REPORT_DIR

DEFAULT_MESSAGES = 50_000
DEFAULT_PROCESSES = (1, 2)
DEFAULT_ROUNDS = 2
DEFAULT_PREFETCH = 256
APP = "benchmarks.consumers.foxwork_app:make_pool"
#: Seconds between two looks at the queue depth.
POLL = 0.05


def processes_option_available() -> bool:
    """Whether `foxwork run` has a `--processes` option."""
    completed = subprocess.run(
        [sys.executable, "-m", "foxwork", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=s.ROOT,
        check=False,
    )
    return completed.returncode == 0 and "--processes" in completed.stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument(
        "--processes",
        default=",".join(map(str, DEFAULT_PROCESSES)),
        help="comma-separated process counts to compare",
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--chain", choices=("full", "bare"), default="full")
    parser.add_argument(
        "--separate",
        action="store_true",
        help="without `foxwork run --processes`, start P separate `foxwork run` processes",
    )
    parser.add_argument("--output", type=Path, default=s.RESULTS / "scaling.json")


def _command(url: str, queue: str, prefetch: int, processes: int | None) -> list[str]:
    command = [sys.executable, "-m", "foxwork", "run", APP, "--url", url, "--queue", queue]
    command += ["--concurrency", str(prefetch), "--log-level", "WARNING"]
    if processes is not None:
        command += ["--processes", str(processes)]
    return command


def _tree_cpu(pids: Sequence[int]) -> float:
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            for process in [parent, *parent.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _take_reports(directory: Path) -> list[dict[str, Any]]:
    """Read the workers' reports, then delete them and their directory."""
    paths = sorted(directory.glob("*.json"))
    found = [json.loads(path.read_text()) for path in paths]
    for path in paths:
        path.unlink()
    directory.rmdir()
    return found


async def one_run(
    channel: Any, url: str, processes: int, args: argparse.Namespace, *, native: bool
) -> dict[str, Any]:
    queue = s.unique_queue(f"scale-p{processes}")
    reports = Path(tempfile.mkdtemp(prefix="foxwork-bench-scaling-"))
    env = {**os.environ, ENV_REPORT_DIR: str(reports), ENV_CHAIN: args.chain}
    children: list[asyncio.subprocess.Process] = []
    result: dict[str, Any] = {"processes": processes, "queue": queue, "error": None}
    try:
        await s.fill_queue(channel, queue, args.messages, tag="scale-")
        commands = (
            [_command(url, queue, args.prefetch, processes)]
            if native
            else [_command(url, queue, args.prefetch, None) for _ in range(processes)]
        )
        for command in commands:
            children.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    cwd=s.ROOT,
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + max(120.0, args.messages / 200)
        while await s.ready_count(channel, queue) > 0:
            if any(c.returncode is not None for c in children):
                result["error"] = "a foxwork run process exited before the queue was empty"
                break
            if time.monotonic() > deadline:
                result["error"] = "the queue was not drained in time"
                break
            await asyncio.sleep(POLL)
        # Ready is 0; the last prefetched messages are still being processed.
        await asyncio.sleep(1.0)
        result["cpu_s"] = _tree_cpu([c.pid for c in children])
    finally:
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        stderr_tails = []
        for child in children:
            try:
                _, stderr = await asyncio.wait_for(child.communicate(), 60)
            except TimeoutError:
                os.killpg(
                    child.pid, signal.SIGKILL
                )  # our own session: the command and its children
                _, stderr = await child.communicate()
            if child.returncode not in (0, None):
                stderr_tails.append((stderr or b"").decode(errors="replace")[-2000:])
        left = await s.ready_count(channel, queue)
        await s.delete_queues(channel, [queue])
    found = _take_reports(reports)
    counted = [r for r in found if r["count"]]
    total = sum(r["count"] for r in found)
    if counted:
        elapsed = max(r["last"] for r in counted) - min(r["first"] for r in counted)
        result.update(
            elapsed_s=elapsed,
            msgs_per_s=total / elapsed if elapsed > 0 else None,
            per_process=[r["count"] for r in found],
        )
    result.update(processed=total, left_in_queue=left)
    if stderr_tails:
        result["stderr"] = stderr_tails
    if result["error"] is None:
        if left:
            result["error"] = f"{left} message(s) left in the queue after shutdown"
        elif total < args.messages:
            result["error"] = f"the workers reported {total} of {args.messages} messages"
    return result


async def bench(
    args: argparse.Namespace, counts: Sequence[int], broker: s.Broker, *, native: bool
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    async with s.amqp(broker.url) as channel:
        for number in range(1, args.rounds + 1):
            for processes in counts:
                result = await one_run(channel, broker.url, processes, args, native=native)
                result["round"] = number
                runs.append(result)
                if result["error"]:
                    s.log(f"round {number}, {processes} process(es): FAILED: {result['error']}")
                else:
                    s.log(
                        f"round {number}, {processes} process(es): {result['msgs_per_s']:,.0f}"
                        f" msgs/s (per process: {result['per_process']})"
                    )
    summary = {}
    for processes in counts:
        rates = [r["msgs_per_s"] for r in runs if r["processes"] == processes and not r["error"]]
        summary[str(processes)] = {
            "msgs_per_s_median": s.median(rates),
            "min": min(rates, default=None),
            "max": max(rates, default=None),
            "runs": len(rates),
        }
    return {
        "meta": {
            "benchmark": "scaling",
            "available": True,
            "mode": "foxwork run --processes" if native else "separate foxwork run processes",
            "messages": args.messages,
            "rounds": args.rounds,
            "prefetch": args.prefetch,
            "chain": args.chain,
            "rabbitmq": await s.server_version(broker.url),
            "versions": s.versions(),
            "machine": s.machine(),
        },
        "summary": summary,
        "runs": runs,
    }


def run(args: argparse.Namespace, counts: Sequence[int], broker: s.Broker) -> dict[str, Any]:
    native = processes_option_available()
    if not native and not args.separate:
        message = (
            "foxwork run --processes is unavailable in this foxwork (its CLI has no "
            "--processes option): scaling not measured (--separate starts separate "
            "processes instead)"
        )
        print(message)
        data: dict[str, Any] = {"meta": {"benchmark": "scaling", "available": False}}
        data["note"] = message
        s.write_json("scaling", data, args.output)
        return data
    data = asyncio.run(bench(args, counts, broker, native=native))
    print()
    print(f"Scaling ({data['meta']['mode']}), {args.messages:,} messages, chain {args.chain}")
    base = data["summary"][str(counts[0])]["msgs_per_s_median"]
    rows = []
    for processes, item in data["summary"].items():
        if not item["runs"]:
            rows.append([processes, "failed", "", ""])
            continue
        rows.append(
            [
                processes,
                f"{item['msgs_per_s_median']:,.0f}",
                f"{item['min']:,.0f}-{item['max']:,.0f}",
                f"{item['msgs_per_s_median'] / base:.2f}" if base == base else "",
            ]
        )
    print(s.table(["processes", "msgs/s", "min-max", f"x {counts[0]} process(es)"], rows))
    s.save("scaling", data, args.output)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    args = parser.parse_args(argv)
    try:
        counts = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--processes {args.processes!r}: give whole numbers, e.g. 1,2")
    if not counts or min(counts) < 1 or args.messages < 1 or args.rounds < 1:
        parser.error("--processes, --messages and --rounds must be at least 1")
    if not processes_option_available() and not args.separate:
        run(args, counts, s.Broker(""))  # says it is unavailable; needs no broker
        return 0
    with s.broker(args.url) as broker:
        data = run(args, counts, broker)
    return 0 if all(not r["error"] for r in data.get("runs", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
