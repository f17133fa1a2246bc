"""Publish a batch of messages on a confirming aiormq channel in one write.

`aiormq.Channel.basic_publish` sends each message as its own write, under the channel's
lock, and waits for the writer before the next can go: one system call and several event
loop turns per message. A replay has hundreds of copies ready at once; here they are
marshalled together and handed to the writer as one frame sequence. Each message still
gets its own delivery tag and its own confirmation future, registered exactly as
`basic_publish` registers them, so the channel resolves them from the broker's
`basic.ack`, `basic.nack` and `basic.return` (mandatory) as usual, and rejects them when
the channel closes.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Sequence
from typing import Any

import aiormq
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["Outgoing", "publish_batch"]

#: (routing key, body, properties) of one message for the default exchange.
Outgoing = tuple[str, bytes, spec.Basic.Properties]


async def publish_batch(
    channel: aiormq.abc.AbstractChannel, messages: Sequence[Outgoing]
) -> list[asyncio.Future[Any]]:
    """Publish `messages`, in order, through the default exchange with `mandatory` set,
    in one write; returns each message's confirmation future, in the same order.

    A future resolves to the broker's `basic.ack` frame, or fails with
    `aiormq.exceptions.DeliveryError` (`basic.nack`), `PublishError` (returned: no queue
    by that name) or the channel's closing error. A message without a `message_id` gets
    a random one, as `basic_publish` gives it (returns are matched by message id).

    Raises:
        aiormq.exceptions.ChannelInvalidStateError: the channel is closed (nothing sent).
    """
    if not isinstance(channel, aiormq.Channel) or not channel.publisher_confirms:
        raise TypeError("publish_batch needs an aiormq.Channel with publisher confirms")
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    frames: list[Any] = []
    confirmations: list[asyncio.Future[Any]] = []
    async with channel.lock:
        first = channel.delivery_tag
        try:
            for routing_key, body, properties in messages:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                if not properties.message_id:
                    properties.message_id = uuid.uuid4().hex
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[properties.message_id] = tag
                confirmation.add_done_callback(
                    functools.partial(_forget, channel, properties.message_id, tag)
                )
                confirmations.append(confirmation)
                frames.append(spec.Basic.Publish(routing_key=routing_key, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(_split(body, channel.max_content_size))
            drain = channel.create_future()
            await channel.write_queue.put(
                aiormq.abc.ChannelFrame.marshall(
                    channel_number=channel.number, frames=frames, drain_future=drain
                )
            )
        except BaseException:
            # Nothing went out: give the delivery tags back, as `basic_publish` does.
            channel.delivery_tag = first
            for tag in range(first + 1, first + len(confirmations) + 1):
                channel.confirmations.pop(tag, None)
            for confirmation in confirmations:
                confirmation.cancel()
            raise
        await drain
    return confirmations


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: object) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        channel.message_id_delivery_tag.pop(message_id)


def _split(body: bytes, size: int) -> list[ContentBody]:
    return [ContentBody(body[at : at + size]) for at in range(0, len(body), size)]
