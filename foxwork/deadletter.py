"""What a dead letter says, read from the headers foxwork (or the broker) put on it: one
description for every backend and tool (`foxwork dlq`, `foxwork demo`); and what every
backend's replay shares (which dead letters it chooses, what it drops, what it reports)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from . import wire
from .errors import ConfigurationError

__all__ = [
    "REPLAY_DROPPED_HEADERS",
    "REPLAY_IDS_KEPT",
    "DeadLetterInfo",
    "ReplayResult",
    "describe",
    "replay_choice",
]

#: Headers foxwork and the broker add to a dead letter (its diagnostics and traceback), and
#: the counts of its attempts and deliveries: a replayed copy drops them, it starts afresh
#: (a first attempt, no `x-retry-attempt`, no traceback of a failure it has not had).
REPLAY_DROPPED_HEADERS = frozenset(
    (
        wire.RETRY_ATTEMPT,
        wire.REDELIVERY_COUNT,
        wire.EXCEPTION_TRACEBACK,
        *wire.DEAD_LETTER_HEADERS,
        *wire.BROKER_HEADERS,
    )
)

#: Ids a `ReplayResult` keeps of the dead letters replayed, and of those that failed (the
#: first ones, in DLQ order): a replay's memory does not grow with the DLQ.
REPLAY_IDS_KEPT = 1000


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


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    """What a dead-letter queue's `replay()` did.

    A replay of a large DLQ does not keep every id: `replayed` and `failed` may hold only
    the first `REPLAY_IDS_KEPT` of each, and `replayed_count` and `failed_count` say how
    many there were.

    Attributes:
        replayed: ids replayed (or that would be, in a dry run), in DLQ order; the first
            `REPLAY_IDS_KEPT` when there were more.
        failed: ids whose copy was not taken: they stay in the DLQ; the first
            `REPLAY_IDS_KEPT` when there were more.
        skipped: how many of the dead letters there at the start were left alone (not
            chosen, beyond the limit, or not read).
        dry_run: nothing was changed.
        stopped: why the replay stopped before it was done ("" when it did not stop
            early); every dead letter not replayed is still in the DLQ.
        reasons: the reason of each id in `replayed` and `failed`.
        total_replayed: how many were replayed, when `replayed` does not hold them all
            (None: `len(replayed)`); read `replayed_count`.
        total_failed: likewise for `failed`; read `failed_count`.
    """

    replayed: list[str]
    failed: list[str]
    skipped: int
    dry_run: bool
    stopped: str = ""
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)
    total_replayed: int | None = None
    total_failed: int | None = None

    @property
    def replayed_count(self) -> int:
        """How many dead letters were replayed (or would be, in a dry run)."""
        return len(self.replayed) if self.total_replayed is None else self.total_replayed

    @property
    def failed_count(self) -> int:
        """How many dead letters were not replayed: they stay in the DLQ."""
        return len(self.failed) if self.total_failed is None else self.total_failed


def replay_choice(
    *,
    ids: Collection[str] | None,
    reason_match: str | None,
    limit: int | None,
    rate: float | None,
) -> Callable[[DeadLetterInfo], bool]:
    """Which dead letters a replay chooses: those with one of `ids` (default: any) whose
    reason matches `reason_match` (default: any).

    Raises:
        ConfigurationError: `reason_match` is not a regular expression, or `limit` or
            `rate` is not positive.
    """
    try:
        pattern = re.compile(reason_match) if reason_match else None
    except re.error as exc:
        raise ConfigurationError(
            f"reason_match={reason_match!r} is not a valid regex: {exc}"
        ) from exc
    if rate is not None and rate <= 0:
        raise ConfigurationError(f"rate={rate!r} must be a positive number per second")
    if limit is not None and limit < 1:
        raise ConfigurationError(f"limit={limit!r} must be at least 1")
    wanted = set(ids) if ids else None

    def chosen(letter: DeadLetterInfo) -> bool:
        return (wanted is None or letter.id in wanted) and (
            pattern is None or pattern.search(letter.reason) is not None
        )

    return chosen
