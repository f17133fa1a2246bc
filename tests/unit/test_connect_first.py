"""`rabbitmq.connection.connect_first` leaves nothing behind when no URL answers."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from foxwork.backends.rabbitmq.config import RabbitMQConsumerConfig
from foxwork.backends.rabbitmq.connection import connect_first
from foxwork.errors import ConnectionLost


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_failed_connect_closes_its_connection_on_the_event_loop() -> None:
    # Given a URL where nothing listens
    url = f"amqp://guest:guest@127.0.0.1:{unused_port()}/"
    config = RabbitMQConsumerConfig(url=url, queue="q", connect_timeout=2)
    # When connecting fails, a few times (as a reconnect loop does)
    for _ in range(3):
        with pytest.raises(ConnectionLost, match="Connect call failed"):
            await connect_first([url], config, connection_name="t", failure="cannot connect: ")
    # Then no connection object is left for its finaliser to close: a collection in another
    # thread (where no event loop runs) finds none, so no close() coroutine is created there
    # and never awaited (a RuntimeWarning, which this suite turns into an error)
    await asyncio.to_thread(gc.collect)
