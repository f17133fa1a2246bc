"""RabbitMQConsumerConfig: validation up front, and topology names taken from `foxwork.wire`."""

from __future__ import annotations

import pytest

from foxwork import ConfigurationError, wire
from foxwork.backends.rabbitmq import RabbitMQBackend, RabbitMQConsumerConfig

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


@pytest.mark.parametrize("prefetch_count", [200, 32])
def test_prefetch_count_is_refused_pointing_at_the_pools_prefetch(prefetch_count: int) -> None:
    # Given a setting that never reached the broker (the pool's prefetch always won)
    # When it is passed / Then the config refuses it up front, saying what to use instead
    with pytest.raises(ConfigurationError, match=r"WorkerPool\(prefetch=\.\.\.\)") as caught:
        RabbitMQConsumerConfig(url=URL, queue="orders", prefetch_count=prefetch_count)
    assert f"prefetch_count={prefetch_count}" in str(caught.value)
    assert "guest" not in str(caught.value)


def test_the_backend_refuses_prefetch_count_too() -> None:
    with pytest.raises(ConfigurationError, match=r"WorkerPool\(prefetch=\.\.\.\)"):
        RabbitMQBackend(url=URL, queue="orders", prefetch_count=200)
