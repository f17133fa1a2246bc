"""Opening a connection to RabbitMQ: the first of a config's URLs that answers, with its
heartbeat, TLS context, connect timeout and connection name. Shared by the backend and the
dead-letter tooling."""

from __future__ import annotations

from collections.abc import Iterable

import aio_pika
from aio_pika.abc import AbstractConnection
from yarl import URL

from ..._redact import redact, redact_url
from ...errors import ConnectionLost
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
        try:
            connection = await aio_pika.connect(
                URL(url).update_query(heartbeat=config.heartbeat),
                timeout=config.connect_timeout,
                ssl_context=config.ssl_context,
                client_properties={"connection_name": connection_name},
            )
        except (*TRANSPORT_ERRORS, TimeoutError) as exc:
            reason = redact(str(exc)) or type(exc).__name__
            errors.append(f"{redact_url(url)}: {type(exc).__name__}: {reason}")
            continue
        return connection, url
    raise ConnectionLost(failure + "; ".join(errors))
