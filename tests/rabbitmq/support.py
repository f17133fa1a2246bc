"""Helpers of the real-broker and contract suites.

- `RabbitProbe`: a separate AMQP connection that looks at (and tampers with) the broker
  behind the backend's back: ready counts through a passive `queue.declare`, messages
  through `basic.get`, deletions.
- `Received`, `Recorder`, `fail_while` (tests/support/recording.py) and `wait_until`
  (tests/support/waiting.py), shared with every suite, are importable from here too.
- `dead_letter`, `put_dead_letters`: dead letters as foxwork writes them, put straight into
  a DLQ (`Queues`, the `queues` fixture: a work queue and its DLQ, declared plain);
  `max_message_size`: make the broker refuse large messages for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp import body as amqp_body
from pamqp import commands, frame
from pamqp import header as amqp_header
from pamqp.exceptions import UnmarshalingException
from yarl import URL

from foxwork import MessageProperties, wire
from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.harness.rabbitmq import RabbitMQNode
from tests.support.recording import Behaviour, Delivery, Received, Recorder, fail_while
from tests.support.waiting import DEFAULT_WAIT, wait_until

__all__ = [
    "SMALL_MAX_MESSAGE_SIZE",
    "Behaviour",
    "Delivery",
    "RabbitProbe",
    "Received",
    "Recorder",
    "dead_letter",
    "delete_topology",
    "fail_while",
    "max_message_size",
    "publish_without_message_id",
    "put_dead_letters",
    "wait_until",
]

# -- reading queues ----------------------------------------------------------------------


def _received(message: AbstractIncomingMessage) -> Received:
    # Mapped field by field from aio-pika's view, independently of foxwork's own converter.
    properties = MessageProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        priority=message.priority,
        message_type=message.type,
        user_id=message.user_id,
        app_id=message.app_id,
        reply_to=message.reply_to,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        headers=dict(message.headers or {}),
        delivery_mode=int(message.delivery_mode or 1),
    )
    return Received(
        body=message.body,
        properties=properties,
        routing_key=message.routing_key,
        exchange=message.exchange,
        redelivered=bool(message.redelivered),
    )


@dataclasses.dataclass(frozen=True)
class Queues:
    """A work queue (declared by someone else, no pool consuming it) and its DLQ: the
    `queues` fixture."""

    url: str
    queue: str
    dlq: str


class RabbitProbe:
    """A separate connection for inspecting queues and breaking things under a backend.

    Every operation uses a fresh channel: a passive declare of a missing queue, or any
    other error, closes only that channel.
    """

    def __init__(self, url: str, *, connection_name: str) -> None:
        self._url = url
        self._name = connection_name
        self._connection: AbstractConnection | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect(
            self._url,
            timeout=10,
            client_properties={"connection_name": f"probe {self._name}"},
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel for one operation, closed afterwards."""
        assert self._connection is not None, "call connect() first"
        channel = await self._connection.channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    async def ready(self, queue: str) -> int | None:
        """Messages ready in `queue` (not the unacked ones), or None when it does not exist."""
        try:
            async with self.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def exists(self, queue: str) -> bool:
        return await self.ready(queue) is not None

    async def wait_for_ready(
        self, queue: str, count: int, *, timeout: float = DEFAULT_WAIT
    ) -> None:
        """Wait until `queue` holds exactly `count` ready messages."""

        async def reached() -> bool:
            return await self.ready(queue) == count

        await wait_until(reached, what=f"{queue!r} holds {count} ready message(s)", timeout=timeout)

    async def take(self, queue: str) -> list[Received]:
        """Remove and return every ready message of `queue`, in queue order."""
        taken: list[Received] = []
        async with self.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            while (message := await declared.get(no_ack=True, fail=False, timeout=5)) is not None:
                taken.append(_received(message))
        return taken

    async def peek(self, queue: str) -> list[Received]:
        """The ready messages of `queue`, left in place (fetched unacked, then the channel
        closes and the broker puts them back, marked redelivered)."""
        seen: list[Received] = []
        async with self.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            while (message := await declared.get(no_ack=False, fail=False, timeout=5)) is not None:
                seen.append(_received(message))
        return seen

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: str = "",
        **properties: Any,
    ) -> None:
        """Publish as a foreign application would (aio-pika, no foxwork)."""
        async with self.channel() as channel:
            target = (
                channel.default_exchange
                if not exchange
                else await channel.get_exchange(exchange, ensure=False)
            )
            await target.publish(aio_pika.Message(body, **properties), routing_key=routing_key)

    async def declare_plain_queue(self, queue: str, **arguments: Any) -> None:
        """A durable queue declared by someone other than foxwork (with these arguments)."""
        async with self.channel() as channel:
            await channel.declare_queue(queue, durable=True, arguments=arguments or None)

    async def delete_queues(self, *names: str) -> None:
        async with self.channel() as channel:
            for name in names:
                await channel.queue_delete(name)

    async def delete_exchanges(self, *names: str) -> None:
        async with self.channel() as channel:
            for name in names:
                await channel.exchange_delete(name)


