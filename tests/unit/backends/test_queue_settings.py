"""Per-queue settings (`QueueSettings`) and the topology mode: resolved against the
backend-wide values, and contradictions refused up front with the change to make."""

from __future__ import annotations

import pytest

from foxwork import ConfigurationError
from foxwork.backends import QueueSettings, QueueType, TopologyMode
from foxwork.backends.rabbitmq import RabbitMQConsumerConfig
from foxwork.backends.rabbitmq.config import ResolvedQueueSettings

URL = "amqp://guest:guest@127.0.0.1:5672/"
QUEUES = ["orders", "events", "legacy"]


def test_a_queue_without_settings_takes_every_backend_wide_value() -> None:
    # Given backend-wide settings and no per-queue ones
    config = RabbitMQConsumerConfig(
        url=URL,
        queue=QUEUES,
        queue_type="quorum",
        exchange="shop",
        exchange_type="direct",
        binding_keys=["a", "b"],
        delivery_limit=3,
    )

    # When / Then each queue resolves to them, the default topology mode included
    assert config.settings_for("orders") == ResolvedQueueSettings(
        queue_type=QueueType.QUORUM,
        exchange="shop",
        exchange_type="direct",
        binding_keys=("a", "b"),
        delivery_limit=3,
        topology=TopologyMode.DECLARE,
    )


def test_each_queue_overrides_only_what_its_settings_give() -> None:
    # Given three queues: a quorum one, one bound to a topic exchange, a passive one
    config = RabbitMQConsumerConfig(
        url=URL,
        queue=QUEUES,
        delivery_limit=7,
        queue_settings={
            "orders": QueueSettings(queue_type=QueueType.QUORUM, delivery_limit=2),
            "events": QueueSettings(exchange="events", binding_keys=["order.*"]),
            "legacy": {"topology": "passive"},  # plain data is validated too
        },
    )

    # When resolved
    orders, events, legacy = (config.settings_for(q) for q in QUEUES)

    # Then each has its own values and the backend-wide ones elsewhere
    assert (orders.queue_type, orders.delivery_limit, orders.exchange) == (
        QueueType.QUORUM,
        2,
        None,
    )
    assert orders.binding_keys == ("orders",)
    assert (events.exchange, events.exchange_type, events.binding_keys) == (
        "events",
        "topic",
        ("order.*",),
    )
    assert (events.queue_type, events.delivery_limit) == (QueueType.CLASSIC, 7)
    assert legacy.passive and legacy.topology is TopologyMode.PASSIVE
    assert not orders.passive and not events.passive


def test_the_backend_wide_topology_mode_applies_unless_a_queue_says_otherwise() -> None:
    config = RabbitMQConsumerConfig(
        url=URL,
        queue=QUEUES,
        topology=TopologyMode.PASSIVE,
        queue_settings={"orders": QueueSettings(topology=TopologyMode.DECLARE)},
    )

    assert [config.settings_for(q).topology for q in QUEUES] == [
        TopologyMode.DECLARE,
        TopologyMode.PASSIVE,
        TopologyMode.PASSIVE,
    ]


def test_a_queue_outside_the_config_resolves_to_the_backend_wide_values() -> None:
    config = RabbitMQConsumerConfig(url=URL, queue="orders", queue_type="quorum")

    other = config.settings_for("other")

    assert other.queue_type is QueueType.QUORUM
    assert other.binding_keys == ("other",)


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        pytest.param(
            {"queue_settings": {"ordres": QueueSettings(queue_type=QueueType.QUORUM)}},
            ("'ordres'", "not among the queues", "['orders', 'events', 'legacy']", "fix the name"),
            id="settings of a queue not consumed",
        ),
        pytest.param(
            {"queue_settings": {"legacy": QueueSettings(topology="passive", exchange="shop")}},
            ("queue 'legacy' is passive", "exchange 'shop'", "topology='declare'"),
            id="passive queue with its own exchange",
        ),
        pytest.param(
            {"topology": "passive", "exchange": "shop", "binding_keys": ["k"]},
            ("queue 'orders' is passive", "neither declares nor binds it", "queue_settings"),
            id="backend-wide passive with a backend-wide exchange",
        ),
        pytest.param(
            {"queue_settings": {"events": QueueSettings(binding_keys=["order.*"])}},
            ("queue_settings['events']", "binding_keys need an exchange"),
            id="binding keys without an exchange",
        ),
        pytest.param(
            {"queue_settings": {"events": {"exchange_type": "fan-out"}}},
            ("'fan-out' is not an exchange type", "direct, topic, fanout or headers"),
            id="unknown exchange type",
        ),
        pytest.param(
            {"queue_settings": {"events": {"durable": False}}},
            ("durable=False", "Extra inputs are not permitted"),
            id="unknown setting",
        ),
        pytest.param(
            {"topology": "lazy"},
            ("topology='lazy'", "'declare' or 'passive'"),
            id="unknown topology mode",
        ),
    ],
)
def test_contradictory_settings_are_refused_with_what_to_change(
    fields: dict[str, object], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RabbitMQConsumerConfig(url=URL, queue=QUEUES, **fields)

    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message


def test_a_passive_queue_may_take_an_exchange_only_the_declared_queues_use() -> None:
    # Given the exchange set per queue, on the declared queue only
    config = RabbitMQConsumerConfig(
        url=URL,
        queue=QUEUES,
        topology="passive",
        queue_settings={
            "events": QueueSettings(topology="declare", exchange="shop", binding_keys=["order.*"]),
        },
    )

    # Then it is accepted: the passive queues have no exchange
    assert config.settings_for("events").exchange == "shop"
    assert config.settings_for("legacy").exchange is None


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"delivery_limit": 0}, "delivery_limit=0"),
        ({"queue_type": "stream"}, "queue_type='stream'"),
        ({"exchange_type": "nope"}, "'nope' is not an exchange type"),
    ],
)
def test_queue_settings_are_validated_on_their_own(
    fields: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match="invalid QueueSettings") as raised:
        QueueSettings(**fields)

    assert fragment in str(raised.value)


def test_queue_settings_are_frozen() -> None:
    settings = QueueSettings(queue_type=QueueType.QUORUM)

    with pytest.raises(ValueError, match="frozen"):
        settings.queue_type = QueueType.CLASSIC
