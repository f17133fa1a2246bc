"""Celery with its Redis broker (kombu's Redis transport): a worker in this process.

One task counting calls, `acks_late=True` (acked after the task returned, as every other
candidate does; Celery's default acks before running it). The worker runs with the `solo`
pool (tasks in the worker's own thread: the cheapest pool for trivial work; `--pool
threads` for another) and a prefetch of `--prefetch` messages (`worker_prefetch_multiplier`
times the concurrency). Heartbeats, mingle and gossip are off, the result backend is disabled.
kombu keeps the queue as a Redis list (`LPUSH`/`BRPOP`) and the delivered-but-unacked
messages in a hash (`unacked`); Celery decodes the message (JSON) itself and the task
receives the order as its argument.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]

from . import redis_common
from .redis_common import Probe, Stopper, body_object

NAME = "redis_celery"
#: Called by the task (set in `run`).
_seen: list[Any] = [lambda: None]


def _app(url: str, queue: str, prefetch: int, concurrency: int) -> tuple[Celery, Any]:
    app = Celery("bench", broker=url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=max(1, prefetch // concurrency),
        worker_concurrency=concurrency,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="bench.handle")  # type: ignore[untyped-decorator]
    def handle(order: dict[str, Any]) -> None:
        _seen[0]()

    return app, handle


def fill(url: str, queue: str, count: int) -> None:
    app, handle = _app(url, queue, 1, 1)
    with app.producer_or_acquire() as producer:
        for n in range(count):
            handle.apply_async((body_object(n),), producer=producer)


def settled(client: redis.Redis, queue: str) -> bool:
    # kombu's unacked hash is shared by every queue of the database: the run has it alone.
    return int(client.hlen("unacked")) == 0 and int(client.llen(queue)) == 0


def run(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    concurrency = 1 if args.pool == "solo" else args.threads
    app, _ = _app(args.url, args.queue, args.prefetch, concurrency)
    _seen[0] = probe.seen
    # Celery's own warm shutdown, as on Ctrl-C.
    stopper.action = lambda: os.kill(os.getpid(), signal.SIGTERM)
    worker = app.Worker(
        pool_cls=args.pool,
        concurrency=concurrency,
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        quiet=True,
    )
    with contextlib.suppress(SystemExit):
        worker.start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", choices=("solo", "threads"), default="solo")
    parser.add_argument("--threads", type=int, default=8, help="threads of --pool threads")


if __name__ == "__main__":
    sys.exit(redis_common.main(sys.modules[__name__], add_arguments))
