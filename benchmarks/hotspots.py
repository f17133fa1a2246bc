"""Where a candidate spends its CPU: a summary of `py-spy record -f raw` stacks.

`python -m benchmarks.throughput --py-spy DIR` runs each candidate under py-spy (500 Hz,
on-CPU samples only: a thread waiting in `epoll` is not sampled) and leaves one file of
collapsed stacks per run. This prints, as a share of the samples:

- by area: the package of the innermost frame (self time): foxwork, aiormq, pamqp,
  aio_pika, asyncio, opentelemetry, ... Stacks outside the event loop are split into
  import/start-up (main thread) and other threads (exporters);
- foxwork's own functions by inclusive time (time in the function and what it calls,
  each function counted once per stack); by owned time (samples whose innermost foxwork
  frame is the function: its own code plus the library code it calls directly, such as
  the OpenTelemetry SDK under `TracingMiddleware.__call__`); and by self time.

Usage:
    python -m benchmarks.hotspots DIR/foxwork_full-r1.raw [--top 20] [--package foxwork/]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s

_STDLIB = re.compile(r"/lib/python3\.\d+/")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: Innermost-frame file prefixes → area; the first match wins.
AREAS = (
    ("foxwork/", "foxwork"),
    ("benchmarks/", "benchmark harness"),
    ("aiormq/", "aiormq"),
    ("pamqp/", "pamqp"),
    ("aio_pika/", "aio_pika"),
    ("asyncio/", "asyncio"),
    ("opentelemetry/", "opentelemetry"),
    ("aiolimiter/", "aiolimiter"),
    ("faststream/", "faststream"),
    ("fast_depends/", "fast_depends"),
    ("pydantic", "pydantic"),
    ("uvloop/", "uvloop"),
    ("json/", "json"),
)
LOOP = "BaseEventLoop._run_once"
UNKNOWN = "other (stdlib, C)"
#: Leaf functions (in threading.py) of a thread that waits, which py-spy samples anyway.
IDLE = frozenset({"Condition.wait", "Event.wait", "Lock.acquire"})
OUTSIDE_MAIN = "(main thread outside the loop: imports, start-up)"
OUTSIDE_OTHER = "(other threads: telemetry export)"


def parse(path: Path) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per distinct stack, idle waits left out."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():
            continue
        frames = stack.split(";")
        function, file = function_of(frames[-1])
        if function in IDLE and file.endswith("threading.py"):
            continue  # a thread waiting on a condition (py-spy counts it as active)
        stacks.append((frames, int(count)))
    return stacks


def short(file: str) -> str:
    """A file as a package path: `foxwork/pool.py`, `aiormq/channel.py`, `asyncio/...`."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in file:
            return file.rpartition(marker)[2]
    root = f"{s.ROOT}/"
    if file.startswith(root):
        return file.removeprefix(root)
    match = _STDLIB.search(file)
    return file[match.end() :] if match else file


def function_of(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame, without the line number."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], short(match["file"])


def area_of(file: str) -> str | None:
    for prefix, area in AREAS:
        if file.startswith(prefix):
            return area
    return None


def summarise(stacks: Sequence[tuple[list[str], int]], package: str) -> dict[str, Any]:
    """Total samples; samples by area; samples of `package`'s functions: inclusive, owned
    (innermost `package` frame of the stack) and self."""
    total = 0
    areas: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    owned: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        total += count
        names = [function_of(f) for f in frames]
        if not any(function == LOOP for function, _ in names):
            main_thread = bool(names) and "runpy" in names[0][1]
            outside = OUTSIDE_MAIN if main_thread else OUTSIDE_OTHER
            areas[outside] += count
            continue
        # Self time goes to the innermost frame of a known area: the stdlib or C code a
        # package calls (locks, contextvars, time) counts as that package's.
        areas[next((a for _, f in reversed(names) if (a := area_of(f))), UNKNOWN)] += count
        mine = [f"{function} ({file})" for function, file in names if file.startswith(package)]
        if mine:
            owned[mine[-1]] += count
        if names[-1][1].startswith(package):
            self_time[mine[-1]] += count
        for key in dict.fromkeys(mine):
            inclusive[key] += count
    return {
        "total": total,
        "areas": dict(areas),
        "inclusive": dict(inclusive),
        "owned": dict(owned),
        "self": dict(self_time),
    }


def report(path: Path, *, top: int, package: str) -> str:
    summary = summarise(parse(path), package)
    total = summary["total"]
    if not total:
        return f"{path}: no samples"

    def rows(counts: dict[str, int]) -> list[list[str]]:
        ranked = sorted(counts.items(), key=lambda x: -x[1])[:top]
        return [[name, f"{100 * n / total:5.1f} %"] for name, n in ranked]

    return "\n\n".join(
        [
            f"{path.name}: {total:,} on-CPU samples",
            s.table(["self time by area", "share"], rows(summary["areas"])),
            s.table([f"{package} functions, inclusive", "share"], rows(summary["inclusive"])),
            s.table(
                [f"{package} functions, owned (innermost {package} frame)", "share"],
                rows(summary["owned"]),
            ),
            s.table([f"{package} functions, self", "share"], rows(summary["self"])),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hotspots", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw (collapsed) files")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--package", default="foxwork/", help="whose functions to list")
    args = parser.parse_args(argv)
    for index, path in enumerate(args.files):
        if index:
            print("\n" + "=" * 80 + "\n")
        print(report(path, top=args.top, package=args.package))
    return 0


if __name__ == "__main__":
    sys.exit(main())
