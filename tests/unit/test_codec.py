"""Body decoding by content type, payload validation and encoding."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from pydantic import BaseModel

from foxwork import PoisonMessage, codec, wire

from .helpers import compression_bomb


class Order(BaseModel):
    sku: str
    qty: int


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "expected"),
    [
        (b'{"a": [1, 2]}', "application/json", None, {"a": [1, 2]}),
        (b'{"a": 1}', "application/json; charset=utf-8", None, {"a": 1}),
        (b'{"a": 1}', "application/vnd.shop+json", None, {"a": 1}),
        (b'{"a": 1}', "APPLICATION/JSON", None, {"a": 1}),
        ("grüße".encode(), "text/plain", None, "grüße"),
        ("grüße".encode("latin-1"), "text/plain; charset=latin-1", None, "grüße"),
        ("grüße".encode("latin-1"), 'text/plain; charset="latin-1"', None, "grüße"),
        (b"\x00\xff", "application/octet-stream", None, b"\x00\xff"),
        (b"\x00\xff", None, None, b"\x00\xff"),
        (gzip.compress(b'{"a": 1}'), "application/json", "gzip", {"a": 1}),
        (zlib.compress(b"hi"), "text/plain", "deflate", "hi"),
    ],
)
def test_decode_follows_the_content_type_and_encoding(
    body: bytes, content_type: str | None, encoding: str | None, expected: object
) -> None:
    assert codec.decode(body, content_type, encoding) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "reason"),
    [
        (b"{not json", "application/json", None, "not valid JSON"),
        (b'"\xff\xfe"', "application/json", None, "not"),
        (b"\xff\xfe\xfa", "text/plain", None, "not valid utf-8 text"),
        (b"hi", "text/plain; charset=klingon", None, "unknown charset 'klingon'"),
        (b"not gzip", "application/json", "gzip", "not valid gzip data"),
        (b"not zlib", "text/plain", "deflate", "not valid deflate data"),
    ],
)
def test_an_undecodable_body_is_a_poison_message_with_a_reason(
    body: bytes, content_type: str, encoding: str | None, reason: str
) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        codec.decode(body, content_type, encoding)


@pytest.mark.parametrize(
    ("decoded", "body"),
    [
        ({"sku": "A-1", "qty": 2}, b""),
        (b'{"sku": "A-1", "qty": 2}', b'{"sku": "A-1", "qty": 2}'),
        ('{"sku": "A-1", "qty": 2}', b'{"sku": "A-1", "qty": 2}'),
    ],
)
def test_validate_returns_the_model_instance(decoded: object, body: bytes) -> None:
    assert codec.validate(Order, body, decoded) == Order(sku="A-1", qty=2)


def test_validate_names_every_bad_field_in_the_reason() -> None:
    # When
    with pytest.raises(PoisonMessage) as caught:
        codec.validate(Order, b"", {"sku": 1, "qty": "many"})

    # Then
    reason = str(caught.value)
    assert "payload does not match Order" in reason
    assert "sku:" in reason and "qty:" in reason


def test_validate_names_a_missing_field() -> None:
    with pytest.raises(PoisonMessage, match="qty: Field required"):
        codec.validate(Order, b"", {"sku": "A-1"})


@pytest.mark.parametrize(
    ("payload", "body", "content_type"),
    [
        (b"\x01", b"\x01", "application/octet-stream"),
        ("hé", "hé".encode(), "text/plain; charset=utf-8"),
        ({"a": 1}, b'{"a":1}', "application/json"),
        (Order(sku="A", qty=1), b'{"sku":"A","qty":1}', "application/json"),
    ],
)
def test_encode_picks_the_content_type_from_the_payload(
    payload: object, body: bytes, content_type: str
) -> None:
    assert codec.encode(payload) == (body, content_type)


@pytest.mark.parametrize("payload", [{"a": [1, "b", None]}, "text", b"raw"])
def test_encode_then_decode_round_trips(payload: object) -> None:
    body, content_type = codec.encode(payload)
    assert codec.decode(body, content_type) == payload


# -- bodies that would exhaust memory or the stack --------------------------------------

#: The compression bombs below inflate to this many MiB of zeros.
BOMB_MIB = 50


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_at_the_limit_without_inflating_it(encoding: str) -> None:
    # Given a 50 KB body that inflates to 50 MiB
    bomb = compression_bomb(encoding, BOMB_MIB)
    limit = 1_000_000

    # When it is decoded with a limit of 1 MB
    tracemalloc.start()
    try:
        with pytest.raises(PoisonMessage) as caught:
            codec.decode(bomb, "application/json", encoding, max_size=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then it is poison, the reason names the limit, and memory never held more than the
    # limit and a chunk (never the 50 MiB)
    assert f"max_body_size of {limit} bytes" in str(caught.value)
    assert "inflates to more than" in str(caught.value)
    assert peak < 1.5 * limit


def test_the_default_limit_on_the_inflated_body_is_max_body_size() -> None:
    with pytest.raises(PoisonMessage, match=f"max_body_size of {wire.DEFAULT_MAX_BODY_SIZE}"):
        codec.decode(compression_bomb("gzip", BOMB_MIB), None, "gzip")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_inflating_to_exactly_the_limit_is_decoded(encoding: str) -> None:
    body = compression_bomb(encoding, 2)
    assert codec.decode(body, None, encoding, max_size=2 << 20) == bytes(2 << 20)
    with pytest.raises(PoisonMessage, match="max_body_size"):
        codec.decode(body, None, encoding, max_size=(2 << 20) - 1)


def test_concatenated_gzip_members_decode_to_their_concatenation() -> None:
    body = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    assert codec.decode(body, "application/json", "gzip") == {"a": 1}


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (gzip.compress(b'{"a": 1}')[:-6], "gzip"),
        (zlib.compress(b'{"a": 1}')[:-3], "deflate"),
        (gzip.compress(b"{}") + b"junk", "gzip"),
    ],
)
def test_a_truncated_or_trailing_garbage_compressed_body_is_poison(
    body: bytes, encoding: str
) -> None:
    with pytest.raises(PoisonMessage, match=f"not valid {encoding} data"):
        codec.decode(body, "application/json", encoding)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"9" * 5000, "integer"),
        (b'{"qty": ' + b"1" * 4301 + b"}", "integer"),
    ],
)
def test_json_too_deep_or_with_a_huge_integer_is_poison_not_a_retryable_error(
    body: bytes, reason: str
) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        codec.decode(body, "application/json")
