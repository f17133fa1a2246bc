"""Strip credentials from URLs before they reach a log line, an error or a report.

Every place that shows a URL goes through `redact_url()` (one URL) or `redact()` (any text
that may contain URLs, such as an exception message); the CLI's log formatter runs every
formatted record through `redact()`, tracebacks included. AMQP URLs are the point, but any
`scheme://user:password@host` URL is redacted the same way: a broker URL given with the
wrong scheme still carries a real password.

The password in the user info is replaced with `***`; so are the values of query
parameters that name a secret (`password`, `token`, `secret`, ...). The user name, host,
port and virtual host stay visible: they are what a reader needs to see which broker is
meant. Parsing is deliberately lenient: everything between `scheme://user:` and the last `@`
is the password, whatever it contains, so a URL that is malformed (an unencoded `/`, `?`, `#`
or `@` in the password, a bad port) is still redacted, never shown as it is.
"""

from __future__ import annotations

import logging
import re

__all__ = ["MASK", "RedactingFormatter", "redact", "redact_url"]

#: What a secret is replaced with.
MASK = "***"

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# A URL inside free text runs until whitespace, a quote or an angle bracket.
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>`]+", re.IGNORECASE)
# Query parameters whose value is a secret.
_SECRET_PARAM = re.compile(r"pass|secret|token|credential|auth_key|api_?key", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return `url` with its password and secret query values replaced by `***`.

    Text that is not a `scheme://` URL is returned unchanged.

    Args:
        url: an AMQP URL, e.g. `amqp://app:s3cret@rabbit:5672/orders`.

    Returns:
        The URL safe to show, e.g. `amqp://app:***@rabbit:5672/orders`.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return url
    scheme_end = scheme.end()
    rest = url[scheme_end:]
    # The user info ends at the LAST "@": a password may hold an unencoded "/", "?", "#"
    # or "@", which a URL parser takes for the end of the authority (and then shows the
    # rest of the password as a path, query or fragment). Masking a little too much (an
    # "@" in a query) is better than showing a secret.
    at = rest.rfind("@")
    query_from = 0
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:{MASK}{rest[at:]}"
            query_from = len(user) + 1 + len(MASK)
    # The query (secret parameters masked) starts after the password, never inside it.
    query_at = _first_of(rest, "?#", start=query_from)
    if query_at < len(rest) and rest[query_at] == "?":
        rest = rest[: query_at + 1] + _redact_query(rest[query_at + 1 :])
    return url[:scheme_end] + rest


def redact(text: str) -> str:
    """Return `text` with every URL in it redacted by `redact_url()`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


class RedactingFormatter(logging.Formatter):
    """A `logging.Formatter` whose output (message, arguments and traceback alike) never
    contains a URL's password."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _first_of(text: str, chars: str, start: int = 0) -> int:
    positions = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(positions, default=len(text))


def _redact_query(query: str) -> str:
    fragment = ""
    if "#" in query:
        query, hash_, tail = query.partition("#")
        fragment = hash_ + tail
    pairs = []
    for pair in query.split("&"):
        key, equals, value = pair.partition("=")
        if equals and value and _SECRET_PARAM.search(key):
            pair = f"{key}={MASK}"
        pairs.append(pair)
    return "&".join(pairs) + fragment
