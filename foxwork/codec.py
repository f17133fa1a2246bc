"""Body decoding by content type, and encoding for publishing.

`application/json` (and `*+json`) decodes to Python objects, `text/*` to `str` (charset
from the content type, UTF-8 by default), anything else stays `bytes`. A body that cannot be
decoded raises `PoisonMessage`: it will never decode on a later attempt, so it is never
retried.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import PoisonMessage

JSON = "application/json"
TEXT = "text/plain"
BINARY = "application/octet-stream"


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


def _decompress(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "").lower()
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error, EOFError) as exc:
        raise PoisonMessage(f"body is not valid {encoding} data: {exc}") from exc
    return body


def decode(body: bytes, content_type: str | None, content_encoding: str | None = None) -> Any:
    """Decode a body according to its content type.

    Raises:
        PoisonMessage: the body does not match its declared content type or encoding.
    """
    body = _decompress(body, content_encoding)
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
