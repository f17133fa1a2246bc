"""What foxwork relies on in aiormq, checked on a real channel.

`settle_on` (backends/rabbitmq/_io.py) waits for `channel.closing` and cancels it when the
settlement went out first. That is only safe if `closing` is an observer of its own: if it
were the channel's closing future, the cancel would mark a live channel closed.
"""

from __future__ import annotations

import asyncio

import aio_pika


async def test_cancelling_a_channels_closing_observer_leaves_the_channel_usable(
    rabbitmq_url: str, queue_name: str
) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        raw = await channel.get_underlay_channel()
        # Given an observer of the channel's closure, cancelled as settle_on does
        observer = raw.closing
        observer.cancel()
        await asyncio.sleep(0)
        # Then the channel is still open and still works
        assert not raw.is_closed
        declared = await channel.declare_queue(queue_name, auto_delete=True)
        assert declared.name == queue_name
        # and a later observer still sees the real closure
        observer = raw.closing
        await channel.close()
        await asyncio.wait([observer], timeout=5)
        assert observer.done()
    finally:
        await connection.close()
