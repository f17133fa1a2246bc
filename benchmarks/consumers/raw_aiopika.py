"""Raw aio-pika: the floor. A `queue.consume` callback decodes the JSON body and acks.

aio-pika runs each delivery's callback in its own task (so up to `prefetch` at once), with
one `basic.ack` per message. No framework code at all: what any foxwork overhead is
measured against.
"""

from __future__ import annotations

import argparse
import json
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from ._common import Stop, main


async def start(args: argparse.Namespace) -> Stop:
    connection = await aio_pika.connect(args.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=args.prefetch)
    queue = await channel.declare_queue(args.queue, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        json.loads(message.body)
        await message.ack()

    await queue.consume(on_message)

    async def stop() -> None:
        await connection.close()

    return stop


if __name__ == "__main__":
    sys.exit(main("raw_aiopika", start))
