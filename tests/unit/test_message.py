"""Message: delivery attributes, lazy payload decoding, and settlement exactly once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from foxwork import Message, MessageProperties, PoisonMessage, SettleState
from foxwork.wire import DEFAULT_MAX_BODY_SIZE

from .helpers import RecordingSettler, compression_bomb, make_message


def test_message_properties_with_methods_return_changed_copies() -> None:
    # Given default properties
    original = MessageProperties()
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    # When every with_* builder is chained
    props = (
        original.with_content_type("application/json")
        .with_content_encoding("gzip")
        .with_priority(5)
        .with_expiration("60000")
        .with_message_type("order.created")
        .with_user_id("guest")
        .with_app_id("shop")
        .with_cluster_id("eu")
        .with_reply_to("replies")
        .with_correlation_id("corr-1")
        .with_message_id("msg-1")
        .with_timestamp(stamp)
        .with_headers({"x-tenant": "acme"})
        .with_header("x-trace", "t1")
        .with_delivery_mode(1)
    )

    # Then the copy has every value and the original is unchanged
    assert props == MessageProperties(
        content_type="application/json",
        content_encoding="gzip",
        priority=5,
        expiration="60000",
        message_type="order.created",
        user_id="guest",
        app_id="shop",
        cluster_id="eu",
        reply_to="replies",
        correlation_id="corr-1",
        message_id="msg-1",
        timestamp=stamp,
        headers={"x-tenant": "acme", "x-trace": "t1"},
        delivery_mode=1,
    )
    assert original == MessageProperties()


def test_a_first_delivery_is_attempt_one_and_a_retried_copy_counts_failed_attempts() -> None:
    # Given a first delivery and a copy that already failed twice
    first = make_message()
    third = make_message(headers={"x-retry-attempt": 2})

    # Then
    assert first.attempt == 1
    assert third.attempt == 3
    assert first.poison is None and third.poison is None


def test_a_message_without_a_message_id_is_known_by_its_content_on_every_delivery() -> None:
    # Given two deliveries of one id-less message, another id-less message, and a named one
    settler = RecordingSettler()
    first = Message(b'{"n": 1}', settler=settler, properties=MessageProperties())
    redelivered = Message(
        b'{"n": 1}',
        settler=settler,
        properties=MessageProperties(headers={"x-delivery-count": 1}),
        redelivered=True,
    )
    other = Message(b'{"n": 2}', settler=settler, properties=MessageProperties())

    # When
    given: Message[Any] = Message(
        b'{"n": 1}', settler=settler, properties=MessageProperties(message_id="order-42")
    )

    # Then the id-less deliveries share an id the broker's bookkeeping does not change
    assert first.id and first.id == redelivered.id
    assert other.id != first.id
    assert given.id == "order-42"


def test_routing_key_defaults_to_the_queue_and_exchange_to_the_default_exchange() -> None:
    # Given / When
    message = make_message(queue="orders")

    # Then
    assert message.routing_key == "orders"
    assert message.exchange == ""
    assert message.redelivered is False


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"sku": "A-1"}', "application/json", {"sku": "A-1"}),
        ("héllo".encode(), "text/plain; charset=utf-8", "héllo"),
        (b"\x00\x01", None, b"\x00\x01"),
    ],
)
def test_payload_is_decoded_by_content_type(
    body: bytes, content_type: str | None, expected: object
) -> None:
    # Given
    message = make_message(body, content_type=content_type)

    # Then
    assert message.payload == expected


def test_an_undecodable_payload_raises_poison_message_when_read() -> None:
    # Given a JSON message whose body is not JSON
    message = make_message(b"{not json")

    # When / Then
    with pytest.raises(PoisonMessage, match="not valid JSON"):
        _ = message.payload


@pytest.mark.parametrize("raw", ["abc", -5, 10**12, "²", 1.5, True])
def test_a_nonsense_retry_attempt_header_marks_the_message_as_poison(raw: object) -> None:
    # Given / When
    message = make_message(headers={"x-retry-attempt": raw})

    # Then it is poison, named after the header, and does not crash the delivery
    assert message.poison is not None
    assert "x-retry-attempt" in message.poison
    assert message.attempt == 1


def test_a_body_over_max_body_size_marks_the_message_as_poison_naming_the_limit() -> None:
    # Given / When
    message = make_message(b"x" * 11, max_body_size=10)

    # Then
    assert message.poison is not None
    assert "max_body_size of 10 bytes" in message.poison
    assert make_message(b"x" * 10, max_body_size=10).poison is None
    assert DEFAULT_MAX_BODY_SIZE == 8 * 1024 * 1024


def test_a_compressed_body_inflating_past_max_body_size_is_poison_when_read() -> None:
    # Given a 50 KB gzip body that inflates to 50 MiB, under a 1 MB limit
    bomb = compression_bomb("gzip", 50)
    properties = MessageProperties(content_type="application/json", content_encoding="gzip")
    message: Message[Any] = Message(
        bomb, settler=RecordingSettler(), properties=properties, max_body_size=1_000_000
    )
    assert message.poison is None  # the body as received is within the limit

    # When / Then its payload is refused, naming the limit
    with pytest.raises(PoisonMessage, match="max_body_size of 1000000 bytes"):
        _ = message.payload


async def test_ack_settles_the_message_once() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)
    assert not message.settled and message.state is SettleState.PENDING

    # When
    await message.ack()

    # Then
    assert message.settled and message.state is SettleState.ACKED
    assert settler.names == ["ack"]


async def test_a_second_ack_is_a_logged_no_op_and_never_reaches_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an acked message
    settler = RecordingSettler()
    message = make_message(settler=settler)
    await message.ack()

    # When it is acked again, nacked, rejected, retried and dead-lettered
    with caplog.at_level(logging.WARNING, logger="foxwork.message"):
        await message.ack()
        await message.nack(requeue=True)
        await message.reject()
        retried = await message.retry(1.0)
        dead = await message.dead_letter("late")

    # Then the backend saw exactly one settlement, and each extra call was logged
    assert settler.names == ["ack"]
    assert message.state is SettleState.ACKED
    assert (retried, dead) == (False, False)
    warnings = [r for r in caplog.records if "already settled" in r.getMessage()]
    assert len(warnings) == 5
    assert all(r.levelno == logging.WARNING for r in warnings)


@pytest.mark.parametrize(
    ("requeue", "state"), [(True, SettleState.REQUEUED), (False, SettleState.REJECTED)]
)
async def test_nack_settles_as_requeued_or_rejected(requeue: bool, state: SettleState) -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    await message.nack(requeue=requeue)

    # Then
    assert message.state is state
    assert settler.calls == [("nack", requeue)]


async def test_reject_is_a_nack_without_requeue() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    await message.reject()

    # Then
    assert message.state is SettleState.REJECTED
    assert settler.calls == [("nack", False)]


async def test_retry_publishes_the_copy_before_acking_the_original() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    confirmed = await message.retry(2.5)

    # Then
    assert confirmed is True
    assert settler.calls == [("publish_retry", 2.5), ("ack", None)]
    assert message.state is SettleState.RETRIED


async def test_dead_letter_publishes_diagnostic_headers_before_acking_the_original() -> None:
    # Given a message on its second attempt with a header of its own
    settler = RecordingSettler()
    message = make_message(settler=settler, headers={"x-retry-attempt": 1, "x-tenant": "acme"})

    # When
    confirmed = await message.dead_letter(ValueError("bad sku"))

    # Then
    assert confirmed is True
    assert settler.names == ["publish_dead_letter", "ack"]
    headers = settler.calls[0][1]
    assert headers["x-failure-reason"] == "bad sku"
    assert headers["x-exception-type"] == "builtins.ValueError"
    assert headers["x-final-attempt"] == 2
    assert headers["x-tenant"] == "acme"
    assert message.state is SettleState.DEAD_LETTERED


@pytest.mark.parametrize("action", ["retry", "dead_letter"])
async def test_an_unconfirmed_copy_sends_the_original_back_to_its_queue(action: str) -> None:
    # Given a broker that does not confirm copies
    settler = RecordingSettler(confirm=False)
    message = make_message(settler=settler)

    # When
    if action == "retry":
        confirmed = await message.retry(1.0)
    else:
        confirmed = await message.dead_letter("boom")

    # Then the original is requeued, never acked: nothing is lost
    assert confirmed is False
    assert settler.calls == [("nack", True)]
    assert message.state is SettleState.REQUEUED


def test_repr_names_the_id_queue_attempt_and_state() -> None:
    # Given
    message = make_message(queue="orders", headers={"x-retry-attempt": 1})

    # Then
    text = repr(message)
    assert message.id in text
    assert "'orders'" in text and "attempt=2" in text and "pending" in text
