"""A worker process that dies on one message, for `test_crash_loop.py`.

Usage: python crash_worker.py URL QUEUE PROCESSED_FILE CONNECTION_NAME

Consumes the quorum queue QUEUE (delivery limit 2) one message at a time. On the message
whose id is "poison" the process exits at once with status 1, as a segfault or an OOM kill
would (no settlement, no cleanup). Every other message id is appended to PROCESSED_FILE
before the message is acked. SIGTERM stops the pool gracefully (exit status 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

POISON = "poison"


class CrashingWorker(Worker[Any]):
    def __init__(self, processed: Path) -> None:
        super().__init__("crashing")
        self.processed = processed

    async def process(self, message: Message[Any]) -> None:
        if message.id == POISON:
            os._exit(1)
        with self.processed.open("a") as record:
            record.write(f"{message.id}\n")


async def main(url: str, queue: str, processed: Path, connection_name: str) -> None:
    backend = RabbitMQBackend(
        url=url,
        queue=queue,
        queue_type="quorum",
        delivery_limit=2,
        connection_name=connection_name,
    )
    pool = WorkerPool(
        workers=[CrashingWorker(processed)],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=3)],
        concurrency_limit=1,
        prefetch=1,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await pool.start(backend)
    await stop.wait()
    await pool.shutdown(timeout=5)
    await backend.close()


if __name__ == "__main__":
    url, queue, processed, connection_name = sys.argv[1:5]
    asyncio.run(main(url, queue, Path(processed), connection_name))
