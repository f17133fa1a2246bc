"""Start-up: `foxwork run` from process start to the first message processed.

A fresh queue is declared as foxwork declares it and given one message; then
`foxwork run benchmarks.startup:make_pool --url URL` is spawned. Its pool (the standard
middleware chain) prints a marker line on stdout when its worker processes that message;
the time from spawn to the line is one measurement, with the CPU time the process had used
by then (from /proc: less disturbed than wall time when other work shares the CPUs). Then
the process gets SIGTERM and shuts down. Reported: median, min and max over `--runs`, next
to the time Python takes to start and `import foxwork.cli` alone
(`python -c "import foxwork.cli"`, spawn to exit),
and the top imports by cumulative time from `python -X importtime -c "import foxwork.cli"`.

This module is imported by `foxwork run` itself, so it imports nothing at module level
beyond the lighter part of the standard library: what is measured is foxwork's start-up,
not the benchmark's.

Usage:
    python -m benchmarks.startup [--runs 10] [--top 15] [--url URL] [--quick]

Results: `benchmarks/results/startup.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The environment variable naming the queue of `make_pool`.
QUEUE_ENV = "FOXWORK_BENCH_STARTUP_QUEUE"
#: What the worker prints when it processes its first message.
MARKER = "first message processed"
DEFAULT_RUNS = 10
QUICK_RUNS = 3
DEFAULT_TOP = 15
TARGET_S = 0.5
#: The repository root, where `benchmarks.startup` is importable from.
ROOT = Path(__file__).resolve().parent.parent
#: Seconds one `foxwork run` may take to process its message.
RUN_TIMEOUT = 60.0


def make_pool() -> Any:
    """The pool `foxwork run` starts: one worker printing `MARKER`, the standard chain."""
    from foxwork import Message, Worker, WorkerPool

    class Marker(Worker[Any]):
        async def process(self, message: Message[Any]) -> None:
            print(MARKER, flush=True)

    return WorkerPool(workers=[Marker()], queues=[os.environ.get(QUEUE_ENV, "startup")])


# -- the driver ---------------------------------------------------------------------------


async def one_run(url: str, queue: str) -> dict[str, Any]:
    """Spawn `foxwork run`, wait for the marker, stop it; seconds from spawn to marker."""
    foxwork = Path(sys.executable).with_name("foxwork")
    env = {**os.environ, QUEUE_ENV: queue}
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *(str(foxwork), "run", "benchmarks.startup:make_pool", "--url", url),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    seconds = cpu_seconds = None
    try:
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), RUN_TIMEOUT)
            if not line:
                break
            if MARKER in line.decode(errors="replace"):
                seconds = time.perf_counter() - began
                cpu_seconds = _cpu_seconds(process.pid)
                break
    except TimeoutError:
        pass
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            _, stderr = await process.communicate()
    result: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "exit_status": process.returncode,
    }
    if seconds is None:
        tail = stderr.decode(errors="replace").strip().splitlines()[-10:]
        result["error"] = "no marker line; stderr:\n" + "\n".join(tail)
    return result


def _cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds process `pid` has used so far (None without /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name in parentheses, which may hold spaces: utime and stime
    # are the 14th and 15th fields of the line.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def import_seconds() -> float:
    """Spawn to exit of `python -c "import foxwork.cli"`."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import foxwork.cli"], check=True)
    return time.perf_counter() - began


def import_offenders(top: int) -> list[dict[str, Any]]:
    """The imports of `import foxwork.cli` with the largest cumulative time (µs)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import foxwork.cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[dict[str, Any]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append(
            {
                "module": name.rstrip(),
                "depth": (len(name) - len(name.lstrip()) - 1) // 2,
                "self_us": int(self_us),
                "cumulative_us": int(cumulative_us),
            }
        )
    rows.sort(key=lambda r: -r["cumulative_us"])
    return rows[:top]


async def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from . import _support as s

    runs: list[dict[str, Any]] = []
    queues: list[str] = []
    async with s.amqp(url) as channel:
        try:
            for number in range(1, args.runs + 1):
                queue = s.unique_queue("startup")
                queues.append(queue)
                await s.fill_queue(channel, queue, 1, tag="startup-")
                result = await one_run(url, queue)
                result["run"] = number
                runs.append(result)
                text = result.get("error") or f"{result['seconds']:.3f} s"
                s.log(f"run {number}: {text}")
        finally:
            await s.delete_queues(channel, queues)
    return {"runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="imports to list")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = QUICK_RUNS
    if args.runs < 1 or args.top < 0:
        parser.error("--runs must be at least 1 and --top at least 0")

    import statistics

    from . import _support as s

    import_seconds()  # once untimed, so that every later run finds the bytecode cached
    imports = [import_seconds() for _ in range(args.runs)]
    offenders = import_offenders(args.top)
    with s.broker(args.url) as broker:
        meta = {
            "benchmark": "startup",
            "runs": args.runs,
            "rabbitmq": asyncio.run(s.server_version(broker.url)),
            "versions": s.versions(),
            "machine_before": s.machine(),
        }
        data = asyncio.run(bench(args, broker.url))
    meta["machine_after"] = s.machine()
    times = [r["seconds"] for r in data["runs"] if r["seconds"] is not None]
    cpu = [r["cpu_seconds"] for r in data["runs"] if r.get("cpu_seconds") is not None]
    data = {
        "meta": meta,
        "summary": {
            "first_message_s": {
                "median": s.median(times),
                "min": min(times, default=None),
                "max": max(times, default=None),
                "stdev": statistics.stdev(times) if len(times) > 1 else None,
            },
            "first_message_cpu_s": {
                "median": s.median(cpu),
                "min": min(cpu, default=None),
                "max": max(cpu, default=None),
            },
            "import_foxwork_cli_s": {
                "median": s.median(imports),
                "min": min(imports),
                "max": max(imports),
            },
            "failed_runs": args.runs - len(times),
        },
        "import_offenders": offenders,
        **data,
    }
    print(
        f"\nStart-up, {args.runs} run(s), load {meta['machine_before']['load_average']} → "
        f"{meta['machine_after']['load_average']} on {meta['machine_before']['cpus']} CPUs"
    )
    rows = [
        ["foxwork run: spawn → first message processed", *_cells(times)],
        ["  CPU time used by then (user + system)", *_cells(cpu)],
        ['python -c "import foxwork.cli": spawn → exit', *_cells(imports)],
    ]
    print(s.table(["", "median s", "min s", "max s"], rows))
    print(f"target: first message < {TARGET_S:g} s")
    if offenders:
        print('\npython -X importtime -c "import foxwork.cli", by cumulative time:')
        print(
            s.table(
                ["module", "cumulative ms", "self ms"],
                [
                    [
                        "  " * r["depth"] + r["module"].strip(),
                        f"{r['cumulative_us'] / 1000:.1f}",
                        f"{r['self_us'] / 1000:.1f}",
                    ]
                    for r in offenders
                ],
            )
        )
    s.save("startup", data, args.output)
    return 0 if not data["summary"]["failed_runs"] else 1


def _cells(values: Sequence[float]) -> list[str]:
    import statistics

    if not values:
        return ["failed", "", ""]
    return [f"{statistics.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}"]


if __name__ == "__main__":
    sys.exit(main())
