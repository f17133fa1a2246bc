"""Body decoding by content type, and encoding for publishing.

`application/json` (and `*+json`) decodes to Python objects, `text/*` to `str` (charset
from the content type, UTF-8 by default), anything else stays `bytes`. A body that cannot be
decoded raises `PoisonMessage`: it will never decode on a later attempt, so it is never
retried. That includes JSON nested too deeply for the decoder and integers longer than
Python converts (4,300 digits by default), and a gzip or deflate body that inflates past
`max_size`: it is inflated as a stream that stops one byte past the limit, so a small
compression bomb never costs more memory than the limit.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from pydantic import BaseModel, ValidationError

from . import wire
from .errors import PoisonMessage

JSON = "application/json"
TEXT = "text/plain"
BINARY = "application/octet-stream"

#: Bytes inflated at a time from a gzip or deflate body.
_CHUNK = 64 * 1024


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


def _decompress(body: bytes, content_encoding: str | None, max_size: int) -> bytes:
    encoding = (content_encoding or "").lower()
    if encoding not in ("gzip", "deflate"):
        return body
    try:
        inflated = _inflate(body, gzip=encoding == "gzip", max_size=max_size)
    except zlib.error as exc:
        raise PoisonMessage(f"body is not valid {encoding} data: {exc}") from exc
    if inflated is None:
        raise PoisonMessage(
            f"{encoding} body of {len(body)} bytes inflates to more than max_body_size of "
            f"{max_size} bytes"
        )
    return inflated


def _inflate(body: bytes, *, gzip: bool, max_size: int) -> bytes | None:
    """The inflated body, or None as soon as it grows past `max_size`."""
    # Inflated a chunk at a time (max_length), so a body that would inflate past the limit
    # costs at most the limit plus one chunk of memory, however far it would go. A gzip
    # body may hold several members (and zero padding after them), as gzip.decompress()
    # accepts; deflate is the zlib format, trailing data ignored as zlib.decompress() does.
    wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    data = body
    while data or not gzip:
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            part = inflater.decompress(data, _CHUNK)
            progressed = part or len(inflater.unconsumed_tail) < len(data)
            data = inflater.unconsumed_tail
            if not progressed:
                raise zlib.error("incomplete or truncated stream")
            size += len(part)
            if size > max_size:
                return None
            parts.append(part)
        if not gzip:
            break
        data = inflater.unused_data.lstrip(b"\0")
    return b"".join(parts)


def decode(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    *,
    max_size: int = wire.DEFAULT_MAX_BODY_SIZE,
) -> Any:
    """Decode a body according to its content type.

    Args:
        body: the body as received.
        content_type: its content type; None leaves it bytes.
        content_encoding: `gzip` or `deflate` to inflate it first; others are ignored.
        max_size: the most bytes a compressed body may inflate to (`max_body_size`).

    Raises:
        PoisonMessage: the body does not match its declared content type or encoding, or
            inflates past `max_size`.
    """
    body = _decompress(body, content_encoding, max_size)
    if not content_type:
        return body
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON or media.endswith("+json"):
        try:
            return json.loads(body)
        except UnicodeDecodeError as exc:
            raise PoisonMessage(f"body is not UTF-8 encoded JSON ({content_type}): {exc}") from exc
        except json.JSONDecodeError as exc:
            raise PoisonMessage(f"body is not valid JSON ({content_type}): {exc}") from exc
        except RecursionError as exc:
            # The decoder recursed once per nesting level; the stack has unwound by now.
            raise PoisonMessage(
                f"body is JSON nested too deeply to decode ({content_type})"
            ) from exc
        except ValueError as exc:
            # An integer longer than Python converts (sys.get_int_max_str_digits()).
            raise PoisonMessage(f"body cannot be decoded as JSON ({content_type}): {exc}") from exc
    if media.startswith("text/"):
        charset = _charset(content_type)
        try:
            return body.decode(charset)
        except LookupError as exc:
            raise PoisonMessage(f"unknown charset {charset!r} in {content_type!r}") from exc
        except UnicodeDecodeError as exc:
            raise PoisonMessage(
                f"body is not valid {charset} text ({content_type}): {exc}"
            ) from exc
    return body


def validate(model: type[BaseModel], body: bytes, decoded: Any) -> BaseModel:
    """Validate a payload against a pydantic model.

    Raises:
        PoisonMessage: the payload does not fit the model; the reason lists the errors.
    """
    try:
        if isinstance(decoded, bytes | str):
            return model.model_validate_json(decoded)
        return model.model_validate(decoded)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise PoisonMessage(f"payload does not match {model.__name__}: {errors}") from exc


def encode(payload: Any) -> tuple[bytes, str]:
    """Encode a payload for publishing; returns the body and its content type."""
    if isinstance(payload, bytes):
        return payload, BINARY
    if isinstance(payload, str):
        return payload.encode(), f"{TEXT}; charset=utf-8"
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode(), JSON
    return json.dumps(payload, separators=(",", ":")).encode(), JSON
