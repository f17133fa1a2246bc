"""Retry accuracy: how late (or early) does a `RetryLater(d)` message come back?

A foxwork pool (`AckNackMiddleware` → `RetryMiddleware`) on a real broker consumes a fresh
queue of messages (default 500) whose first attempt raises `RetryLater(d)`, with `d` taken
in turn from a mix of delays (default 0.1, 0.5, 1, 2 and 5 s, all in one run). The second
attempt notes when it arrived. Two bursts run on the same pool: "cold", while the backend
has not declared the retry tiers yet (a dependency's first outage), then "warm", the same
again once they are declared.

The error of one message is observed - scheduled, where observed is the time from the
`raise` on the first attempt to the start of the second (so it includes publishing and
confirming the retry copy, and the broker's dead-lettering back to the queue), and
scheduled is the delay of the retry tier the backend actually uses
(`foxwork.wire.delay_tier_ms(d)`; tiers are rounded to two significant digits). Reported
per delay and overall: p50, p99 and max, in milliseconds, plus the minimum (negative: early).
The backend is a `RabbitMQBackend` that also notes when each retry copy was confirmed, to
show how much of the error is publishing (raise → confirm).

Usage:
    python -m benchmarks.retry_accuracy [-n 500] [--delays 0.1,0.5,1,2,5] [--url URL]

Results: `benchmarks/results/retry_accuracy.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foxwork import Message, RetryLater, Worker, WorkerPool, wire
from foxwork.backends import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from . import _support as s

DEFAULT_MESSAGES = 500
DEFAULT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
DEFAULT_PREFETCH = 256
#: Seconds allowed beyond the longest delay for every message to come back.
GRACE = 60.0
TAG = "retry-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument(
        "--delays",
        default=",".join(f"{d:g}" for d in DEFAULT_DELAYS),
        help="comma-separated delays in seconds, used in turn",
    )
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--output", type=Path, default=s.RESULTS / "retry_accuracy.json")


def parse_delays(text: str) -> list[float]:
    delays = [float(x) for x in text.split(",") if x.strip()]
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"--delays {text!r}: give one or more delays of 0 s or more")
    return delays


class RetryOnce(Worker[Any]):
    """Fails the first attempt with `RetryLater(its delay)`; notes when the second arrives."""

    def __init__(self, delays: Sequence[float]) -> None:
        super().__init__()
        self.delays = delays
        self.failed_at: dict[int, float] = {}
        self.returned_at: dict[int, float] = {}
        self.expected = 0
        self.all_back = asyncio.Event()

    def delay_of(self, n: int) -> float:
        return self.delays[n % len(self.delays)]

    def expect(self, total: int) -> None:
        """Set `all_back` once `total` messages in all have come back."""
        self.expected = total
        self.all_back.clear()

    async def process(self, message: Message[Any]) -> None:
        now = time.monotonic()
        n = int(message.id.removeprefix(TAG))
        if message.attempt == 1:
            self.failed_at[n] = now
            raise RetryLater(self.delay_of(n))
        self.returned_at.setdefault(n, now)
        if len(self.returned_at) >= self.expected:
            self.all_back.set()


class TimedBackend(RabbitMQBackend):
    """`RabbitMQBackend` noting when each retry copy was confirmed, to split the error into
    the publish (raise → confirm) and the broker's part (confirm → redelivery)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        self.confirmed_at: dict[int, float] = {}

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        await super().publish_retry(message, delay=delay)
        self.confirmed_at[int(message.id.removeprefix(TAG))] = time.monotonic()


def stats(errors_ms: Sequence[float], publish_ms: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(errors_ms),
        "p50_ms": s.percentile(errors_ms, 50),
        "p99_ms": s.percentile(errors_ms, 99),
        "max_ms": max(errors_ms, default=float("nan")),
        "min_ms": min(errors_ms, default=float("nan")),
        "publish_p50_ms": s.percentile(publish_ms, 50),
        "publish_max_ms": max(publish_ms, default=float("nan")),
    }


