"""foxwork, bare: `RabbitMQBackend` → `WorkerPool` → worker, no middleware.

Prefetch and the pool's concurrency limit are both `--prefetch`. The worker reads
`message.payload`, which decodes the JSON body (the content type says JSON). With no
middleware the pool itself acks each message after the worker returns.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.backends import RabbitMQBackend
from foxwork.cli.heap import freeze_startup_heap

from ._common import Stop, main


class DecodeWorker(Worker[Any]):
    """The trivial work: decode the JSON body."""

    async def process(self, message: Message[Any]) -> None:
        message.payload  # noqa: B018  (decoding is the work)


async def start(args: argparse.Namespace) -> Stop:
    backend = RabbitMQBackend(url=args.url, queue=args.queue)
    pool = WorkerPool(
        workers=[DecodeWorker()],
        # Bare: no layer at all (without `middleware=` a pool gets the standard chain).
        middleware=[],
        concurrency_limit=args.prefetch,
        prefetch=args.prefetch,
        queues=[args.queue],
    )
    await pool.start(backend)
    freeze_startup_heap()  # as `foxwork run` does once its pool has started

    async def stop() -> None:
        await pool.shutdown(timeout=10)
        await backend.close()

    return stop


if __name__ == "__main__":
    sys.exit(main("foxwork_bare", start))
