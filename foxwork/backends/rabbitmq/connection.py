"""Opening a connection to RabbitMQ: the first of a config's URLs that answers, with its
heartbeat, TLS context, connect timeout and connection name. Shared by the backend and the
dead-letter tooling.

A URL may carry settings of its own in its query (`?heartbeat=30`, `?name=orders`, as
aio-pika reads them): such a setting is used as given, and one that the configuration sets
to something else is refused, never silently replaced."""

from __future__ import annotations

from collections.abc import Iterable

import aio_pika
from aio_pika.abc import AbstractConnection
from pamqp.common import FieldTable
from yarl import URL

from ..._redact import redact, redact_url
from ...errors import ConfigurationError, ConnectionLost
from ._io import TRANSPORT_ERRORS
from .config import RabbitMQConsumerConfig

__all__ = ["connect_first"]


async def connect_first(
    urls: Iterable[str],
    config: RabbitMQConsumerConfig,
    *,
    connection_name: str,
    failure: str,
) -> tuple[AbstractConnection, str]:
    """Connect to the first of `urls` that answers; returns the connection and its URL.

    Raises:
        ConnectionLost: no URL answered: `failure` followed by why, for each URL, with
            every secret redacted.
    """
    errors: list[str] = []
    for url in urls:
        target, properties = _with_settings(URL(url), config, connection_name)
        try:
            connection = await aio_pika.connect(
                target,
                timeout=config.connect_timeout,
                ssl_context=config.ssl_context,
                client_properties=properties,
            )
        except (*TRANSPORT_ERRORS, TimeoutError) as exc:
            reason = redact(str(exc)) or type(exc).__name__
            errors.append(f"{redact_url(url)}: {type(exc).__name__}: {reason}")
            continue
        return connection, url
    raise ConnectionLost(failure + "; ".join(errors))


def _with_settings(
    url: URL, config: RabbitMQConsumerConfig, connection_name: str
) -> tuple[URL, FieldTable]:
    # The URL to connect to, with the configured heartbeat unless the URL has its own, and
    # the client properties, with the connection name unless the URL has its own.
    query = url.query
    shown = redact_url(str(url.with_query(None)))
    if "heartbeat" in query:
        given = query["heartbeat"]
        if not (given.isdigit() and int(given) <= 3600):
            raise ConfigurationError(
                f"heartbeat={given!r} in the URL {shown}: give whole seconds from 0 to 3600"
            )
        if "heartbeat" in config.model_fields_set and int(given) != config.heartbeat:
            raise ConfigurationError(
                f"heartbeat={given} in the URL and heartbeat={config.heartbeat} in the "
                f"settings of {shown}: give it once"
            )
    else:
        url = url.update_query(heartbeat=config.heartbeat)
    if "name" not in query:
        return url, {"connection_name": connection_name}
    if config.connection_name is not None and config.connection_name != query["name"]:
        raise ConfigurationError(
            f"name={query['name']!r} in the URL and connection_name="
            f"{config.connection_name!r} in the settings of {shown}: give it once"
        )
    return url, {}
