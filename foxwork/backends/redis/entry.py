"""A message as a stream entry, and back.

An entry's fields:

- `body`        the body, bytes as they are
- `headers`     the headers as one JSON object (absent when there are none). JSON keeps
                `x-retry-attempt`, `x-final-attempt` and the other diagnostic headers
                typed (an int stays an int); a header value JSON cannot hold (bytes, a
                datetime) is stored as its `str()`.
- one field per set property: `content_type`, `content_encoding`, `priority`,
  `expiration`, `message_type`, `user_id`, `app_id`, `cluster_id`, `reply_to`,
  `correlation_id`, `message_id`, `timestamp` (ISO 8601), `delivery_mode`
- `redelivered` `1` on a copy foxwork put back itself (a nack with requeue)

Any other field (an entry written by another tool) becomes a header of that name. An entry
that cannot be read as a message (no `body`, a field that is not UTF-8, headers that are
not a JSON object) still becomes a `Message`, marked poison with the reason, so that it
ends in the dead-letter stream instead of looping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from ...message import MessageProperties

__all__ = ["BODY", "REDELIVERED", "Decoded", "decode", "encode"]

BODY = b"body"
HEADERS = b"headers"
REDELIVERED = b"redelivered"

_TEXT = (
    "content_type",
    "content_encoding",
    "expiration",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
    "reply_to",
    "correlation_id",
    "message_id",
)
_INT = ("priority", "delivery_mode")
_KNOWN = {BODY, HEADERS, REDELIVERED, b"timestamp", *(n.encode() for n in (*_TEXT, *_INT))}
#: Field → (property name, kind), for the fast path of `decode`.
_TEXT_KIND, _INT_KIND = 0, 1
_FIELDS: dict[bytes, tuple[str, int]] = {
    **{n.encode(): (n, _TEXT_KIND) for n in _TEXT},
    **{n.encode(): (n, _INT_KIND) for n in _INT},
}


def encode(
    body: bytes, properties: MessageProperties, *, redelivered: bool = False
) -> dict[bytes, bytes]:
    """The fields of an entry holding `body` with `properties`."""
    fields: dict[bytes, bytes] = {BODY: body}
    for name in _TEXT:
        value = getattr(properties, name)
        if value is not None:
            fields[name.encode()] = value.encode()
    for name in _INT:
        value = getattr(properties, name)
        if value is not None:
            fields[name.encode()] = str(int(value)).encode()
    if properties.timestamp is not None:
        fields[b"timestamp"] = properties.timestamp.isoformat().encode()
    if properties.headers:
        fields[HEADERS] = json.dumps(dict(properties.headers), default=str).encode()
    if redelivered:
        fields[REDELIVERED] = b"1"
    return fields


class Decoded(NamedTuple):
    """What an entry says: the body, the properties, and why it is poison (or None).

    A named tuple: one is made per entry read, and a tuple is the cheapest to make."""

    body: bytes
    properties: MessageProperties
    redelivered: bool
    poison: str | None


def decode(fields: Mapping[bytes, bytes]) -> Decoded:
    """Read an entry's fields (see the module docstring); never raises."""
    # One pass over the fields the entry has (usually three or four), for an entry that is
    # well formed; anything unusual is read again, slowly, to say what is wrong with it.
    try:
        return _decode_well_formed(fields)
    except (UnicodeDecodeError, ValueError, TypeError, LookupError):
        return _decode_carefully(fields)


def _decode_well_formed(fields: Mapping[bytes, bytes]) -> Decoded:
    """`decode` of a well-formed entry; raises on anything else (not UTF-8, a bad integer
    or time, headers that are not a JSON object, no body)."""
    values: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    raw_headers = None
    for key, raw in fields.items():
        known = _FIELDS.get(key)
        if known is not None:
            name, kind = known
            values[name] = raw.decode() if kind == _TEXT_KIND else int(raw.decode())
        elif key in (BODY, REDELIVERED):
            continue
        elif key == HEADERS:
            raw_headers = raw.decode()
        elif key == b"timestamp":
            values["timestamp"] = datetime.fromisoformat(raw.decode())
        else:
            headers[key.decode()] = raw.decode()
    if raw_headers is not None:
        parsed = json.loads(raw_headers)
        if not isinstance(parsed, dict):
            raise TypeError("headers are not a JSON object")
        headers.update(parsed)
    return Decoded(
        body=fields[BODY],
        properties=MessageProperties(**values, headers=headers),
        redelivered=fields.get(REDELIVERED) == b"1",
        poison=None,
    )


def _decode_carefully(fields: Mapping[bytes, bytes]) -> Decoded:
    """`decode` of any entry, naming each problem it has."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    headers: dict[str, Any] = {}

    def text(name: bytes) -> str:
        raw = fields[name]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            problems.append(f"field {name.decode(errors='replace')!r} is not UTF-8: {raw[:40]!r}")
            return raw.decode(errors="replace")

    for name in _TEXT:
        if name.encode() in fields:
            values[name] = text(name.encode())
    for name in _INT:
        if name.encode() in fields:
            raw = text(name.encode())
            try:
                values[name] = int(raw)
            except ValueError:
                problems.append(f"field {name!r} is not an integer: {raw[:40]!r}")
    if b"timestamp" in fields:
        raw = text(b"timestamp")
        try:
            values["timestamp"] = datetime.fromisoformat(raw)
        except ValueError:
            problems.append(f"field 'timestamp' is not an ISO 8601 time: {raw[:40]!r}")
    for key in fields.keys() - _KNOWN:
        headers[key.decode(errors="replace")] = text(key)
    if HEADERS in fields:
        raw = text(HEADERS)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            headers.update(parsed)
        else:
            problems.append(f"field 'headers' is not a JSON object: {raw[:40]!r}")
    body = fields.get(BODY)
    if body is None:
        problems.insert(0, "the entry has no 'body' field")
    properties = MessageProperties(**values, headers=headers)
    return Decoded(
        body=body or b"",
        properties=properties,
        redelivered=fields.get(REDELIVERED) == b"1",
        poison="; ".join(problems) if problems else None,
    )
