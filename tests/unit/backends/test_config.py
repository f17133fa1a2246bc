"""RabbitMQConsumerConfig: validation up front, and topology names taken from `foxwork.wire`."""

from __future__ import annotations

import pytest

from foxwork import wire
from foxwork.backends.rabbitmq import RabbitMQConsumerConfig

URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.mark.parametrize("queue", ["orders", "billing.refunds", "q-with-dashes"])
@pytest.mark.parametrize("delay_ms", [10, 1200, 37000, round(wire.MAX_RETRY_DELAY * 1000)])
def test_the_default_topology_names_are_the_wire_names(queue: str, delay_ms: int) -> None:
    # Given a config without name overrides
    names = RabbitMQConsumerConfig(url=URL, queue=queue).names(queue)

    # When / Then every name it declares is the one foxwork.wire gives
    assert names.queue == queue
    assert names.retry_exchange == wire.retry_exchange_name(queue)
    assert names.retry_queue_prefix == wire.retry_queue_prefix(queue)
    assert names.dead_letter_queue == wire.dead_letter_queue_name(queue)
    assert names.retry_queue(delay_ms) == wire.retry_queue_name(queue, delay_ms)


def test_overridden_names_keep_the_wire_tier_suffix() -> None:
    # Given a config that names one queue's retry topology itself
    config = RabbitMQConsumerConfig(
        url=URL,
        queue="orders",
        retry_exchange="orders.retry",
        retry_queue_prefix="orders.delay",
        dead_letter_queue="orders.dead",
    )

    # When
    names = config.names("orders")

    # Then the overrides are used as given, and a tier is named as wire names it
    assert (names.retry_exchange, names.dead_letter_queue) == ("orders.retry", "orders.dead")
    assert names.retry_queue(1200) == "orders.delay-1200ms"
    assert names.retry_queue(1200) == wire.retry_queue_name("orders", 1200, prefix="orders.delay")
