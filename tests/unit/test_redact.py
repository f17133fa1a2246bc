"""Secrets in AMQP URLs never reach a log line, an error or a report."""

import logging
import sys

import pytest

from foxwork import ConfigurationError, ConnectionLost
from foxwork._redact import MASK, RedactingFormatter, redact, redact_url
from foxwork.backends.rabbitmq import RabbitMQBackend, RabbitMQConsumerConfig
from foxwork.backends.rabbitmq import config as rabbitmq_config


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        (
            "amqps://app:s3cret@rabbit.example:5671/orders",
            "amqps://app:***@rabbit.example:5671/orders",
        ),
        ("AMQP://App:S3cret@Host/", "AMQP://App:***@Host/"),
        ("amqp://app:p%40ss%2Fw0rd@host/%2F", "amqp://app:***@host/%2F"),
        ("amqp://app:s3cret@[::1]:5672/", "amqp://app:***@[::1]:5672/"),
    ],
)
def test_the_password_of_a_url_is_masked_and_the_rest_stays_readable(url: str, expected: str):
    # Given an AMQP URL with a password
    # When it is redacted
    redacted = redact_url(url)
    # Then the password is gone, user, host, port and vhost are still there
    assert redacted == expected


@pytest.mark.parametrize(
    "url",
    [
        "amqp://app:pass/with/slashes@host:5672/vhost",
        "amqp://app:p@ss@host:5672/",
        "amqp://app:s3cret@host:notaport/",
        "amqps://app:s3cret@host/?heartbeat=10",
    ],
)
def test_a_malformed_or_unusual_url_still_never_shows_its_password(url: str):
    # Given a URL whose password holds characters a parser trips over
    password = url.split("://", 1)[1].split(":", 1)[1].rsplit("@", 1)[0]
    # When it is redacted
    redacted = redact_url(url)
    # Then no part of the password is left, and the host still shows
    assert password not in redacted
    assert f":{MASK}@" in redacted
    assert "host" in redacted


def test_secret_query_parameters_are_masked_and_harmless_ones_kept():
    # Given a URL carrying a password and a token in its query
    url = "amqps://rabbit/?heartbeat=10&password=hunter2&auth_token=abc123&cafile=/etc/ca.pem"
    # When it is redacted
    redacted = redact_url(url)
    # Then the secret values are masked, the other parameters untouched
    assert redacted == (
        "amqps://rabbit/?heartbeat=10&password=***&auth_token=***&cafile=/etc/ca.pem"
    )


@pytest.mark.parametrize(
    "text",
    [
        "amqp://rabbit:5672/",
        "amqp://app@rabbit/",
        "https://example.com/path?q=1",
        "no url here",
        "",
    ],
)
def test_text_without_a_password_in_a_url_is_returned_unchanged(text: str):
    assert redact_url(text) == text
    assert redact(text) == text


def test_every_url_inside_free_text_is_redacted():
    # Given an error message naming two brokers, one quoted
    text = (
        "cannot connect to 'amqp://app:first-secret@node1:5672/' nor "
        "amqps://app:second-secret@node2/vhost, giving up"
    )
    # When the text is redacted
    redacted = redact(text)
    # Then neither password is left and the sentence is otherwise intact
    assert "first-secret" not in redacted
    assert "second-secret" not in redacted
    assert redacted == (
        "cannot connect to 'amqp://app:***@node1:5672/' nor amqps://app:***@node2/vhost, giving up"
    )


def test_the_log_formatter_redacts_messages_arguments_and_tracebacks():
    # Given a log record whose message, argument and exception all carry a password
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise ConnectionError("refused by amqp://app:in-traceback@host/")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "foxwork.test",
        logging.ERROR,
        __file__,
        1,
        "connecting to %s (was amqp://app:in-message@host/)",
        ("amqp://app:in-argument@host/",),
        exc_info,
    )
    # When it is formatted
    line = formatter.format(record)
    # Then no password survives anywhere in the output
    for secret in ("in-traceback", "in-message", "in-argument"):
        assert secret not in line
    assert "amqp://app:***@host/" in line
    assert "Traceback" in line


