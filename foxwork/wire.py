"""The wire format on RabbitMQ: names, header keys and conversions.

Other tools read these names, so they live here and nowhere else. For a queue `Q`:

- `Q`                   the main queue (classic or quorum, durable)
- `Q-retry_exchange`    direct exchange that failed messages are published to
- `Q-retry-<ms>ms`      one retry queue per delay tier, with a queue-level TTL of <ms>;
                        expired messages are dead-lettered back to `Q` through the default
                        exchange. A queue per delay means a short delay never waits behind
                        a long one (per-message TTL only expires at the head of a queue).
- `Q-dlq`               dead letters, durable
"""

from __future__ import annotations

import functools
import math
import traceback
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from ._redact import redact
from .errors import PoisonMessage

#: Header on every retried copy: how many attempts have failed so far.
RETRY_ATTEMPT = "x-retry-attempt"
#: Classic queues: how often a message came back redelivered without being settled (its
#: worker process died, or lost its connection, with it checked out). Set by
#: `RetryMiddleware` on a confirmed copy, so the count survives a restart of the process.
REDELIVERY_COUNT = "x-redelivery-count"
#: Quorum queues: how often the broker delivered the message before (set on redelivery).
DELIVERY_COUNT = "x-delivery-count"
#: The broker's dead-letter history of a message: a list of tables (queue, reason, count,
#: time, exchange, routing-keys), the latest death first.
DEATH_HISTORY = "x-death"
#: Headers the broker adds when it dead-letters a message.
DEATH_HEADERS = (
    DEATH_HISTORY,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)
#: Headers the broker sets, not a publisher: its count of deliveries and its dead-letter
#: history. A retried copy drops them (its history is in `x-retry-attempt`; a stale
#: `x-delivery-count` would count deliveries the copy never had); a dead letter keeps them.
BROKER_HEADERS = (DELIVERY_COUNT, *DEATH_HEADERS)
#: Routing key the original delivery carried.
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
#: Exchange the original delivery came through; "" for the default exchange.
ORIGINAL_EXCHANGE = "x-original-exchange"
#: Queue the message was consumed from.
ORIGINAL_QUEUE = "x-original-queue"
#: Why the message was dead-lettered, cut to `MAX_FAILURE_REASON` characters.
FAILURE_REASON = "x-failure-reason"
#: Qualified class name (`module.ClassName`) of the exception that ended the message.
EXCEPTION_TYPE = "x-exception-type"
#: The attempt number that failed last.
FINAL_ATTEMPT = "x-final-attempt"
#: When the message was dead-lettered, ISO 8601 in UTC.
FAILED_AT = "x-failed-at"
#: The traceback of the exception that ended the message (chained exceptions included),
#: URLs redacted, cut to its last `MAX_EXCEPTION_TRACEBACK` bytes (the innermost frames and
#: the exception itself). Absent when the message was dead-lettered for a reason that is no
#: raised exception. Set in addition to `DEAD_LETTER_HEADERS`.
EXCEPTION_TRACEBACK = "x-exception-traceback"

#: The headers foxwork sets on a dead letter, in the order DESIGN.md lists them.
DEAD_LETTER_HEADERS = (
    ORIGINAL_ROUTING_KEY,
    ORIGINAL_EXCHANGE,
    ORIGINAL_QUEUE,
    FAILURE_REASON,
    EXCEPTION_TYPE,
    FINAL_ATTEMPT,
    FAILED_AT,
)

#: Longest `x-failure-reason`, in characters.
MAX_FAILURE_REASON = 1024
#: Longest `x-exception-traceback`, in bytes of UTF-8 (4 KiB).
MAX_EXCEPTION_TRACEBACK = 4096
#: Bodies larger than this are dead-lettered unread (bytes; 8 MiB).
DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
#: Largest `x-retry-attempt` accepted; larger values are poison (no real message fails so often).
MAX_RETRY_ATTEMPT = 1_000_000
#: The longest retry delay, in seconds (about 48.6 days); a longer one is cut to it. RabbitMQ
#: refuses a TTL over 2**32 - 1 ms (about 49.7 days): this is the largest delay tier whose
#: retry queue TTL, and expiry (10 minutes later), stay under that.
MAX_RETRY_DELAY = 4_200_000.0


