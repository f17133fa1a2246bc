"""Throughput on Redis: raw redis-py vs foxwork (bare, full chain) vs Dramatiq, Celery, taskiq.

For each candidate and round: the database is emptied, a queue is filled with N messages
whose body is the 120-byte JSON order of the RabbitMQ suite (raw redis-py and foxwork:
foxwork's stream entries, XADD in pipelines; the peers: through their own API, in a process
of their own, so each gets its own envelope around the same order); then the candidate runs
as its own process and consumes → decodes the JSON → acks every message. The candidate
measures itself (see `consumers/redis_common.py`): from its first handler call until Redis
shows every message settled, its CPU seconds in that window, its peak RSS.

Rounds alternate the order of the candidates (A B C …, then … C B A) after one untimed
warm-up run each; each candidate's ratio to raw redis-py is taken within the same round.

Usage:
    python -m benchmarks.redis_throughput [-n N] [--rounds R] [--candidates a,b] [--url URL]

Results: `benchmarks/results/redis_throughput.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from . import _support as s

#: Candidate name → (module in benchmarks/consumers, extra arguments).
CANDIDATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "raw_redispy": ("redis_raw", ()),
    # The raw loop deleting what it acked (XACK + XDEL in one MULTI), as foxwork does.
    "raw_redispy_xdel": ("redis_raw", ("--xdel",)),
    "foxwork_bare": ("redis_foxwork", ("--chain", "bare")),
    "foxwork_full": ("redis_foxwork", ("--chain", "full")),
    "foxwork_bare_uvloop": ("redis_foxwork", ("--chain", "bare", "--loop", "uvloop")),
    # foxwork with COUNT 256, the raw loop's (the backend's default batch_size is 64).
    "foxwork_bare_b256": ("redis_foxwork", ("--chain", "bare", "--batch-size", "256")),
    "dramatiq": ("redis_dramatiq", ()),
    "celery": ("redis_celery", ()),
    "taskiq_redis": ("redis_taskiq", ()),
}
DEFAULT_CANDIDATES = (
    "raw_redispy",
    "foxwork_bare",
    "foxwork_full",
    "dramatiq",
    "celery",
    "taskiq_redis",
)
#: Suffix of the candidates run from the `--before` checkout.
BEFORE = "@before"
#: The candidate every other is compared with, within each round.
BASELINE = "raw_redispy"
DEFAULT_MESSAGES = 50_000
DEFAULT_ROUNDS = 3
DEFAULT_PREFETCH = 256
#: Messages of the untimed warm-up run of each candidate (0: none).
DEFAULT_WARMUP = 2_000
#: Packages whose versions shape the numbers.
PACKAGES = ("foxwork", "redis", "hiredis", "dramatiq", "celery", "kombu", "taskiq", "taskiq-redis")


@dataclass
class Server:
    """The Redis server under test: its URL and, when started here, its pid."""

    url: str
    pid: int | None = None

    def cpu_seconds(self) -> float | None:
        if self.pid is None:
            return None
        try:
            import psutil  # type: ignore[import-untyped]

            times = psutil.Process(self.pid).cpu_times()
        except Exception:
            return None
        return float(times.user + times.system)


@contextlib.contextmanager
def server(url: str | None) -> Iterator[Server]:
    """Use the Redis at `url` (its database is emptied between runs), or start a throwaway
    redis-server on 127.0.0.1 with the test harness (no persistence)."""
    if url:
        yield Server(url)
        return
    if str(s.ROOT) not in sys.path:
        sys.path.insert(0, str(s.ROOT))
    from tests.harness.redis import RedisHarnessError, RedisServer

    node = RedisServer()
    try:
        node.start()
    except RedisHarnessError as exc:
        raise SystemExit(f"cannot start a redis-server for the benchmark: {exc}") from None
    s.log(f"started a throwaway redis-server ({node.url})")
    try:
        yield Server(node.url, node.pid)
    finally:
        node.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_throughput", description=__doc__.splitlines()[0]
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
        help=f"comma-separated; known: {', '.join(CANDIDATES)}",
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N")
    parser.add_argument(
        "--batch-size", type=int, help="foxwork candidates: the backend's batch_size (COUNT)"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="run each candidate under py-spy, collapsed stacks into DIR (see hotspots.py)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also run each foxwork candidate from the checkout DIR (`git worktree add DIR "
        "REV`), as NAME@before: before/after figures from one run",
    )
    parser.add_argument("--output", type=Path, default=s.RESULTS / "redis_throughput.json")


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in names if c not in CANDIDATES]
    if args.before is not None:
        if not (args.before / "benchmarks" / "consumers" / "redis_foxwork.py").exists():
            parser.error(f"{args.before} is not a checkout with this benchmark")
        names += [f"{c}{BEFORE}" for c in names if c.startswith("foxwork")]
    if unknown or not names:
        parser.error(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    if args.messages < 1 or args.rounds < 1 or args.prefetch < 1:
        parser.error("--messages, --rounds and --prefetch must be at least 1")
    return names


def _module_command(module: str, url: str, queue: str) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.consumers.{module}", "--url", url, "--queue", queue]


def one_run(
    srv: Server,
    name: str,
    *,
    messages: int,
    prefetch: int,
    batch_size: int | None = None,
    py_spy: Path | None = None,
    before: Path | None = None,
) -> dict[str, Any]:
    module, extra = CANDIDATES[name.removesuffix(BEFORE)]
    # A candidate runs from the root of its checkout, which puts that foxwork first.
    root = before if name.endswith(BEFORE) and before is not None else s.ROOT
    queue = s.unique_queue(f"rtp-{name}")
    client = redis.Redis.from_url(srv.url)
    client.flushdb()
    result_path = s.RESULTS / f".{queue}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    timeout = max(120.0, messages / 100)
    base = _module_command(module, srv.url, queue)
    began = time.perf_counter()
    filled = subprocess.run(
        [*base, "--fill", str(messages)], cwd=root, capture_output=True, timeout=timeout
    )
    fill_s = time.perf_counter() - began
    if filled.returncode != 0:
        tail = filled.stderr.decode(errors="replace").strip().splitlines()[-10:]
        return {"candidate": name, "error": "filling failed:\n" + "\n".join(tail)}
    command = [
        *base,
        *("--expected", str(messages), "--prefetch", str(prefetch)),
        *("--result", str(result_path), "--timeout", str(timeout), *extra),
    ]
    if batch_size and module == "redis_foxwork" and "--batch-size" not in extra:
        command += ["--batch-size", str(batch_size)]
    if py_spy is not None:
        spy = Path(sys.executable).with_name("py-spy")
        command = [
            *(str(spy), "record", "--rate", "500", "--format", "raw", "--full-filenames"),
            *("--output", str(py_spy), "--", *command),
        ]
    server_cpu = srv.cpu_seconds()
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return {"candidate": name, "error": f"hung; killed after {timeout + 60:g} s"}
    after = srv.cpu_seconds()
    try:
        result: dict[str, Any] = json.loads(result_path.read_text())
    except (OSError, ValueError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-15:]
        result = {"error": f"exit status {done.returncode}, no result; stderr:\n" + "\n".join(tail)}
    finally:
        result_path.unlink(missing_ok=True)
    if server_cpu is not None and after is not None:
        result["server_cpu_s"] = after - server_cpu
    result.update(candidate=name, queue=queue, fill_s=round(fill_s, 3))
    client.flushdb()
    client.close()
    return result


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": s.median(values),
        "min": min(values, default=None),
        "max": max(values, default=None),
    }


def _per_message_us(runs: Sequence[dict[str, Any]], key: str) -> float:
    """Median over `runs` of `key` (CPU seconds) per message, in µs."""
    return s.median([r[key] / r["acked"] * 1e6 for r in runs if r.get(key) is not None])


def summarise(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per candidate: throughput median/min/max, its ratio to the baseline's in the same
    round, CPU per message (its own and the Redis server's), peak RSS."""
    good = [r for r in runs if not r.get("error")]
    baseline = {r["round"]: r["msgs_per_s"] for r in good if r["candidate"] == BASELINE}
    summary: dict[str, Any] = {}
    for name in names:
        mine = [r for r in good if r["candidate"] == name]
        rates = [r["msgs_per_s"] for r in mine]
        summary[name] = {
            "runs": len(mine),
            "failed_runs": sum(1 for r in runs if r["candidate"] == name) - len(mine),
            "msgs_per_s": _spread(rates) | {"all": rates},
            "ratio_to_baseline": _spread(
                [r["msgs_per_s"] / baseline[r["round"]] for r in mine if r["round"] in baseline]
            ),
            "cpu_us_per_msg_median": _per_message_us(mine, "cpu_s"),
            "server_cpu_us_per_msg_median": _per_message_us(mine, "server_cpu_s"),
            "peak_rss_mib_median": s.median([r["peak_rss_kib"] / 1024 for r in mine]),
        }
    return summary