def test_a_broker_url_with_the_wrong_scheme_is_redacted_too():
    # Given an error message echoing a URL given with another scheme by mistake
    text = "url: 'http://app:real-password@rabbit/' is not an AMQP URL"
    # When it is redacted
    redacted = redact(text)
    # Then its password does not show either
    assert redacted == "url: 'http://app:***@rabbit/' is not an AMQP URL"


# -- passwords holding URL delimiters (?, #, /, @) ----------------------------------------

#: Passwords with unencoded characters that end the authority for a URL parser.
DELIMITER_PASSWORDS = ["s3cr?et", "s3cr#et", "s3?cr#et/x@y", "pa?ss:w#rd", "?#"]


@pytest.mark.parametrize("password", DELIMITER_PASSWORDS)
def test_a_password_with_an_unencoded_query_or_fragment_delimiter_is_masked(password: str):
    # Given a URL whose password holds an unencoded "?" or "#"
    url = f"amqp://app:{password}@rabbit:5672/orders"
    # When it is redacted, alone or inside free text
    redacted = redact_url(url)
    in_text = redact(f"cannot connect to {url}: refused")
    # Then everything between "app:" and the last "@" is masked; host and vhost still show
    assert redacted == "amqp://app:***@rabbit:5672/orders"
    assert in_text == "cannot connect to amqp://app:***@rabbit:5672/orders: refused"


def test_a_secret_query_parameter_after_such_a_password_is_masked_too():
    url = "amqps://app:s3cr?et@rabbit/?heartbeat=10&token=abc123"
    assert redact_url(url) == "amqps://app:***@rabbit/?heartbeat=10&token=***"


def _config_error(url: str) -> str:
    with pytest.raises(ConfigurationError) as raised:
        RabbitMQConsumerConfig(url=url, queue="orders")
    return str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://app:s3cr?et@rabbit/",
        "amqp://app:s3cr#et@rabbit/",
        "amqp://app:s3cr/et@rabbit/",
        "http://app:s3cr?et@rabbit/",
        "amqp://app:s3cr?et@/",
    ],
)
def test_the_configuration_error_for_such_a_url_never_shows_the_password(url: str):
    # Given a URL whose password breaks URL parsing
    # When the configuration refuses it
    message = _config_error(url)
    # Then the error names the URL redacted and nothing of the password
    assert "s3cr" not in message and "et@" not in message
    assert "app:***@" in message
    assert "percent-encode" in message or "not an AMQP URL" in message


async def test_repr_health_and_connect_errors_never_show_such_a_password():
    # Given a URL that parses (host 127.0.0.1, port 1) though its password holds a "?"
    url = "amqp://127.0.0.1:1?s3cret@rabbit/"
    config = RabbitMQConsumerConfig(url=url, queue="orders", connect_timeout=2.0)
    backend = RabbitMQBackend(config)
    # When it is shown and connected (nothing listens on port 1)
    with pytest.raises(ConnectionLost) as raised:
        await backend.connect()
    # Then no output carries the secret
    for shown in (repr(config), repr(backend), repr(backend.health()), str(raised.value)):
        assert "s3cret" not in shown, shown
    assert "127.0.0.1:***@rabbit/" in repr(config)


def test_an_at_sign_in_the_query_of_a_url_without_password_keeps_secret_parameters_masked():
    url = "amqps://rabbit/?owner=ops@example.com&password=hunter2"
    assert redact_url(url) == "amqps://rabbit/?owner=ops@example.com&password=***"


def test_a_parser_error_quoting_part_of_the_password_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given a URL parser that, like urllib's, quotes the "port" it could not read (here the
    # start of a password holding an unencoded "?")
    def quoting_parser(text: str) -> None:
        raise ValueError("Port could not be cast to integer value as 's3cr'")

    monkeypatch.setattr(rabbitmq_config, "URL", quoting_parser)
    # When the configuration refuses the URL
    message = _config_error("amqp://app:s3cr?et@rabbit/")
    # Then the error says how to fix it and quotes nothing of the password
    assert "s3cr" not in message
    assert "percent-encode" in message
