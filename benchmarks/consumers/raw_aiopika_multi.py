"""Raw aio-pika, hand-tuned: acks with `multiple=True`, one `basic.ack` per 100 messages.

The best client code written by hand: a `queue.consume` callback (one task per delivery, as
`raw_aiopika`) decodes the JSON body and counts the message as done; every `BATCH`-th
message done sends one `basic.ack` with `multiple=True` for the highest delivery tag done.

A multiple ack settles every delivery up to its tag, so it may only be sent for a tag when
every delivery below it is done too (the callbacks finish in any order). The consumer keeps
the highest tag below which all are done (`floor`) and the tags done above it; the ack goes
out for `floor`, never past a delivery still being processed. A partial batch is flushed:

- when the count of messages done reaches the run's N (`--expected`), at once;
- otherwise by a timer armed when a message is done and none is armed: after `FLUSH_S`
  it acks what is done up to the floor (a run that is not all in the queue, a consumer
  that stops early), so no delivery done waits much longer than that for its ack. One timer
  per `FLUSH_S`, not one per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from ._common import Stop, main

#: Messages per `basic.ack` (`multiple=True`).
BATCH = 100
#: Seconds after which what is done is acked even if the batch is not full.
FLUSH_S = 0.05


class MultipleAcker:
    """Which delivery tag a multiple ack may cover, and when to send it.

    `done(tag)` returns the tag to ack with `multiple=True` now, or None. Pure bookkeeping:
    the caller sends the ack.
    """

    def __init__(self, batch: int, expected: int) -> None:
        self.batch = batch
        self.expected = expected
        self.count = 0
        self.floor = 0  # every tag up to here is done
        self.above: set[int] = set()  # tags done above the floor
        self.acked = 0  # highest tag acked so far
        self.pending = 0  # messages done since the last ack

    def done(self, tag: int) -> int | None:
        self.count += 1
        self.pending += 1
        if tag == self.floor + 1:
            self.floor = tag
            while self.floor + 1 in self.above:
                self.floor += 1
                self.above.remove(self.floor)
        else:
            self.above.add(tag)
        if self.pending >= self.batch or self.count >= self.expected:
            return self.take()
        return None

    def take(self) -> int | None:
        """The tag to ack now for what is done up to the floor (None: nothing new)."""
        if self.floor <= self.acked:
            return None
        self.acked = self.floor
        self.pending = len(self.above)
        return self.floor


async def start(args: argparse.Namespace) -> Stop:
    connection = await aio_pika.connect(args.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=args.prefetch)
    queue = await channel.declare_queue(args.queue, passive=True)
    acker = MultipleAcker(BATCH, args.expected)
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None
    underlying = await channel.get_underlay_channel()
    flushes: set[asyncio.Task[None]] = set()

    async def ack(tag: int) -> None:
        await underlying.basic_ack(tag, multiple=True)

    def flush() -> None:
        nonlocal timer
        timer = None
        tag = acker.take()
        if tag is not None:
            task = loop.create_task(ack(tag))
            flushes.add(task)
            task.add_done_callback(flushes.discard)
        if acker.above:
            timer = loop.call_later(FLUSH_S, flush)

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal timer
        json.loads(message.body)
        assert message.delivery_tag is not None
        tag = acker.done(message.delivery_tag)
        if tag is not None:
            await ack(tag)
        elif timer is None:
            timer = loop.call_later(FLUSH_S, flush)

    await queue.consume(on_message)

    async def stop() -> None:
        if timer is not None:
            timer.cancel()
        await connection.close()

    return stop


if __name__ == "__main__":
    sys.exit(main("raw_aiopika_multi", start))
