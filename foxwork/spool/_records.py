"""A spooled message on disk: the record frame, and the message inside it.

A record is a 12-byte header and a payload:

    magic  b"FX"    2 bytes
    version         1 byte (1)
    reserved        1 byte (0)
    length          4 bytes, big-endian: the payload's length
    crc32           4 bytes, big-endian: `zlib.crc32` of the payload

A payload holds everything a republish needs: a 4-byte big-endian length, that many bytes of
UTF-8 JSON (exchange, routing key, the time it was spooled, the properties and the headers),
then the body as it is. Header values JSON has no type for are tagged: bytes as
`{"$bytes": base64}`, a datetime as `{"$datetime": ISO 8601}`, a Decimal as
`{"$decimal": text}`, and a dict whose only key starts with `$` is wrapped in `{"$dict": ...}`
so that it is never mistaken for one of them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
import zlib
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..message import MessageProperties

__all__ = [
    "HEADER",
    "MAGIC",
    "MAX_PAYLOAD",
    "RecordError",
    "SpooledMessage",
    "check_payload",
    "decode_message",
    "encode_message",
    "frame",
    "parse_header",
]

MAGIC = b"FX"
VERSION = 1
#: magic, version, reserved, payload length, CRC-32 of the payload.
HEADER = struct.Struct(">2sBBII")
#: The longest payload a record may hold (a longer length field is a torn or bad record).
MAX_PAYLOAD = 1 << 30
_META_LENGTH = struct.Struct(">I")
#: `json.dumps(..., separators=...)` would build an encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: The properties held as text (every `str | None` field of `MessageProperties`).
_TEXT_PROPERTIES = tuple(
    field.name
    for field in dataclasses.fields(MessageProperties)
    if field.type in ("str | None", str | None)
)


class RecordError(ValueError):
    """Bytes that are not a whole, intact record."""


@dataclasses.dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One message in the spool, as it will be republished.

    Attributes:
        exchange: the exchange ("" is the default exchange).
        routing_key: the routing key.
        body: the body, as published.
        properties: every property, the message id and the headers included.
        spooled_at: when it was spooled (seconds since the epoch).
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: MessageProperties
    spooled_at: float


def frame(payload: bytes) -> bytes:
    """The record holding `payload`."""
    return HEADER.pack(MAGIC, VERSION, 0, len(payload), zlib.crc32(payload)) + payload


def parse_header(header: bytes) -> tuple[int, int]:
    """(payload length, CRC-32) of a record header.

    Raises:
        RecordError: not a record header of this version.
    """
    if len(header) < HEADER.size:
        raise RecordError(f"a header of {len(header)} bytes is cut short")
    magic, version, _, length, crc = HEADER.unpack(header)
    if magic != MAGIC or version != VERSION:
        raise RecordError(f"no record header (magic {magic!r}, version {version})")
    if length > MAX_PAYLOAD:
        raise RecordError(f"a payload length of {length} bytes is implausible")
    return length, crc


def check_payload(payload: bytes, length: int, crc: int) -> None:
    """Raises `RecordError` unless `payload` is whole and matches its CRC."""
    if len(payload) < length:
        raise RecordError(f"the payload is cut short ({len(payload)} of {length} bytes)")
    if zlib.crc32(payload) != crc:
        raise RecordError("the payload does not match its CRC-32")


def encode_message(message: SpooledMessage) -> bytes:
    """The payload of a record holding `message`."""
    properties = message.properties
    fields: dict[str, Any] = {}
    for name in _TEXT_PROPERTIES:
        value = getattr(properties, name)
        if value is not None:
            fields[name] = value
    if properties.priority is not None:
        fields["priority"] = properties.priority
    if properties.timestamp is not None:
        fields["timestamp"] = properties.timestamp.isoformat()
    fields["delivery_mode"] = properties.delivery_mode
    headers = properties.headers
    meta = {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "spooled_at": message.spooled_at,
        "properties": fields,
        "headers": _tag(dict(headers)) if headers else {},
    }
    encoded = _ENCODER.encode(meta).encode()
    return _META_LENGTH.pack(len(encoded)) + encoded + message.body


def decode_message(payload: bytes) -> SpooledMessage:
    """The message a record's payload holds.

    Raises:
        RecordError: the payload is not a spooled message.
    """
    try:
        (size,) = _META_LENGTH.unpack_from(payload)
        meta = json.loads(payload[_META_LENGTH.size : _META_LENGTH.size + size])
        fields = dict(meta["properties"])
        if "timestamp" in fields:
            fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
        properties = MessageProperties(**fields, headers=_untag(meta["headers"]))
        return SpooledMessage(
            exchange=meta["exchange"],
            routing_key=meta["routing_key"],
            body=payload[_META_LENGTH.size + size :],
            properties=properties,
            spooled_at=float(meta["spooled_at"]),
        )
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"not a spooled message: {exc}") from exc


def _tag(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        tagged = {str(key): _tag(item) for key, item in value.items()}
        if len(tagged) == 1 and next(iter(tagged)).startswith("$"):
            return {"$dict": tagged}
        return tagged
    if isinstance(value, list | tuple):
        return [_tag(item) for item in value]
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        [(key, item)] = value.items()
        if key == "$bytes":
            return base64.b64decode(item)
        if key == "$datetime":
            return datetime.fromisoformat(item)
        if key == "$decimal":
            return Decimal(item)
        if key == "$dict":
            return {name: _untag(inner) for name, inner in item.items()}
    return {key: _untag(item) for key, item in value.items()}
