"""Dead letters carry `x-exception-traceback`: the end of the traceback, at most 4 KiB."""

from __future__ import annotations

import traceback
from typing import Any

from foxwork import DeadLetter, Message, MessageProperties, Worker, wire
from foxwork.backends import MemoryBackend

from ..conftest import PoolFactory, run_until_idle


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def headers_for(reason: BaseException | str, **original: Any) -> dict[str, Any]:
    return wire.dead_letter_headers(
        original, routing_key="orders", exchange="", queue="orders", reason=reason, final_attempt=3
    )


def test_the_header_name_and_bound() -> None:
    assert wire.EXCEPTION_TRACEBACK == "x-exception-traceback"
    assert wire.MAX_EXCEPTION_TRACEBACK == 4096
    # Not one of the contract's headers: set in addition to them
    assert wire.EXCEPTION_TRACEBACK not in wire.DEAD_LETTER_HEADERS


def test_a_dead_letter_of_a_raised_exception_carries_its_traceback() -> None:
    def reserve() -> None:
        raise ValueError("no stock for SKU-1")

    try:
        reserve()
    except ValueError as exc:
        headers = headers_for(exc)
    trace = headers[wire.EXCEPTION_TRACEBACK]
    assert trace.startswith("Traceback (most recent call last):")
    assert 'in reserve\n    raise ValueError("no stock for SKU-1")' in trace
    assert trace.endswith("ValueError: no stock for SKU-1\n")


def test_a_long_traceback_keeps_its_end_within_4_kib_and_says_what_was_cut() -> None:
    # Given a chain of 200 exceptions: the traceback is far longer than 4 KiB
    exc: BaseException | None = None
    for index in range(200):
        try:
            raise RuntimeError(f"step {index} failed") from exc
        except RuntimeError as caught:
            exc = caught
    assert exc is not None
    full = "".join(traceback.format_exception(exc))
    assert len(full.encode()) > 3 * wire.MAX_EXCEPTION_TRACEBACK

    # When
    trace = headers_for(exc)[wire.EXCEPTION_TRACEBACK]

    # Then it fits, begins with the marker, and ends as the full one does
    assert len(trace.encode()) <= wire.MAX_EXCEPTION_TRACEBACK
    marker, kept = trace.split("\n", 1)
    cut = int(marker.removeprefix("[... ").removesuffix(" bytes cut ...]"))
    assert full.endswith(kept)
    assert cut + len(kept.encode()) == len(full.encode())
    assert kept.endswith("RuntimeError: step 199 failed\n")


def test_the_cut_never_splits_a_character() -> None:
    exc = raised(ValueError("é" * 5000))
    trace = headers_for(exc)[wire.EXCEPTION_TRACEBACK]
    assert len(trace.encode("utf-8")) <= wire.MAX_EXCEPTION_TRACEBACK
    assert trace.endswith("é" * 100 + "\n")


def test_a_password_in_the_traceback_is_masked() -> None:
    exc = raised(ConnectionError("cannot reach amqp://app:s3cret@rabbit:5672/"))
    trace = headers_for(exc)[wire.EXCEPTION_TRACEBACK]
    assert "s3cret" not in trace and "amqp://app:***@rabbit:5672/" in trace


def test_a_reason_that_was_never_raised_sets_no_traceback_and_drops_an_old_one() -> None:
    assert wire.EXCEPTION_TRACEBACK not in headers_for("redelivered 5 times")
    assert wire.EXCEPTION_TRACEBACK not in headers_for(DeadLetter("not raised"))
    stale = headers_for("crash loop", **{wire.EXCEPTION_TRACEBACK: "an earlier failure"})
    assert wire.EXCEPTION_TRACEBACK not in stale


class UnknownSku(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        raise DeadLetter("unknown SKU 'X-1'")


async def test_a_pool_dead_letters_with_the_traceback_of_the_workers_exception(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    pool = make_pool(UnknownSku())
    await memory_backend.add_message(queue_name, {"sku": "X-1"}, MessageProperties())
    await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)
    [dead] = memory_backend.dead_letters(queue_name)
    trace = dead.properties.headers[wire.EXCEPTION_TRACEBACK]
    assert "in process\n    raise DeadLetter(\"unknown SKU 'X-1'\")" in trace
    assert trace.endswith("foxwork.errors.DeadLetter: unknown SKU 'X-1'\n")
