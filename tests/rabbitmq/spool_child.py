"""A producer that publishes into its spool until it is killed (for tests/rabbitmq/test_spool.py).

    python -m tests.rabbitmq.spool_child DIR URL QUEUE

It connects with a spool to URL (a port nobody listens on: every message is spooled) and
publishes numbered messages to QUEUE, 20 at a time concurrently (so appends share fsyncs),
printing each message id once its publish() returned, until it is killed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from foxwork import Publisher, SpoolConfig

#: Publishes awaited at once.
CONCURRENCY = 20


async def main(directory: str, url: str, queue: str) -> None:
    publisher = await Publisher.connect(url, spool=SpoolConfig(directory=directory))
    numbers = itertools.count()

    async def one(number: int) -> None:
        receipt = await publisher.publish(
            {"n": number}, routing_key=queue, message_id=f"child-{number}"
        )
        assert receipt.spooled
        print(receipt, flush=True)

    print("ready", flush=True)
    while True:
        await asyncio.gather(*(one(next(numbers)) for _ in range(CONCURRENCY)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