def phase_stats(
    worker: RetryOnce, backend: TimedBackend, ids: range, delays: Sequence[float]
) -> dict[str, Any]:
    """Errors of the messages `ids`, per delay and overall."""
    per_delay: dict[str, Any] = {}
    everything: list[float] = []
    publishing: list[float] = []
    for delay in dict.fromkeys(delays):
        scheduled = wire.delay_tier_ms(delay) / 1000
        mine = [n for n in ids if worker.delay_of(n) == delay and n in worker.returned_at]
        errors = [(worker.returned_at[n] - worker.failed_at[n] - scheduled) * 1000 for n in mine]
        publish = [
            (backend.confirmed_at[n] - worker.failed_at[n]) * 1000
            for n in mine
            if n in backend.confirmed_at
        ]
        everything.extend(errors)
        publishing.extend(publish)
        per_delay[f"{delay:g}"] = {
            "requested_s": delay,
            "tier_s": scheduled,
            **stats(errors, publish),
        }
    return {"per_delay": per_delay, "overall": stats(everything, publishing)}


async def bench(
    args: argparse.Namespace, delays: Sequence[float], broker: s.Broker
) -> dict[str, Any]:
    queue = s.unique_queue("retry")
    worker = RetryOnce(delays)
    backend = TimedBackend(url=broker.url, queue=queue)
    pool = WorkerPool(
        workers=[worker],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=2)],
        concurrency_limit=args.prefetch,
        prefetch=args.prefetch,
        queues=[queue],
    )
    n = args.messages
    phases = {"cold": range(0, n), "warm": range(n, 2 * n)}
    error = None
    async with s.amqp(broker.url) as channel:
        try:
            await s.fill_queue(channel, queue, n, tag=TAG)
            worker.expect(n)
            await pool.start(backend)
            for name, ids in phases.items():
                if name == "warm":
                    # Same pool, same backend: its retry tiers are declared now.
                    worker.expect(2 * n)
                    await s.fill_queue(channel, queue, n, tag=TAG, first_id=n, check=False)
                try:
                    await asyncio.wait_for(worker.all_back.wait(), max(delays) + GRACE)
                except TimeoutError:
                    missing = sum(1 for i in ids if i not in worker.returned_at)
                    error = f"{name} phase: {missing} message(s) never came back"
                    break
            await pool.shutdown(timeout=10)
            await backend.close()
        finally:
            await s.delete_queues(channel, [queue])
            for delay in set(delays):
                tier = wire.retry_queue_name(queue, wire.delay_tier_ms(delay))
                try:
                    await channel.queue_delete(tier)
                except Exception:
                    s.log(f"could not delete {tier} (it expires on its own)")
    return {
        "meta": {
            "benchmark": "retry_accuracy",
            "messages_per_phase": n,
            "delays_s": list(delays),
            "prefetch": args.prefetch,
            "rabbitmq": await s.server_version(broker.url),
            "versions": s.versions(),
            "machine": s.machine(),
        },
        "phases": {name: phase_stats(worker, backend, ids, delays) for name, ids in phases.items()},
        "error": error,
    }


def render(phase: dict[str, Any]) -> str:
    rows = []
    for key, item in [*phase["per_delay"].items(), ("all", phase["overall"])]:
        label = f"{key} s (tier {item['tier_s']:g} s)" if key != "all" else "all"
        rows.append(
            [
                label,
                str(item["count"]),
                *(
                    f"{item[k]:.1f}"
                    for k in ("p50_ms", "p99_ms", "max_ms", "min_ms", "publish_p50_ms")
                ),
                f"{item['publish_max_ms']:.1f}",
            ]
        )
    headers = ["delay", "n", "p50", "p99", "max", "min", "publish p50", "publish max"]
    return s.table(headers, rows)


def run(args: argparse.Namespace, delays: Sequence[float], broker: s.Broker) -> dict[str, Any]:
    # Every failure is logged by the pool and the retry layer: expected here, so quiet.
    logging.getLogger("foxwork").setLevel(logging.ERROR)
    data = asyncio.run(bench(args, delays, broker))
    titles = {
        "cold": "first burst of failures (retry tiers not declared yet)",
        "warm": "second burst (retry tiers declared)",
    }
    for name, phase in data["phases"].items():
        print()
        print(
            f"Retry accuracy, {titles[name]}: {args.messages} messages, observed - scheduled (ms)"
        )
        print(render(phase))
    print(
        "\npublish = from the raise to the broker's confirm of the retry copy (part of the "
        "error; the rest is\nthe broker's expiry and dead-lettering, and the redelivery)"
    )
    if data["error"]:
        print(f"FAILED: {data['error']}")
    s.save("retry_accuracy", data, args.output)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retry_accuracy", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    args = parser.parse_args(argv)
    try:
        delays = parse_delays(args.delays)
    except ValueError as exc:
        parser.error(str(exc))
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    with s.broker(args.url) as broker:
        data = run(args, delays, broker)
    return 0 if not data["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
