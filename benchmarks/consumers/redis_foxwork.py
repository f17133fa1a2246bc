"""foxwork on Redis Streams: `RedisStreamsBackend` → `WorkerPool` → a worker decoding JSON.

`--chain bare` (the default): no middleware, the pool acks each message after the worker
returns. `--chain full`: the production chain of the RabbitMQ suite (`foxwork_full`) on a
`ResilientBackend`, telemetry recorded and dropped. Prefetch and the pool's concurrency
limit are both `--prefetch`; `--batch-size` sets the backend's COUNT (default: the
backend's own default). The worker reads `message.payload`, which decodes the JSON body.
Once the pool has started, the start-up heap is frozen, as `foxwork run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import redis

from foxwork import Message, Worker, WorkerPool
from foxwork.backends import ResilientBackend
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.cli.heap import freeze_startup_heap

from . import redis_common, redis_raw
from .redis_common import Probe, Stopper

NAME = "redis_foxwork"

fill = redis_raw.fill


def settled(client: redis.Redis, queue: str) -> bool:
    return redis_raw.settled(client, queue)


class DecodeWorker(Worker[Any]):
    """The trivial work: decode the JSON body, count it."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self._seen = probe.seen

    async def process(self, message: Message[Any]) -> None:
        message.payload  # noqa: B018  (decoding is the work)
        self._seen()


async def consume(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stopper.action = lambda: loop.call_soon_threadsafe(done.set)
    settings: dict[str, Any] = {"url": args.url, "queue": args.queue}
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    backend: Any = RedisStreamsBackend(**settings)
    middleware: list[Any] = []
    providers: tuple[Any, ...] = ()
    if args.chain == "full":
        from .foxwork_full import full_chain, telemetry

        providers = telemetry()
        middleware = full_chain(*providers)
        backend = ResilientBackend(backend)
        await backend.connect()
    pool = WorkerPool(
        workers=[DecodeWorker(probe)],
        middleware=middleware,
        concurrency_limit=args.prefetch,
        prefetch=args.prefetch,
        queues=[args.queue],
    )
    await pool.start(backend)
    freeze_startup_heap()  # as `foxwork run` does once its pool has started
    try:
        await done.wait()
    finally:
        await pool.shutdown(timeout=10)
        await backend.close()
        for provider in providers:
            provider.shutdown()


def run(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(consume(args, probe, stopper))
    else:
        asyncio.run(consume(args, probe, stopper))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", choices=("bare", "full"), default="bare")
    parser.add_argument("--batch-size", type=int, help="the backend's batch_size (COUNT)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")


if __name__ == "__main__":
    sys.exit(redis_common.main(sys.modules[__name__], add_arguments))
