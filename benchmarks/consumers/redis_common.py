"""What every Redis candidate shares: the command line, the probe that times the run, the result.

The Redis candidates speak to Redis through four different clients (redis-py asyncio,
redis-py sync under Dramatiq, kombu under Celery, redis-py asyncio under taskiq), so unlike
the RabbitMQ suite the probe cannot sit in one shared client. It sits at the two points
every candidate has:

- start: the handler is called for the first time (the same trivial handler everywhere:
  the JSON body is decoded, by the candidate itself or by its framework, and the call is
  counted);
- end: the handler has been called `expected` times *and* Redis shows every message
  settled: a thread of the candidate's process polls Redis every millisecond with the
  candidate's own check (`Candidate.settled`: no pending entry left in the consumer group,
  or the framework's unacked set empty). The end time is the first poll that sees it.

CPU time is the process's own (all threads) between the two points; peak RSS its high-water
mark (`VmHWM`). A candidate module has the shape of `Candidate`; `main(candidate)` runs it:

    python -m benchmarks.consumers.redis_NAME --url URL --queue Q --expected N --result FILE
    python -m benchmarks.consumers.redis_NAME --url URL --queue Q --fill N

The second form fills `Q` with N messages through the candidate's own API, and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis

from . import _common

#: Unsettled messages a candidate holds at most; also raw redis-py's COUNT.
DEFAULT_PREFETCH = 256
#: Seconds a run may take before it is reported as failed.
DEFAULT_TIMEOUT = 600.0
#: Seconds between two polls of Redis for "every message settled".
SETTLED_POLL = 0.001
#: Seconds a candidate may take to stop once told to; then the process writes its result
#: and exits anyway (the measurement is complete by then).
STOP_GRACE = 10.0


def body_object(n: int) -> dict[str, Any]:
    """The `n`-th order, as the 120-byte JSON body of the RabbitMQ suite decodes."""
    from .._support import make_body

    payload: dict[str, Any] = json.loads(make_body(n))
    return payload


class Probe(_common.Probe):
    """The RabbitMQ suite's probe, fed by the handler instead of the AMQP client: counts
    handler calls (from any thread, in `acked`) and times the run."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.all_seen = threading.Event()
        self._lock = threading.Lock()
        self.error: str | None = None

    def seen(self) -> None:
        """One message handled (called by the handler)."""
        with self._lock:
            self.acked += 1
            count = self.acked
        if count == 1:
            self._mark_start()
        if count == self.expected:
            self.all_seen.set()

    def finish(self) -> None:  # type: ignore[override]
        """Stop the clock (Redis showed every message settled)."""
        self.finished_at = time.perf_counter()
        self.cpu_end = _common._cpu()
        self.rss_end_kib = _common.rss_kib()

    def result(self) -> dict[str, Any]:
        # "acked" counts handler calls: only a finished run has had them all settled.
        return super().result() | {"handled": self.acked, "ready_after": None}


class Stopper:
    """How the monitor thread tells the candidate to stop (the candidate sets `action`)."""

    def __init__(self) -> None:
        self.action: Callable[[], object] | None = None
        self.requested = threading.Event()

    def __call__(self) -> None:
        self.requested.set()
        if self.action is not None:
            self.action()


class Candidate(Protocol):
    """A candidate module."""

    NAME: str

    def fill(self, url: str, queue: str, count: int) -> None:
        """Put `count` messages (`body_object(0..count-1)`) in `queue`, through the
        candidate's own API."""

    def settled(self, client: redis.Redis, queue: str) -> bool:
        """True when Redis holds no unsettled message of `queue` for this candidate."""

    def run(self, args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
        """Consume `queue`, calling `probe.seen()` once per message, until `stopper` is
        called (from another thread); set `stopper.action` before consuming."""


def _monitor(candidate: Candidate, args: argparse.Namespace, probe: Probe, stop: Stopper) -> None:
    deadline = time.monotonic() + args.timeout
    try:
        client = redis.Redis.from_url(args.url)
        if not probe.all_seen.wait(args.timeout):
            probe.error = f"timed out: {probe.acked} of {args.expected} handled"
            return
        while not candidate.settled(client, args.queue):
            if time.monotonic() > deadline:
                probe.error = "timed out waiting for the last settlements"
                return
            time.sleep(SETTLED_POLL)
        probe.finish()
    except Exception as exc:
        probe.error = f"monitor failed: {type(exc).__name__}: {exc}"
    finally:
        stop()


def build_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.consumers.{name}",
        description=f"Redis throughput candidate {name}: consume, decode and ack N messages.",
    )
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--queue", required=True, help="the queue (stream or list) to drain")
    parser.add_argument("--expected", type=int, default=0, help="messages in the queue")
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--result", help="where to write the JSON result")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--fill", type=int, metavar="N", help="fill the queue with N, and exit")
    return parser


def main(candidate: Candidate, add_arguments: Callable[[Any], None] | None = None) -> int:
    """Parse the command line; fill, or run the candidate and write its result file."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = build_parser(candidate.NAME)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.fill is not None:
        candidate.fill(args.url, args.queue, args.fill)
        return 0
    if not args.result or args.expected < 1:
        parser.error("--result and --expected are required to consume")
    probe = Probe(args.expected)
    stopper = Stopper()
    monitor = threading.Thread(
        target=_monitor, args=(candidate, args, probe, stopper), name="probe", daemon=True
    )
    monitor.start()
    watchdog = threading.Thread(
        target=_watchdog, args=(candidate, args, probe, stopper), name="watchdog", daemon=True
    )
    watchdog.start()
    error = None
    try:
        candidate.run(args, probe, stopper)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    monitor.join(5)
    return _write(candidate, args, probe, error)


def _write(
    candidate: Candidate, args: argparse.Namespace, probe: Probe, error: str | None, **more: Any
) -> int:
    result = {"candidate": candidate.NAME, "pid": os.getpid(), "error": error or probe.error}
    result |= probe.result() | more
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0 if result["error"] is None else 1


def _watchdog(candidate: Candidate, args: argparse.Namespace, probe: Probe, stop: Stopper) -> None:
    """Once the candidate was told to stop: if it has not stopped within `STOP_GRACE`,
    write the result and end the process (taskiq's receiver sometimes never returns)."""
    stop.requested.wait()
    time.sleep(STOP_GRACE)
    status = _write(candidate, args, probe, None, stop_hung=True)
    os._exit(status)