def retry_exchange_name(queue: str) -> str:
    """Name of the exchange that failed messages of `queue` are published to."""
    return f"{queue}-retry_exchange"


def retry_queue_prefix(queue: str) -> str:
    """Every retry queue of `queue` starts with this."""
    return f"{queue}-retry"


def retry_queue_name(queue: str, delay_ms: int, *, prefix: str | None = None) -> str:
    """Name of the retry queue holding messages of `queue` for `delay_ms` milliseconds.

    Args:
        queue: the main queue.
        delay_ms: the delay tier (see `delay_tier_ms`).
        prefix: a configured name in place of `retry_queue_prefix(queue)`; the tier suffix
            is the same.
    """
    return f"{prefix or retry_queue_prefix(queue)}-{delay_ms}ms"


def dead_letter_queue_name(queue: str) -> str:
    """Name of the dead-letter queue of `queue`."""
    return f"{queue}-dlq"


def seconds_to_ms(seconds: float) -> int:
    """Seconds (the public unit) to whole milliseconds (the TTL unit on the wire); 0 for a
    negative or NaN number of seconds."""
    if not seconds > 0:  # also NaN, which compares false with everything
        return 0
    return round(seconds * 1000)


@functools.lru_cache(maxsize=1024)
def delay_tier_ms(seconds: float) -> int:
    """The retry tier for a delay: milliseconds rounded to two significant digits.

    Tiers bound how many retry queues exist (about 90 per decade of delays) while keeping
    every delay within 5 % of what was asked. Delays below 100 ms round to 10 ms steps;
    delays past `MAX_RETRY_DELAY` (infinity included) fall into its tier, and a NaN or
    negative delay into the shortest, so the tier is always a TTL RabbitMQ accepts.

    >>> delay_tier_ms(1.234), delay_tier_ms(37.4), delay_tier_ms(0.05)
    (1200, 37000, 50)
    """
    ms = seconds_to_ms(min(seconds, MAX_RETRY_DELAY))
    if ms < 100:
        return max(10, round(ms, -1))
    digits = math.floor(math.log10(ms)) - 1
    return int(round(ms, -digits))


def parse_retry_attempt(headers: Mapping[str, Any]) -> int:
    """How many attempts already failed, read from `x-retry-attempt` (0 when absent).

    Raises:
        PoisonMessage: the header is not a non-negative integer within `MAX_RETRY_ATTEMPT`.
    """
    raw = headers.get(RETRY_ATTEMPT)
    if raw is None:
        return 0
    value: int | None = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        text = text.strip()
        # isdecimal, not isdigit: "²" is a digit that int() refuses; and the length bound
        # keeps int() clear of its 4,300-digit limit (anything that long is poison anyway).
        if text.isdecimal() and len(text) <= 20:
            value = int(text)
    if value is None or value < 0 or value > MAX_RETRY_ATTEMPT:
        raise PoisonMessage(
            f"invalid {RETRY_ATTEMPT} header {raw!r}: expected an integer "
            f"between 0 and {MAX_RETRY_ATTEMPT}"
        )
    return value


def parse_redelivery_count(headers: Mapping[str, Any]) -> int:
    """Unsettled redeliveries counted so far, from `x-redelivery-count` (0 when absent or
    not a non-negative integer: a count that cannot be read starts over)."""
    raw = headers.get(REDELIVERY_COUNT)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        return 0
    return min(raw, MAX_RETRY_ATTEMPT)


