"""Test doubles shared by the unit tests."""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from foxwork import Message, MessageProperties, PublishNotConfirmed, Worker
from tests.support.waiting import wait_until


class RecordingSettler:
    """A `Settler` that records every call instead of talking to a broker.

    Args:
        confirm: when False, `publish_retry` and `publish_dead_letter` raise
            `PublishNotConfirmed`, like a broker that nacks the copy.
    """

    def __init__(self, *, confirm: bool = True) -> None:
        self.confirm = confirm
        self.calls: list[tuple[str, Any]] = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def ack_message(self, message: Message[Any]) -> None:
        self.calls.append(("ack", None))

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None:
        self.calls.append(("nack", requeue))

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        if not self.confirm:
            raise PublishNotConfirmed("the broker nacked the retry copy")
        self.calls.append(("publish_retry", delay))

    async def publish_dead_letter(self, message: Message[Any], headers: dict[str, Any]) -> None:
        if not self.confirm:
            raise PublishNotConfirmed("the broker nacked the dead letter")
        self.calls.append(("publish_dead_letter", headers))


def make_message(
    body: bytes = b"{}",
    *,
    settler: RecordingSettler | None = None,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = "application/json",
    queue: str = "orders",
    message_id: str | None = None,
    **kwargs: Any,
) -> Message[Any]:
    """A message as a backend would deliver it, settled through a `RecordingSettler`."""
    properties = MessageProperties(
        content_type=content_type, headers=dict(headers or {}), message_id=message_id
    )
    return Message(
        body, settler=settler or RecordingSettler(), properties=properties, queue=queue, **kwargs
    )


def raising(exc: BaseException) -> Callable[[Message[Any]], Any]:
    """A `call_next` that fails with `exc`."""

    async def call_next(message: Message[Any]) -> None:
        raise exc

    return call_next


async def succeed(message: Message[Any]) -> None:
    """A `call_next` that succeeds."""


class RecordingWorker(Worker[Any]):
    """Records the payload of each message it processes, in order."""

    def __init__(self, id: str | None = None, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.payloads: list[Any] = []
        self.messages: list[Message[Any]] = []

    async def process(self, message: Message[Any]) -> None:
        self.messages.append(message)
        self.payloads.append(message.payload)


class FailingWorker(Worker[Any]):
    """Raises `error` (an exception, or a factory of one) on each of its first `times`
    attempts, then succeeds. Records the `x-retry-attempt` header of every delivery."""

    def __init__(
        self, error: BaseException | Callable[[], BaseException], *, times: int = 10**9
    ) -> None:
        super().__init__()
        self.error = error
        self.times = times
        self.attempts: list[int] = []
        self.retry_headers: list[Any] = []
        self.succeeded = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.attempts.append(message.attempt)
        self.retry_headers.append(message.headers.get("x-retry-attempt"))
        if len(self.attempts) <= self.times:
            raise self.error if isinstance(self.error, BaseException) else self.error()
        self.succeeded.set()


@functools.cache
def compression_bomb(encoding: str, mib: int) -> bytes:
    """A gzip or deflate (zlib) body that inflates to `mib` MiB of zeros, about 1 KB per
    MiB. Built from one compressed MiB repeated (each copy ends with a full flush, so it
    stands alone), without ever holding the inflated bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    mebibyte = bytes(1 << 20)
    one = compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    deflated = one * mib + compressor.flush()
    if encoding == "gzip":
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(mebibyte, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        return header + deflated + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    adler = 1
    for _ in range(mib):
        adler = zlib.adler32(mebibyte, adler)
    return b"\x78\xda" + deflated + struct.pack(">I", adler)


#: Seconds a test waits for a condition before it fails.
WAIT = 5.0


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until `condition()` holds, checking after each turn of the event loop."""
    await wait_until(condition, timeout=timeout, interval=0)
