"""A worker process that dies on one message, for `test_crash_loop.py`.

Usage: python crash_worker.py URL QUEUE PROCESSED_FILE CONNECTION_NAME [QUEUE_TYPE [PREFETCH]]

Consumes QUEUE (a quorum queue with delivery limit 2 by default, or a classic queue) one
message at a time, with PREFETCH deliveries checked out (default 1). On the message whose
id or body is "poison" the process exits at once with status 1, as a segfault or an OOM
kill would (no settlement, no cleanup). Every other message's body is appended to
PROCESSED_FILE before the message is acked. SIGTERM stops the pool gracefully (exit status
0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

POISON = "poison"


def name_of(message: Message[Any]) -> str:
    """Messages are named by their body (copies foxwork publishes of a message without
    a message id carry its content id)."""
    return message.body.decode()


class CrashingWorker(Worker[Any]):
    def __init__(self, processed: Path) -> None:
        super().__init__("crashing")
        self.processed = processed

    async def process(self, message: Message[Any]) -> None:
        logging.getLogger("crash_worker").info(
            "processing %s (redelivered %s, delivery count %d)",
            name_of(message),
            message.redelivered,
            message.delivery_count,
        )
        if name_of(message) == POISON:
            os._exit(1)
        with self.processed.open("a") as record:
            record.write(f"{name_of(message)}\n")


async def main(
    url: str, queue: str, processed: Path, connection_name: str, queue_type: str, prefetch: int
) -> None:
    backend = RabbitMQBackend(
        url=url,
        queue=queue,
        queue_type=queue_type,
        delivery_limit=2,
        connection_name=connection_name,
    )
    pool = WorkerPool(
        workers=[CrashingWorker(processed)],
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=3, max_redeliveries=2, initial_backoff=0.05),
        ],
        concurrency_limit=1,
        prefetch=prefetch,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await pool.start(backend)
    await stop.wait()
    await pool.shutdown(timeout=5)
    await backend.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, queue, processed, connection_name = sys.argv[1:5]
    queue_type = sys.argv[5] if len(sys.argv) > 5 else "quorum"
    prefetch = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    asyncio.run(main(url, queue, Path(processed), connection_name, queue_type, prefetch))
