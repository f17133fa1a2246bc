"""AMQP deliveries and properties ↔ `Message` and `MessageProperties`."""

from __future__ import annotations

from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ...message import Message, MessageProperties, Settler

__all__ = ["from_amqp_properties", "to_amqp_properties", "to_message"]

#: Headers the broker adds when it dead-letters a message; a retried copy drops them (its
#: history is in `x-retry-attempt`), a dead letter keeps them.
DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


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
        headers=dict(props.headers) if props.headers else None,
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
    count = properties.headers.get("x-delivery-count", 0)
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
