"""Dramatiq's Redis broker: a `dramatiq.Worker` in this process, one actor counting calls.

Dramatiq as it comes (its default middleware), with `--threads` worker threads (default 8,
Dramatiq's default) and a queue prefetch of `--prefetch` (Dramatiq's default would be twice
the threads). Dramatiq's Redis broker keeps a queue as a list of message ids plus a hash of
the messages (`dramatiq:Q`, `dramatiq:Q.msgs`) and fetches, acks and nacks with one Lua
script; each message is acked on its own, after the actor returned. Dramatiq decodes the
message (JSON) itself; the actor receives the order as its argument.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from . import redis_common
from .redis_common import Probe, Stopper, body_object

NAME = "redis_dramatiq"
#: Called by the actor (set in `run`).
_seen: list[Any] = [lambda: None]


def _broker(url: str) -> RedisBroker:
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    dramatiq.set_broker(broker)
    return broker


def _actor(queue: str) -> Any:
    @dramatiq.actor(queue_name=queue, max_retries=0)
    def handle(order: dict[str, Any]) -> None:
        _seen[0]()

    return handle


def fill(url: str, queue: str, count: int) -> None:
    broker = _broker(url)
    actor = _actor(queue)
    for n in range(count):
        actor.send(body_object(n))
    broker.close()


def settled(client: redis.Redis, queue: str) -> bool:
    return int(client.hlen(f"dramatiq:{queue}.msgs")) == 0


def run(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    broker = _broker(args.url)
    _actor(args.queue)
    _seen[0] = probe.seen
    stop = threading.Event()
    stopper.action = stop.set
    worker = dramatiq.Worker(broker, worker_threads=args.threads)
    worker.queue_prefetch = args.prefetch  # what $dramatiq_queue_prefetch sets
    worker.start()
    try:
        stop.wait()
    finally:
        worker.stop()
        broker.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=8, help="worker threads")


if __name__ == "__main__":
    sys.exit(redis_common.main(sys.modules[__name__], add_arguments))
