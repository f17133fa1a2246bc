"""JSON bodies decode to the same value, or fail with the same `PoisonMessage`, whether orjson
(the `fast` extra) is installed or not."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from foxwork import PoisonMessage, codec

orjson = pytest.importorskip("orjson")

JSON = "application/json"

TRICKY: list[bytes] = [
    # plain documents orjson decodes itself
    b'{"order_id": 12345, "sku": "ABC-1", "qty": 3, "price": 19.99, "tags": ["a", "b"]}',
    b"[]",
    b"{}",
    b'"text"',
    b"true",
    b"null",
    b"  1  ",
    b"\t\r\n1",
    b'{"a": 1, "a": 2}',  # duplicate keys: the last one wins
    b'{"\\u0000": "\\u0000"}',
    b'"\\ud83d\\ude00"',  # an escaped surrogate pair is one character
    '"grüße 😀"'.encode(),
    b'"\x7f"',
    b'"\\/\\b\\f\\n\\r\\t"',
    b"-0",
    b"-0.0",
    b"1E5",
    b"1e-400",  # underflows to 0.0
    b"4.9e-324",
    b"2.2250738585072014e-308",
    b"1.7976931348623157e308",
    b"123456789012345678e-10",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551615",  # the largest integer orjson keeps exact
    # what orjson reads differently or refuses: json.loads decides
    b"18446744073709551616",  # orjson makes a float of it
    b"-9223372036854775809",
    b"1" * 400,
    b"1" * 5000,  # more digits than Python converts
    b"0.30000000000000001665",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'{"x": [NaN]}',
    b"1e400",
    b"-1e400",
    b"1" + b"0" * 400 + b".0",
    b"1.7976931348623157e309",
    b'"\\ud800"',  # a lone surrogate, escaped
    b'"\\udc00x"',
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8 (json.loads lets it pass)
    b"\xef\xbb\xbf" + b'{"a": 1}',  # a UTF-8 byte order mark
    '{"a": "ü"}'.encode("utf-16"),
    '{"a": "ü"}'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-32"),
    b'"\xc0\xaf"',  # an overlong encoding
    b"\xff",
    b'"\xe9t\xe9"',  # Latin-1, not UTF-8
    b"[" * 300 + b"]" * 300,  # deep nesting: json.loads and orjson have different limits
    b"[" * 1000 + b"]" * 1000,
    b"[" * 1023 + b"]" * 1023,
    b"[" * 1030 + b"]" * 1030,
    b'{"a":' * 600 + b"1" + b"}" * 600,
    # not JSON at all: the same error either way
    b"",
    b" ",
    b"\x00",
    b"[1,]",
    b'{"a" 1}',
    b"1 2",
    b'{"a": 1}\x00',
    b"\x0c1",
    b'"\x01"',
    b'"\x1f"',
    b'"\\x"',
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"'a'",
    b"nul",
    b'"unterminated',
]


def _outcome(body: bytes) -> tuple[str, Any]:
    try:
        value = codec.decode(body, JSON)
    except PoisonMessage as exc:
        return "error", (str(exc), type(exc.__cause__))
    return "value", _comparable(value)


class _Key(str):
    pass


def _comparable(value: Any) -> list[Any]:
    # A flat list of tokens, walked without recursion (bodies nest deeper than the stack):
    # types count (1 is not 1.0) and NaN equals NaN here.
    tokens: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            tokens.append(("list", len(item)))
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            tokens.append(("dict", len(item)))
            for key, member in reversed(item.items()):
                stack += [member, _Key(key)]
        elif isinstance(item, float) and math.isnan(item):
            tokens.append(("float", "nan"))
        else:
            tokens.append((type(item).__name__, item))
    return tokens


def _both(body: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    with monkeypatch.context() as patch:
        patch.setattr(codec, "fast_loads", None)
        pure = _outcome(body)
    with monkeypatch.context() as patch:
        patch.setattr(codec, "fast_loads", orjson.loads)
        fast = _outcome(body)
    return pure, fast


@pytest.mark.parametrize("body", TRICKY, ids=lambda body: repr(body)[:40])
def test_orjson_decodes_as_json_loads(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    pure, fast = _both(body, monkeypatch)
    assert fast == pure
    if pure[0] == "value":
        assert pure == ("value", _comparable(json.loads(body)))


def _random_numbers(kind: str, rng: random.Random) -> str:
    if kind == "float":
        return repr(rng.random() * 10 ** rng.randint(-320, 307))
    if kind == "literal":
        return f"{rng.randint(0, 9)}.{rng.getrandbits(60)}e{rng.randint(-330, 330)}"
    if kind == "int":
        return str(rng.randint(-(2**63), 2**64 - 1))
    return str(rng.randint(-(2**70), 2**70))


@pytest.mark.parametrize("kind", ["float", "literal", "int", "bigint"])
def test_random_numbers_decode_alike(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(16)
    for _ in range(200):
        number = _random_numbers(kind, rng).encode()
        for body in (number, b"[" + number + b"]"):
            pure, fast = _both(body, monkeypatch)
            assert fast == pure, body


def test_orjson_decodes_ordinary_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def counting(body: bytes) -> Any:
        calls.append(body)
        return orjson.loads(body)

    monkeypatch.setattr(codec, "fast_loads", counting)
    body = b'{"order_id": 12345, "sku": "ABC-1", "qty": 3}'
    assert codec.decode(body, JSON) == {"order_id": 12345, "sku": "ABC-1", "qty": 3}
    assert calls == [body]


def test_the_fast_extra_is_used_when_installed() -> None:
    assert codec.fast_loads is orjson.loads