def exception_type_name(exc: BaseException) -> str:
    """`module.ClassName` of an exception, as in `x-exception-type`."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def failure_reason(exc: BaseException | str) -> str:
    """The `x-failure-reason` for an exception: its message, cut to the bound."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    if len(text) > MAX_FAILURE_REASON:
        text = text[: MAX_FAILURE_REASON - 3] + "..."
    return text


def exception_traceback(exc: BaseException) -> str | None:
    """The `x-exception-traceback` for an exception, or None when it was never raised.

    At most `MAX_EXCEPTION_TRACEBACK` bytes: a longer traceback keeps its end (the
    innermost frames and the exception line), after a first line saying how much was cut.
    """
    if exc.__traceback__ is None:
        return None
    text = redact("".join(traceback.format_exception(exc)))
    data = text.encode("utf-8")
    if len(data) <= MAX_EXCEPTION_TRACEBACK:
        return text
    # The marker's own length depends on the count; 40 bytes hold it for any count.
    kept = data[len(data) - (MAX_EXCEPTION_TRACEBACK - 40) :].decode("utf-8", "ignore")
    cut = len(data) - len(kept.encode("utf-8"))
    return f"[... {cut} bytes cut ...]\n{kept}"


def dead_letter_headers(
    original_headers: Mapping[str, Any],
    *,
    routing_key: str,
    exchange: str,
    queue: str,
    reason: BaseException | str,
    final_attempt: int,
    failed_at: datetime | None = None,
) -> dict[str, Any]:
    """Headers of a dead letter: every original header plus the diagnostic ones."""
    headers = dict(original_headers)
    headers[ORIGINAL_ROUTING_KEY] = routing_key
    headers[ORIGINAL_EXCHANGE] = exchange
    headers[ORIGINAL_QUEUE] = queue
    headers[FAILURE_REASON] = failure_reason(reason)
    headers[EXCEPTION_TYPE] = "" if isinstance(reason, str) else exception_type_name(reason)
    headers[FINAL_ATTEMPT] = final_attempt
    headers[FAILED_AT] = (failed_at or datetime.now(UTC)).isoformat()
    trace = None if isinstance(reason, str) else exception_traceback(reason)
    if trace is None:
        # A copy of a dead letter (replayed, then dead-lettered again) must not keep the
        # traceback of its earlier failure.
        headers.pop(EXCEPTION_TRACEBACK, None)
    else:
        headers[EXCEPTION_TRACEBACK] = trace
    return headers


def retry_headers(
    original_headers: Mapping[str, Any],
    failed_attempts: int,
    *,
    routing_key: str | None = None,
    exchange: str | None = None,
    drop: Collection[str] = (),
) -> dict[str, Any]:
    """Headers of a retried copy: the originals (but those named in `drop`) with
    `x-retry-attempt` set, in a dict of its own.

    The copy travels through the retry exchange and comes back through the default
    exchange, so the routing key and exchange it was first published with ride along as
    `x-original-routing-key` and `x-original-exchange` (set once, on the first retry); the
    consumer restores them (see `original_route`).
    """
    if drop:
        headers = {k: v for k, v in original_headers.items() if k not in drop}
    else:
        headers = dict(original_headers)
    headers[RETRY_ATTEMPT] = failed_attempts
    if routing_key is not None and ORIGINAL_ROUTING_KEY not in headers:
        headers[ORIGINAL_ROUTING_KEY] = routing_key
        headers[ORIGINAL_EXCHANGE] = exchange or ""
    return headers


def original_route(headers: Mapping[str, Any]) -> tuple[str, str] | None:
    """(routing key, exchange) a retried copy was first published with, or None for a
    message that is not a retried copy."""
    if RETRY_ATTEMPT not in headers:
        return None
    routing_key = headers.get(ORIGINAL_ROUTING_KEY)
    if not isinstance(routing_key, str):
        return None
    exchange = headers.get(ORIGINAL_EXCHANGE)
    return routing_key, exchange if isinstance(exchange, str) else ""
