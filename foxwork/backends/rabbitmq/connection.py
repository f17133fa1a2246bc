"""Opening a connection to RabbitMQ: the first of a config's URLs that answers, with its
heartbeat, TLS context, connect timeout and connection name. Shared by the backend and the
dead-letter tooling.

A URL may carry settings of its own in its query (`?heartbeat=30`, `?name=orders`, as
aio-pika reads them): such a setting is used as given, and one that the configuration sets
to something else is refused, never silently replaced."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from pamqp.common import FieldTable
from yarl import URL

from ..._redact import redact, redact_url
from ...errors import AccessRefused, ConfigurationError, ConnectionLost
from ._io import TRANSPORT_ERRORS
from .config import RabbitMQConsumerConfig
from .topology import vhost_of

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
        AccessRefused: every URL answered and refused the login or the virtual host:
            `failure` followed by what to change, for each URL, with every secret redacted.
        ConnectionLost: no URL answered: `failure` followed by why, for each URL, with
            every secret redacted.
    """
    errors: list[str] = []
    refused = 0
    for url in urls:
        target, properties = _with_settings(URL(url), config, connection_name)
        # Made here rather than by aio_pika.connect(), which drops a connection that failed
        # to connect unclosed: its finaliser then creates a close() coroutine that nothing
        # awaits when a collection runs outside the event loop's thread.
        connection = aio_pika.Connection(
            target, ssl_context=config.ssl_context, client_properties=properties
        )
        try:
            await connection.connect(timeout=config.connect_timeout)
        except BaseException as exc:
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                await connection.close()
            if not isinstance(exc, (*TRANSPORT_ERRORS, TimeoutError)):
                raise
            refusal = _refusal(exc, url)
            if refusal is not None:
                refused += 1
                errors.append(f"{redact_url(url)}: {refusal}")
                continue
            reason = redact(str(exc)) or type(exc).__name__
            errors.append(f"{redact_url(url)}: {type(exc).__name__}: {reason}")
            continue
        return connection, url
    error = AccessRefused if errors and refused == len(errors) else ConnectionLost
    raise error(failure + "; ".join(errors))


#: The broker's usual text for a refused login: it says no more than this module does.
_PLAIN_LOGIN_REFUSAL = re.compile(r"^ACCESS_REFUSED - Login was refused")
#: AMQP reply codes of a refused connection.
_ACCESS_REFUSED, _NOT_ALLOWED = 403, 530


def _refusal(exc: BaseException, url: str) -> str | None:
    """What to change, when `exc` says the broker answered and refused the connection
    (a login or a virtual host it would not accept); None for any other failure."""
    user = URL(url).user or "guest"  # aio-pika's default login
    code = exc.args[0] if isinstance(exc, aiormq.exceptions.ConnectionClosed) else None
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) or code == _ACCESS_REFUSED:
        text = str(exc.args[-1]) if exc.args else ""
        detail = "" if _PLAIN_LOGIN_REFUSAL.match(text) or not text else f" ({redact(text)})"
        return (
            f"the broker refused the login of user {user!r}{detail}: check the user name "
            "and password in the URL"
        )
    # RabbitMQ answers Connection.Open for a vhost that does not exist, or that the user
    # has no permissions on, with Connection.Close 530 (NOT_ALLOWED). aiormq reports that as
    # an unexpected frame (InvalidFrameError naming both frames), or as ConnectionNotAllowed.
    text = str(exc)
    unexpected_close = (
        isinstance(exc, aiormq.exceptions.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )
    if unexpected_close or code == _NOT_ALLOWED:
        return (
            f"vhost {vhost_of(url)!r} does not exist or is not permitted for user {user!r}: "
            "check the vhost in the URL (the path after the host, '/' written %2F) and the "
            "user's permissions on it"
        )
    return None


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
