"""Body decoding by content type, and encoding for publishing.

`application/json` (and `*+json`) decodes to Python objects, `text/*` to `str` (charset
from the content type, UTF-8 by default), anything else stays `bytes`. A body that cannot be
decoded raises `PoisonMessage`: it will never decode on a later attempt, so it is never
retried. That includes JSON nested too deeply for the decoder and integers longer than
Python converts (4,300 digits by default), and a gzip or deflate body that inflates past
`max_size`: it is inflated as a stream that stops one byte past the limit, so a small
compression bomb never costs more memory than the limit.

With orjson installed (the `fast` extra), JSON is decoded by it where it gives exactly what
`json.loads` gives; every body it would read differently (or not at all) is decoded by
`json.loads`, so the value, and the `PoisonMessage` of a body that is not JSON, are the same
with or without it. pydantic is imported only once a payload model is used.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import wire
from .errors import PoisonMessage

if TYPE_CHECKING:
    from pydantic import BaseModel

try:
    import orjson
except ImportError:  # pragma: no cover - the `fast` extra is not installed
    orjson = None  # type: ignore[assignment]

JSON = "application/json"
TEXT = "text/plain"
BINARY = "application/octet-stream"

#: Bytes inflated at a time from a gzip or deflate body.
_CHUNK = 64 * 1024

#: The faster JSON decoder (`orjson.loads`), None to decode every body with `json.loads`.
fast_loads: Callable[[bytes], Any] | None = orjson.loads if orjson is not None else None
#: A body longer than this is decoded by `json.loads` if it holds more brackets: orjson
#: decodes nesting up to 1,024 deep, `json.loads` only as deep as the Python stack allows.
_SHALLOW = 200
#: Every digit to b"0", any other byte to b" ": a run of 19 digits is an integer orjson
#: would turn into a float past 64 bits (or a long float literal), left to `json.loads`.
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19


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
            return _loads(body)
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


def _loads(body: bytes) -> Any:
    """`json.loads(body)`, by orjson where it decodes the body to the same value."""
    fast = fast_loads
    if (
        fast is not None
        and type(body) is bytes
        and (len(body) <= _SHALLOW or body.count(b"[") + body.count(b"{") <= _SHALLOW)
        and _LONG_NUMBER not in body.translate(_DIGITS)
    ):
        try:
            return fast(body)
        except ValueError:
            # NaN and Infinity, numbers past a double, lone surrogates, a BOM, bytes that
            # are not UTF-8, or not JSON at all: json.loads decides, with its own error.
            pass
    return json.loads(body)


def validate(model: type[BaseModel], body: bytes, decoded: Any) -> BaseModel:
    """Validate a payload against a pydantic model.

    Raises:
        PoisonMessage: the payload does not fit the model; the reason lists the errors.
    """
    from pydantic import ValidationError

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
    # A pydantic model can only exist once pydantic is imported: no need to import it here.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(payload, pydantic.BaseModel):
        return payload.model_dump_json().encode(), JSON
    return json.dumps(payload, separators=(",", ":")).encode(), JSON
