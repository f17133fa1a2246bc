"""How the RabbitMQ backend talks to aiormq: which errors mean the transport failed, their
mapping to foxwork's error tree, and settlements that give up when their channel closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import aiormq
from aiormq.abc import AbstractChannel as RawChannel

from ...errors import BackendError, ConnectionLost

__all__ = ["TRANSPORT_ERRORS", "mapped", "settle_on"]

#: What aio-pika and aiormq raise when the connection or a channel is gone.
TRANSPORT_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    RuntimeError,
)


@contextlib.asynccontextmanager
async def mapped(what: str) -> AsyncIterator[None]:
    """Map aio-pika/aiormq errors raised while doing `what` to foxwork's error tree."""
    try:
        yield
    except BackendError:
        raise
    except aiormq.exceptions.ChannelClosed as exc:
        raise BackendError(f"{what} failed: the broker closed the channel: {exc}") from exc
    except (*TRANSPORT_ERRORS, TimeoutError) as exc:
        raise ConnectionLost(f"{what} failed: {type(exc).__name__}: {exc}") from exc


async def settle_on(channel: RawChannel, settlement: Awaitable[None]) -> None:
    """Await an ack or nack of `channel`, but give up when the channel closes first.

    aiormq hands frames to the connection's writer through a bounded queue. When the
    connection dies, its writer stops before the channels are marked closed; a settlement
    made in that moment can wait for room in the full queue forever, and with it the pool's
    slot (SIGKILL of a node, or a TCP reset while the writer is busy). While the queue has
    room (the usual case) the settlement is awaited as it is, at no extra cost.

    `channel.closing` is an observer of its own from aiormq 7.2.4 on, so cancelling it
    afterwards leaves the channel alone; in older aiormq it is the channel's closing future
    and the cancel would mark a live channel closed (pyproject.toml admits no such version).
    """
    if not channel.connection.write_queue.full():
        await settlement
        return
    task = asyncio.ensure_future(settlement)
    closing = channel.closing
    try:
        await asyncio.wait((task, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        raise aiormq.exceptions.ChannelInvalidStateError(
            f"channel {channel} closed before the settlement was sent"
        )
    task.result()
