"""What the `foxwork dlq` tests of every broker share: a shop whose broken messages fail
with two kinds of errors, and how the command is run and its table read."""

from __future__ import annotations

import json
import re
from typing import Any

from foxwork import Message, wire
from tests.apps.process import Completed, foxwork_env, run_foxwork

__all__ = [
    "BROKEN_IDS",
    "DIAGNOSTIC_HEADERS",
    "GOOD_IDS",
    "SKU_IDS",
    "TIMEOUT_IDS",
    "UnknownSku",
    "UpstreamTimeout",
    "body_of",
    "dlq",
    "exception_name",
    "fail_broken",
    "table_rows",
]

#: Messages the worker always handles.
GOOD_IDS = ("order-1", "order-2", "order-3", "order-4")
#: Messages that fail with `UnknownSku` while the worker is broken.
SKU_IDS = ("sku-1", "sku-2", "sku-3")
#: Messages that fail with `UpstreamTimeout` while the worker is broken.
TIMEOUT_IDS = ("slow-1", "slow-2")
BROKEN_IDS = SKU_IDS + TIMEOUT_IDS
#: Headers a dead letter carries and a replayed copy must not.
DIAGNOSTIC_HEADERS = (wire.RETRY_ATTEMPT, wire.EXCEPTION_TRACEBACK, *wire.DEAD_LETTER_HEADERS)


class UnknownSku(Exception):
    pass


class UpstreamTimeout(Exception):
    pass


def fail_broken(message: Message[Any]) -> None:
    """Raise what a broken worker raises on `message` (nothing for the good ones)."""
    if message.id in SKU_IDS:
        raise UnknownSku(f"unknown SKU in {message.id}")
    if message.id in TIMEOUT_IDS:
        raise UpstreamTimeout(f"upstream timeout while pricing {message.id}")


def body_of(message_id: str) -> bytes:
    return json.dumps({"order": message_id}).encode()


def exception_name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


async def dlq(*args: str, url: str | None = None) -> Completed:
    """`foxwork dlq ARGS [--url URL]`, with no $FOXWORK_URL in the environment."""
    return await run_foxwork("dlq", *args, *(("--url", url) if url else ()), env=foxwork_env())


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of `foxwork dlq list`, by id: [id, attempt, failed at, exception, reason]."""
    header, *rows = stdout.splitlines()
    assert re.split(r"\s{2,}", header) == ["ID", "ATTEMPT", "FAILED AT", "EXCEPTION", "REASON"]
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", row) for row in rows)}
