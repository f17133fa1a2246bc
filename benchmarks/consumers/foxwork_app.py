"""A pool for `foxwork run`, as the scaling benchmark starts it.

    foxwork run benchmarks.consumers.foxwork_app:make_pool --url URL --queue Q ...

Each pool (one per process) decodes every message's JSON body and, when it stops, writes
what it saw to `$FOXWORK_BENCH_REPORT_DIR/<pid>.json`: how many messages it processed, and
the wall-clock times (shared by all processes) of its first and last one. The benchmark
adds these up across processes.

`$FOXWORK_BENCH_CHAIN` picks the middleware: `full` (default; the production chain of
`foxwork_full`) or `bare` (none).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from foxwork import Message, Worker, WorkerPool

#: Directory the per-process reports go to.
ENV_REPORT_DIR = "FOXWORK_BENCH_REPORT_DIR"
#: `full` or `bare`.
ENV_CHAIN = "FOXWORK_BENCH_CHAIN"


class CountingWorker(Worker[Any]):
    """Decodes the JSON body; counts messages and notes the first and last one's time."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None

    async def process(self, message: Message[Any]) -> None:
        message.payload  # noqa: B018  (decoding is the work)
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    async def shutdown(self) -> None:
        self.write_report()

    def write_report(self) -> None:
        directory = os.environ.get(ENV_REPORT_DIR)
        if not directory:
            return
        report = {"pid": os.getpid(), "count": self.count, "first": self.first, "last": self.last}
        Path(directory, f"{os.getpid()}-{self.id}.json").write_text(json.dumps(report))


def make_pool() -> WorkerPool:
    middleware: list[Any] = []
    if os.environ.get(ENV_CHAIN, "full") == "full":
        from .foxwork_full import full_chain, telemetry

        middleware = full_chain(*telemetry())
    return WorkerPool(workers=[CountingWorker()], middleware=middleware)
