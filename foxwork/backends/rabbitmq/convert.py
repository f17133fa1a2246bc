"""AMQP deliveries and properties ↔ `Message` and `MessageProperties`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ... import wire
from ...message import Message, MessageProperties, Settler

__all__ = [
    "connection_user",
    "copyable_user_id",
    "encodable_headers",
    "from_amqp_properties",
    "to_amqp_properties",
    "to_message",
]

#: The user RabbitMQ (and aio-pika) log in as when a URL names none.
DEFAULT_USER = "guest"


def connection_user(url: str) -> str:
    """The user a connection to `url` logs in as."""
    user = urlsplit(url).username
    return unquote(user) if user else DEFAULT_USER


def copyable_user_id(user_id: str | None, user: str) -> str | None:
    """The `user_id` a copy published as `user` may carry: the original's when it names
    `user`, otherwise none. RabbitMQ refuses (PRECONDITION_FAILED, closing the channel) a
    publish whose `user_id` is not the connection's user, so a copy keeping a foreign one
    could never be published."""
    return user_id if user_id == user else None


#: Header value types pamqp encodes as they are: `encodable_headers` leaves them alone.
_ENCODABLE = frozenset({str, int, bool, float, Decimal, datetime, bytearray, type(None)})


def encodable_headers(value: Any) -> Any:
    """`value` with every `bytes` in it, at any depth, as `bytearray`.

    pamqp decodes a long string that is not UTF-8 as `bytes` but cannot encode `bytes`
    again; as a `bytearray` it goes out as an AMQP byte array with the same bytes.
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, Mapping):
        return _encodable_table(value)
    if isinstance(value, list):
        return [v if type(v) in _ENCODABLE else encodable_headers(v) for v in value]
    return value


def _encodable_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """`encodable_headers` of a table: a new dict, in which the values of the common types
    (strings, numbers) are looked at once, not converted."""
    return {k: v if type(v) in _ENCODABLE else encodable_headers(v) for k, v in table.items()}


def from_amqp_properties(props: Basic.Properties) -> MessageProperties:
    """pamqp properties → `MessageProperties`."""
    return MessageProperties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        priority=props.priority,
        expiration=props.expiration,
        message_type=props.message_type,
        user_id=props.user_id,
        app_id=props.app_id,
        cluster_id=props.cluster_id or None,  # pamqp decodes an absent one as ""
        reply_to=props.reply_to,
        correlation_id=props.correlation_id,
        message_id=props.message_id,
        timestamp=props.timestamp,
        headers=props.headers or {},
        delivery_mode=props.delivery_mode or 1,
    )


def to_amqp_properties(props: MessageProperties) -> Basic.Properties:
    """`MessageProperties` → pamqp properties.

    `cluster_id` is not sent: AMQP 0-9-1 deprecated it and RabbitMQ refuses a non-empty one.
    """
    return Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=_encodable_table(props.headers) if props.headers else None,
        delivery_mode=props.delivery_mode,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=props.expiration,
        message_id=props.message_id,
        timestamp=props.timestamp,
        message_type=props.message_type,
        user_id=props.user_id,
        app_id=props.app_id,
    )


def to_message(
    delivered: DeliveredMessage, queue: str, settler: Settler, max_body_size: int
) -> Message[Any]:
    """A delivery from `queue` → `Message` (the delivery rides along as `message.raw`)."""
    delivery: Any = delivered.delivery
    properties = from_amqp_properties(delivered.header.properties)
    count = properties.headers.get(wire.DELIVERY_COUNT, 0)
    message: Message[Any] = Message(
        delivered.body,
        settler=settler,
        properties=properties,
        queue=queue,
        routing_key=delivery.routing_key,
        exchange=delivery.exchange or "",
        redelivered=bool(delivery.redelivered),
        delivery_tag=delivery.delivery_tag,
        delivery_count=count if isinstance(count, int) else 0,
        max_body_size=max_body_size,
    )
    message.raw = delivered
    return message
