"""Settings given in an AMQP URL's query (`?heartbeat=30`, `?name=...`) are used, or refused
with a message when the configuration says otherwise; never silently replaced."""

from __future__ import annotations

from typing import Any

import pytest

from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.errors import ConfigurationError


def _negotiated_heartbeat(backend: RabbitMQBackend) -> Any:
    connection = backend._connection
    assert connection is not None
    return connection.transport.connection.heartbeat_timeout


async def test_a_heartbeat_in_the_url_is_the_heartbeat_of_the_connection(
    rabbitmq_url: str, queue_name: str
) -> None:
    # Given a URL that asks for a 7 s heartbeat, and no heartbeat in the settings
    backend = RabbitMQBackend(url=f"{rabbitmq_url}?heartbeat=7", queue=queue_name)
    # When it connects
    async with backend:
        # Then the connection runs with the URL's heartbeat, not the default
        assert _negotiated_heartbeat(backend) == 7


async def test_a_heartbeat_in_the_settings_applies_when_the_url_has_none(
    rabbitmq_url: str, queue_name: str
) -> None:
    backend = RabbitMQBackend(url=rabbitmq_url, queue=queue_name, heartbeat=9)
    async with backend:
        assert _negotiated_heartbeat(backend) == 9


@pytest.mark.parametrize(
    ("query", "settings", "named"),
    [
        ("heartbeat=7", {"heartbeat": 30}, "heartbeat=7 in the URL and heartbeat=30"),
        ("heartbeat=soon", {}, "heartbeat='soon' in the URL"),
        ("name=from-url", {"connection_name": "orders"}, "name='from-url' in the URL"),
    ],
)
async def test_a_url_setting_that_the_settings_contradict_is_refused(
    rabbitmq_url: str, queue_name: str, query: str, settings: dict[str, Any], named: str
) -> None:
    # Given a URL and settings that disagree (or a URL value that is no value)
    backend = RabbitMQBackend(url=f"{rabbitmq_url}?{query}", queue=queue_name, **settings)
    # When it connects, Then it refuses, saying which and how to fix it
    with pytest.raises(ConfigurationError) as error:
        await backend.connect()
    assert named in str(error.value)
    await backend.close()
