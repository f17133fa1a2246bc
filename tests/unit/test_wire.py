"""The wire format is fixed by DESIGN.md: other tools depend on these names."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foxwork import PoisonMessage, wire
from foxwork.backends.rabbitmq.topology import RETRY_QUEUE_EXPIRES_MARGIN_MS


@pytest.mark.parametrize(
    ("actual", "contract"),
    [
        (wire.retry_exchange_name("orders"), "orders-retry_exchange"),
        (wire.dead_letter_queue_name("orders"), "orders-dlq"),
        (wire.retry_queue_prefix("orders"), "orders-retry"),
        (wire.retry_queue_name("orders", 1200), "orders-retry-1200ms"),
        (wire.retry_queue_name("orders", 1200, prefix="legacy"), "legacy-1200ms"),
        (wire.RETRY_ATTEMPT, "x-retry-attempt"),
        (wire.ORIGINAL_ROUTING_KEY, "x-original-routing-key"),
        (wire.ORIGINAL_EXCHANGE, "x-original-exchange"),
        (wire.ORIGINAL_QUEUE, "x-original-queue"),
        (wire.FAILURE_REASON, "x-failure-reason"),
        (wire.EXCEPTION_TYPE, "x-exception-type"),
        (wire.FINAL_ATTEMPT, "x-final-attempt"),
        (wire.FAILED_AT, "x-failed-at"),
        (wire.MAX_FAILURE_REASON, 1024),
        (wire.DEFAULT_MAX_BODY_SIZE, 8 * 1024 * 1024),
    ],
)
def test_every_wire_name_matches_the_design_contract(actual: object, contract: object) -> None:
    assert actual == contract


def test_the_dead_letter_header_list_is_exactly_the_contract_in_its_order() -> None:
    assert wire.DEAD_LETTER_HEADERS == (
        "x-original-routing-key",
        "x-original-exchange",
        "x-original-queue",
        "x-failure-reason",
        "x-exception-type",
        "x-final-attempt",
        "x-failed-at",
    )


def test_the_brokers_dead_letter_history_is_read_from_x_death_and_dropped_with_its_kin() -> None:
    # RabbitMQ's name, not foxwork's: the DLQ tooling reads a broker-made dead letter from it
    assert wire.DEATH_HISTORY == "x-death"
    assert wire.DEATH_HISTORY in wire.DEATH_HEADERS
    assert wire.DEATH_HISTORY in wire.BROKER_HEADERS


@pytest.mark.parametrize("delay_ms", [10, 1200, 300_000])
def test_every_retry_queue_name_starts_with_the_retry_prefix(delay_ms: int) -> None:
    # Given / When
    name = wire.retry_queue_name("orders", delay_ms)

    # Then
    assert name.startswith(wire.retry_queue_prefix("orders"))
    assert name != wire.retry_exchange_name("orders")
    assert str(delay_ms) in name


def test_retry_queue_names_differ_per_queue_and_per_tier() -> None:
    names = {wire.retry_queue_name(q, ms) for q in ("a", "b") for ms in (10, 20)}
    assert len(names) == 4


@pytest.mark.parametrize(
    ("seconds", "tier_ms"),
    [
        (0, 10),
        (0.004, 10),
        (0.01, 10),
        (0.014, 10),
        (0.05, 50),
        (0.099, 100),
        (0.1, 100),
        (1.0, 1000),
        (1.234, 1200),
        (37.4, 37000),
        (300, 300_000),
    ],
)
def test_delays_fall_into_tiers_of_two_significant_digits(seconds: float, tier_ms: int) -> None:
    assert wire.delay_tier_ms(seconds) == tier_ms


def test_every_tier_is_within_five_percent_of_the_asked_delay() -> None:
    # Given delays from 0.1 s to about 45 minutes
    delays = [0.1 * 1.07**n for n in range(200)]

    # When
    tiers = {seconds: wire.delay_tier_ms(seconds) / 1000 for seconds in delays}

    # Then
    off = {s: t for s, t in tiers.items() if abs(t - s) > 0.05 * s}
    assert not off


#: RabbitMQ's limit on a TTL (`x-message-ttl`), in milliseconds.
RABBITMQ_MAX_TTL_MS = 2**32 - 1


def test_the_maximum_delay_is_a_tier_under_rabbitmqs_ttl_limit() -> None:
    # The retry queue of a tier has it as its TTL and expires a margin later: RabbitMQ
    # must accept both.
    max_ms = round(wire.MAX_RETRY_DELAY * 1000)
    assert wire.delay_tier_ms(wire.MAX_RETRY_DELAY) == max_ms
    assert max_ms + RETRY_QUEUE_EXPIRES_MARGIN_MS <= RABBITMQ_MAX_TTL_MS


@pytest.mark.parametrize("seconds", [4_199_000.0, 5e6, 1e12, 1e300, math.inf])
def test_a_delay_past_the_maximum_falls_into_the_maximum_tier(seconds: float) -> None:
    assert wire.delay_tier_ms(seconds) == round(wire.MAX_RETRY_DELAY * 1000)


@pytest.mark.parametrize("seconds", [math.nan, -math.inf, -1e300])
def test_a_delay_that_is_no_positive_number_falls_into_the_shortest_tier(seconds: float) -> None:
    assert wire.delay_tier_ms(seconds) == 10


def test_no_delay_gives_a_tier_past_rabbitmqs_ttl_limit() -> None:
    # Given delays spread over every magnitude a float holds
    delays = [sign * 10.0**exponent for exponent in range(-300, 309) for sign in (1, -1)]

    # When / Then every one has a tier the broker accepts as a TTL
    assert all(10 <= wire.delay_tier_ms(d) <= RABBITMQ_MAX_TTL_MS for d in delays)


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [(0, 0), (0.0004, 0), (0.0006, 1), (1.5, 1500), (-1, 0), (math.nan, 0), (-math.inf, 0)],
)
def test_seconds_convert_to_whole_milliseconds_never_negative(seconds: float, ms: int) -> None:
    assert wire.seconds_to_ms(seconds) == ms


@pytest.mark.parametrize(
    ("headers", "failed"),
    [
        ({}, 0),
        ({"x-retry-attempt": None}, 0),
        ({"x-retry-attempt": 0}, 0),
        ({"x-retry-attempt": 3}, 3),
        ({"x-retry-attempt": "4"}, 4),
        ({"x-retry-attempt": b"5"}, 5),
        ({"x-retry-attempt": " 6 "}, 6),
        ({"x-retry-attempt": wire.MAX_RETRY_ATTEMPT}, wire.MAX_RETRY_ATTEMPT),
    ],
)
def test_parse_retry_attempt_reads_failed_attempts(headers: dict[str, Any], failed: int) -> None:
    assert wire.parse_retry_attempt(headers) == failed


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        -5,
        "-5",
        10**12,
        wire.MAX_RETRY_ATTEMPT + 1,
        "1" * 5000,
        "²",
        "",
        "1.0",
        1.0,
        True,
        b"\xff",
        [1],
    ],
)
def test_parse_retry_attempt_refuses_anything_but_a_sane_non_negative_int(raw: object) -> None:
    with pytest.raises(PoisonMessage, match="invalid x-retry-attempt"):
        wire.parse_retry_attempt({"x-retry-attempt": raw})


class ShopError(Exception):
    pass


def test_exception_type_is_the_qualified_class_name() -> None:
    assert wire.exception_type_name(ShopError()) == f"{__name__}.ShopError"
    assert wire.exception_type_name(KeyError()) == "builtins.KeyError"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (ValueError("bad sku"), "bad sku"),
        (ValueError(), "ValueError"),
        ("plain text", "plain text"),
    ],
)
def test_failure_reason_is_the_exception_message(reason: Exception | str, expected: str) -> None:
    assert wire.failure_reason(reason) == expected


def test_failure_reason_is_cut_to_the_bound() -> None:
    # Given
    reason = wire.failure_reason(ValueError("x" * 5000))

    # Then
    assert len(reason) == wire.MAX_FAILURE_REASON
    assert reason.endswith("...")
    assert wire.failure_reason("y" * 1024) == "y" * 1024


def test_dead_letter_headers_keep_the_originals_and_add_every_diagnostic() -> None:
    # Given
    failed_at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

    # When
    headers = wire.dead_letter_headers(
        {"x-tenant": "acme", "x-retry-attempt": 2},
        routing_key="orders.created",
        exchange="",
        queue="orders",
        reason=ShopError("out of stock"),
        final_attempt=3,
        failed_at=failed_at,
    )

    # Then
    assert headers == {
        "x-tenant": "acme",
        "x-retry-attempt": 2,
        "x-original-routing-key": "orders.created",
        "x-original-exchange": "",
        "x-original-queue": "orders",
        "x-failure-reason": "out of stock",
        "x-exception-type": f"{__name__}.ShopError",
        "x-final-attempt": 3,
        "x-failed-at": "2024-05-01T12:30:00+00:00",
    }


def test_dead_letter_headers_stamp_the_current_utc_time_by_default() -> None:
    # When
    headers = wire.dead_letter_headers(
        {}, routing_key="q", exchange="", queue="q", reason="r", final_attempt=1
    )

    # Then
    failed_at = datetime.fromisoformat(headers["x-failed-at"])
    assert failed_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - failed_at) < timedelta(minutes=1)


def test_retry_headers_set_the_attempt_count_without_touching_the_original() -> None:
    # Given
    original = {"x-tenant": "acme", "x-retry-attempt": 1}

    # When
    headers = wire.retry_headers(original, 2)

    # Then
    assert headers == {"x-tenant": "acme", "x-retry-attempt": 2}
    assert original == {"x-tenant": "acme", "x-retry-attempt": 1}


def test_a_retried_copy_carries_its_first_route_and_a_consumer_restores_it() -> None:
    # Given a message published to exchange "events" with key "order.created", failed once
    headers = wire.retry_headers({}, 1, routing_key="order.created", exchange="events")
    # Then the copy names its first route, and a second retry keeps it unchanged
    assert wire.original_route(headers) == ("order.created", "events")
    again = wire.retry_headers(headers, 2, routing_key="Q", exchange="")
    assert wire.original_route(again) == ("order.created", "events")
    # and a first delivery has no original route
    assert wire.original_route({}) is None
