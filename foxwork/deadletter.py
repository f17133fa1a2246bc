"""What a dead letter says, read from the headers foxwork (or the broker) put on it: one
description for every backend and tool (`foxwork dlq`, `foxwork demo`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from . import wire

__all__ = ["DeadLetterInfo", "describe"]


@dataclasses.dataclass(frozen=True)
class DeadLetterInfo:
    """One message in a dead-letter queue.

    Attributes:
        id: the message id ("" when it has none).
        queue: the queue it failed in.
        routing_key: the routing key it was originally published with.
        exchange: the exchange it was originally published to ("" = default).
        reason: `x-failure-reason`, or the broker's reason from `x-death`.
        exception_type: `x-exception-type` ("" when the broker dead-lettered it).
        final_attempt: the attempt that failed last (0 when unknown).
        failed_at: when it was dead-lettered (ISO 8601), "" when unknown.
        source: "foxwork" (published with diagnostic headers) or "broker" (x-death).
        headers, body, properties: the message as stored.
    """

    id: str
    queue: str
    routing_key: str
    exchange: str
    reason: str
    exception_type: str
    final_attempt: int
    failed_at: str
    source: str
    headers: Mapping[str, Any]
    body: bytes
    properties: Mapping[str, Any]

    def summary(self) -> dict[str, Any]:
        """The fields `foxwork dlq list` shows, JSON-serialisable."""
        return {
            "id": self.id,
            "reason": self.reason,
            "exception_type": self.exception_type,
            "final_attempt": self.final_attempt,
            "failed_at": self.failed_at,
            "queue": self.queue,
            "routing_key": self.routing_key,
            "source": self.source,
        }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def describe(
    body: bytes,
    headers: Mapping[str, Any],
    *,
    message_id: str | None,
    queue: str,
    properties: Mapping[str, Any] | None = None,
) -> DeadLetterInfo:
    """What a dead letter says.

    Args:
        body: the message body as stored.
        headers: its headers: foxwork's diagnostic headers (`wire.DEAD_LETTER_HEADERS`),
            or the broker's `x-death` history for a message the broker dead-lettered.
        message_id: its `message_id`, if any.
        queue: the queue whose dead letters these are; stands in for the queue it failed
            in when the dead letter does not name it.
        properties: its other properties, as shown by `foxwork dlq show`.
    """
    headers = dict(headers)
    deaths = headers.get(wire.DEATH_HISTORY)
    death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    if wire.FAILURE_REASON in headers:
        source = "foxwork"
        queue = _text(headers.get(wire.ORIGINAL_QUEUE))
        routing_key = _text(headers.get(wire.ORIGINAL_ROUTING_KEY))
        exchange = _text(headers.get(wire.ORIGINAL_EXCHANGE))
        reason = _text(headers.get(wire.FAILURE_REASON))
        exception_type = _text(headers.get(wire.EXCEPTION_TYPE))
        final_attempt = _int(headers.get(wire.FINAL_ATTEMPT))
        failed_at = _text(headers.get(wire.FAILED_AT))
    else:
        source = "broker"
        queue = _text(death.get("queue")) or queue
        keys = death.get("routing-keys") or []
        routing_key = _text(keys[0]) if keys else queue
        exchange = _text(death.get("exchange"))
        why = _text(death.get("reason")) or "unknown"
        reason = f"dead-lettered by the broker: {why}"
        if why == "delivery_limit":
            reason += " (the message was delivered too often without being settled)"
        exception_type = ""
        final_attempt = _int(headers.get(wire.DELIVERY_COUNT)) or _int(death.get("count"))
        when = death.get("time")
        failed_at = when.isoformat() if isinstance(when, datetime) else _text(when)
    return DeadLetterInfo(
        id=message_id or "",
        queue=queue,
        routing_key=routing_key,
        exchange=exchange,
        reason=reason,
        exception_type=exception_type,
        final_attempt=final_attempt,
        failed_at=failed_at,
        source=source,
        headers=headers,
        body=body,
        properties=dict(properties or {}),
    )
