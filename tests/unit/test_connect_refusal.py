"""How a refused AMQP connection is explained (`rabbitmq.connection._refusal`), for the
forms aiormq may report it in; tests/rabbitmq/test_connect_errors.py checks the broker's."""

from __future__ import annotations

import aiormq

from foxwork.backends.rabbitmq.connection import _refusal

URL = "amqp://app:s3cret@rabbit:5672/shop"


def test_a_not_allowed_close_names_the_vhost_and_the_user() -> None:
    exc = aiormq.exceptions.ConnectionNotAllowed(530, "NOT_ALLOWED - vhost shop not found")

    assert _refusal(exc, URL) == (
        "vhost 'shop' does not exist or is not permitted for user 'app': check the vhost in "
        "the URL (the path after the host, '/' written %2F) and the user's permissions on it"
    )


def test_a_refused_login_keeps_an_unusual_broker_reason() -> None:
    exc = aiormq.exceptions.ProbableAuthenticationError(
        "ACCESS_REFUSED - user 'guest' can only connect via localhost"
    )

    text = _refusal(exc, "amqp://rabbit/")

    assert text is not None
    assert text.startswith("the broker refused the login of user 'guest' (ACCESS_REFUSED - ")
    assert "only connect via localhost" in text


def test_other_failures_are_not_refusals() -> None:
    assert _refusal(ConnectionRefusedError(111, "Connection refused"), URL) is None
    assert _refusal(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"), URL) is None
