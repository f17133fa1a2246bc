"""A consumer process that takes entries and never settles them, for the Redis fault tests.

Usage: python -m tests.redis.crash_worker URL QUEUE HELD_FILE CONSUMER CLAIM_IDLE PREFETCH

Consumes QUEUE as consumer CONSUMER of the group, with PREFETCH entries checked out and
claim time CLAIM_IDLE seconds (it keeps the entries it holds fresh at that pace, as every
live consumer does). Each entry's message id is appended to HELD_FILE when it arrives;
then the worker holds it forever, so the entries stay pending until the test SIGKILLs the
process (no settlement, no cleanup: as a segfault or an OOM kill).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.middleware import AckNackMiddleware
from tests.apps.files import append_line


class HoldingWorker(Worker[Any]):
    def __init__(self, held_file: str) -> None:
        super().__init__("holding")
        self.held_file = held_file
        self._never = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        append_line(self.held_file, message.id)
        await self._never.wait()


async def main(
    url: str, queue: str, held_file: str, consumer: str, claim_idle: float, prefetch: int
) -> None:
    backend = RedisStreamsBackend(
        url=url, queue=queue, consumer=consumer, claim_idle=claim_idle, block_ms=100
    )
    pool = WorkerPool(
        workers=[HoldingWorker(held_file)],
        middleware=[AckNackMiddleware()],
        concurrency_limit=prefetch,
        prefetch=prefetch,
        queues=[queue],
    )
    await pool.run(backend)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, queue, held_file, consumer, claim_idle, prefetch = sys.argv[1:7]
    asyncio.run(main(url, queue, held_file, consumer, float(claim_idle), int(prefetch)))
