"""Secrets in AMQP URLs never reach a log line, an error or a report."""

import logging
import sys

import pytest

from foxwork._redact import MASK, RedactingFormatter, redact, redact_url


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