async def delete_topology(probe: RabbitProbe, backend: RabbitMQBackend) -> None:
    """Delete every queue and exchange `backend` may have declared (best effort)."""
    config = backend.config
    queues: list[str] = []
    exchanges: list[str] = [config.exchange] if config.exchange else []
    # The retry tiers the backend declared: read from its topology, the only record of them.
    tiers: Iterable[tuple[str, int]] = list(backend.topology._tiers)
    for queue in config.queues:
        names = config.names(queue)
        queues += [queue, names.dead_letter_queue]
        queues += [names.retry_queue(ms) for q, ms in tiers if q == queue]
        exchanges.append(names.retry_exchange)
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await probe.delete_queues(*queues)
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await probe.delete_exchanges(*exchanges)


async def publish_without_message_id(
    url: str,
    routing_key: str,
    body: bytes,
    *,
    content_type: str | None = None,
    connection_name: str = "foxwork tests",
) -> None:
    """Publish (confirmed) a message with no `message_id`, as many non-Python clients do.

    aiormq gives every message it publishes a `message_id`, so this speaks AMQP itself:
    handshake, one channel in confirm mode, one publish to the default exchange.
    """
    target = URL(url)
    assert target.host is not None and target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port)
    buffer = b""

    async def receive(expected: type) -> Any:
        nonlocal buffer
        while True:
            if len(buffer) >= 7:
                try:
                    consumed, _, value = frame.unmarshal(buffer)
                except UnmarshalingException:
                    pass  # an incomplete frame: read more
                else:
                    buffer = buffer[consumed:]
                    assert isinstance(value, expected), f"expected {expected}, got {value!r}"
                    return value
            chunk = await reader.read(65536)
            assert chunk, "the broker closed the connection"
            buffer += chunk

    def send(value: Any, channel: int = 0) -> None:
        writer.write(frame.marshal(value, channel))

    try:
        async with asyncio.timeout(10):
            writer.write(amqp_header.ProtocolHeader().marshal())
            await receive(commands.Connection.Start)
            credentials = f"\0{target.user or 'guest'}\0{target.password or 'guest'}"
            send(
                commands.Connection.StartOk(
                    client_properties={"connection_name": connection_name},
                    mechanism="PLAIN",
                    response=credentials,
                )
            )
            tune = await receive(commands.Connection.Tune)
            send(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
            send(commands.Connection.Open(virtual_host=target.path[1:] or "/"))
            await receive(commands.Connection.OpenOk)
            send(commands.Channel.Open(), 1)
            await receive(commands.Channel.OpenOk)
            send(commands.Confirm.Select(), 1)
            await receive(commands.Confirm.SelectOk)
            properties = commands.Basic.Properties(content_type=content_type, delivery_mode=2)
            send(commands.Basic.Publish(routing_key=routing_key, mandatory=True), 1)
            send(amqp_header.ContentHeader(0, len(body), properties), 1)
            send(amqp_body.ContentBody(body), 1)
            await receive(commands.Basic.Ack)
            send(
                commands.Connection.Close(
                    reply_code=200, reply_text="done", class_id=0, method_id=0
                )
            )
            await receive(commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()


# -- the recording worker ----------------------------------------------------------------


# -- dead letters ------------------------------------------------------------------------

#: The broker's largest message, in bytes, while a test needs it to refuse a big copy.
SMALL_MAX_MESSAGE_SIZE = 16 * 1024


def dead_letter(
    queue: str, message_id: str, *, body: bytes | None = None, **properties: Any
) -> aio_pika.Message:
    """A dead letter as foxwork writes it, of a message that failed in `queue`."""
    headers: dict[str, Any] = {
        wire.ORIGINAL_QUEUE: queue,
        wire.ORIGINAL_ROUTING_KEY: queue,
        wire.ORIGINAL_EXCHANGE: "",
        wire.FAILURE_REASON: f"could not price {message_id}",
        wire.EXCEPTION_TYPE: "shop.PricingError",
        wire.FINAL_ATTEMPT: 3,
        wire.FAILED_AT: "2024-05-01T12:00:00+00:00",
    }
    return aio_pika.Message(
        json.dumps({"order": message_id}).encode() if body is None else body,
        message_id=message_id,
        content_type="application/json",
        headers=headers,
        **properties,
    )


async def put_dead_letters(url: str, dlq: str, *letters: aio_pika.Message) -> None:
    """Publish `letters` into `dlq` in this order, each confirmed, as the user of `url`."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for letter in letters:
            await channel.default_exchange.publish(letter, routing_key=dlq, mandatory=True)


@contextlib.contextmanager
def max_message_size(node: RabbitMQNode, size: int) -> Iterator[None]:
    """The broker refuses messages larger than `size` bytes on channels opened meanwhile
    (closing the channel: PRECONDITION_FAILED)."""
    before = node.ctl("eval", "application:get_env(rabbit, max_message_size).").strip()
    node.ctl("eval", f"application:set_env(rabbit, max_message_size, {size}).")
    try:
        yield
    finally:
        if before.startswith("{ok,"):
            node.ctl("eval", f"application:set_env(rabbit, max_message_size, {before[4:-1]}).")
        else:
            node.ctl("eval", "application:unset_env(rabbit, max_message_size).")