#: Columns of the table: heading, and how a candidate's summary fills it.
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("msgs/s", lambda i: f"{i['msgs_per_s']['median']:,.0f}"),
    ("min-max", lambda i: "{min:,.0f}-{max:,.0f}".format(**i["msgs_per_s"])),
    (f"x {BASELINE}", lambda i: f"{i['ratio_to_baseline']['median']:.2f}"),
    ("x min-max", lambda i: "{min:.2f}-{max:.2f}".format(**i["ratio_to_baseline"])),
    ("CPU µs/msg", lambda i: f"{i['cpu_us_per_msg_median']:.1f}"),
    ("redis µs/msg", lambda i: f"{i['server_cpu_us_per_msg_median']:.1f}"),
    ("peak RSS MiB", lambda i: f"{i['peak_rss_mib_median']:.1f}"),
)


def render(summary: dict[str, Any]) -> str:
    """The summary as a table, one row per candidate ("failed" when no run succeeded)."""
    rows = []
    for name, item in summary.items():
        if not item["runs"]:
            rows.append([name, "failed", *[""] * (len(COLUMNS) - 1)])
            continue
        ratio_known = item["ratio_to_baseline"]["min"] is not None
        rows.append(
            [name]
            + [
                cell(item) if ratio_known or not heading.startswith("x ") else ""
                for heading, cell in COLUMNS
            ]
        )
    return s.table(["candidate", *(heading for heading, _ in COLUMNS)], rows)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def bench(args: argparse.Namespace, names: Sequence[str], srv: Server) -> dict[str, Any]:
    info: Any = redis.Redis.from_url(srv.url).info("server")
    meta = {
        "benchmark": "redis_throughput",
        "messages": args.messages,
        "rounds": args.rounds,
        "prefetch": args.prefetch,
        "batch_size": args.batch_size,
        "body_bytes": s.BODY_SIZE,
        "candidates": list(names),
        "baseline": BASELINE,
        "profiled": args.py_spy is not None,
        "before": None if args.before is None else str(args.before),
        "redis": info.get("redis_version"),
        "versions": versions(),
        "machine_before": s.machine(),
    }
    runs: list[dict[str, Any]] = []
    options = {"prefetch": args.prefetch, "batch_size": args.batch_size, "before": args.before}
    if args.warmup:
        s.log(f"warm-up: {args.warmup:,} messages per candidate (not recorded)")
        for name in names:
            result = one_run(srv, name, messages=args.warmup, **options)
            if result.get("error"):
                s.log(f"warm-up {name}: FAILED: {result['error']}")
    for number in range(1, args.rounds + 1):
        order = list(names) if number % 2 else list(reversed(names))
        for name in order:
            spy = args.py_spy / f"{name}-r{number}.raw" if args.py_spy else None
            result = one_run(srv, name, messages=args.messages, py_spy=spy, **options)
            result["round"] = number
            runs.append(result)
            if result.get("error"):
                s.log(f"round {number} {name:>19}: FAILED: {result['error']}")
            else:
                s.log(
                    f"round {number} {name:>19}: {result['msgs_per_s']:8,.0f} msgs/s, "
                    f"CPU {result['cpu_s'] / result['acked'] * 1e6:.0f} µs/msg"
                )
    meta["machine_after"] = s.machine()
    return {"meta": meta, "summary": summarise(runs, names), "runs": runs}


def run(args: argparse.Namespace, names: Sequence[str], srv: Server) -> dict[str, Any]:
    """Run the benchmark on `srv`, print the table, write the JSON."""
    s.log(
        f"redis throughput: {args.messages:,} messages x {args.rounds} round(s), prefetch "
        f"{args.prefetch}, candidates {', '.join(names)}"
    )
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    data = bench(args, names, srv)
    print()
    print(
        f"Redis throughput, {args.messages:,} messages, {args.rounds} round(s), Redis "
        f"{data['meta']['redis']} on {data['meta']['machine_before']['cpus']} CPUs "
        f"(load {data['meta']['machine_before']['load_average'][0]} before, "
        f"{data['meta']['machine_after']['load_average'][0]} after)"
    )
    print(render(data["summary"]))
    s.save("redis_throughput", data, args.output)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--url", help="Redis URL on 127.0.0.1, its database emptied between runs")
    args = parser.parse_args(argv)
    names = check(args, parser)
    with server(args.url) as srv:
        data = run(args, names, srv)
    return 0 if all(not r.get("error") for r in data["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
