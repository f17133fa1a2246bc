"""taskiq with taskiq-redis' `RedisStreamBroker` (a stream and a consumer group, XACK).

A taskiq `Receiver` in this process (what `taskiq worker` runs), one task counting calls,
`--prefetch` messages prefetched and at most `--prefetch` tasks at once; the broker reads
with `xread_count=--prefetch` (its default is 100) and acks each message on its own (XACK),
after the task returned (taskiq's default `when_saved`; no result backend). Its consumer
group is created from id 0 (`consumer_id="0"`; taskiq-redis' default `$` would skip what
was added before the worker started). taskiq decodes the message (JSON) itself and the task
receives the order as its argument.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import redis
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

from . import redis_common
from .redis_common import Probe, Stopper, body_object

NAME = "redis_taskiq"
GROUP = "taskiq"
#: Messages sent at a time when filling.
FILL_BATCH = 500
#: Called by the task (set in `run`).
_seen: list[Any] = [lambda: None]


def _broker(url: str, queue: str, prefetch: int) -> tuple[RedisStreamBroker, Any]:
    broker = RedisStreamBroker(
        url, queue_name=queue, consumer_group_name=GROUP, consumer_id="0", xread_count=prefetch
    )

    @broker.task(task_name="bench.handle")
    async def handle(order: dict[str, Any]) -> None:
        _seen[0]()

    return broker, handle


def fill(url: str, queue: str, count: int) -> None:
    async def go() -> None:
        broker, handle = _broker(url, queue, 1)
        await broker.startup()
        for first in range(0, count, FILL_BATCH):
            batch = range(first, min(first + FILL_BATCH, count))
            await asyncio.gather(*(handle.kiq(body_object(n)) for n in batch))
        await broker.shutdown()

    asyncio.run(go())


def settled(client: redis.Redis, queue: str) -> bool:
    pending: Any = client.xpending(queue, GROUP)
    return int(pending["pending"]) == 0


async def consume(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stopper.action = lambda: loop.call_soon_threadsafe(done.set)
    broker, _ = _broker(args.url, args.queue, args.prefetch)
    broker.is_worker_process = True
    _seen[0] = probe.seen
    receiver = Receiver(
        broker, max_async_tasks=args.prefetch, max_prefetch=args.prefetch, run_startup=False
    )
    await broker.startup()
    listening = asyncio.create_task(receiver.listen(done))
    try:
        await done.wait()
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await broker.shutdown()


def run(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    asyncio.run(consume(args, probe, stopper))


if __name__ == "__main__":
    sys.exit(redis_common.main(sys.modules[__name__]))
