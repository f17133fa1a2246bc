"""Recording what a test's workers and queues saw, the same way on every backend.

- `Received`: a message read back from a queue (not through foxwork), for assertions.
- `Recorder`: a worker that records each delivery (`Delivery`) and runs a scripted
  behaviour (`fail_while`); tests wait on its records (an `asyncio.Condition`), never on a
  sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from foxwork import Message, MessageProperties, Worker

from .waiting import DEFAULT_WAIT

__all__ = ["Behaviour", "Delivery", "Received", "Recorder", "fail_while"]

#: Deliveries a timeout message shows at most (a hot loop makes thousands).
_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class Received:
    """A message read back from a queue (not through foxwork), for assertions."""

    body: bytes
    properties: MessageProperties
    routing_key: str | None = None
    exchange: str | None = None
    redelivered: bool = False

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.properties.headers

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One call of `Recorder.process`: what the worker saw."""

    id: str
    attempt: int
    retry_attempt: Any
    redelivered: bool
    message_id: str | None
    routing_key: str
    exchange: str
    headers: Mapping[str, Any]
    properties: MessageProperties
    payload: Any
    at: float


#: What a `Recorder` does with a message: return to succeed, raise to fail.
Behaviour = Callable[[Message[Any]], Awaitable[None]]


async def _succeed(message: Message[Any]) -> None:
    return None


def fail_while(
    condition: Callable[[Message[Any]], bool],
    error: Callable[[Message[Any]], BaseException] = lambda m: RuntimeError("scripted failure"),
) -> Behaviour:
    """A behaviour that raises `error(message)` while `condition(message)` holds."""

    async def behaviour(message: Message[Any]) -> None:
        if condition(message):
            raise error(message)

    return behaviour


class Recorder(Worker[Any]):
    """Records every delivery, runs `behaviour`, and records the successes.

    Tests wait for what they need with `wait_for(predicate)`.
    """

    def __init__(self, behaviour: Behaviour = _succeed, *, id: str | None = None) -> None:
        super().__init__(id)
        self.behaviour = behaviour
        self.deliveries: list[Delivery] = []
        self.processed: list[str] = []
        self._changed = asyncio.Condition()

    async def process(self, message: Message[Any]) -> None:
        self.deliveries.append(
            Delivery(
                id=message.id,
                attempt=message.attempt,
                retry_attempt=message.headers.get("x-retry-attempt"),
                redelivered=message.redelivered,
                message_id=message.properties.message_id,
                routing_key=message.routing_key,
                exchange=message.exchange,
                headers=dict(message.headers),
                properties=message.properties,
                payload=message.payload,
                at=asyncio.get_running_loop().time(),
            )
        )
        await self._notify()
        await self.behaviour(message)
        self.processed.append(message.id)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def of(self, message_id: str) -> list[Delivery]:
        """The deliveries of one message, in order."""
        return [d for d in self.deliveries if d.id == message_id]

    async def wait_for(
        self, predicate: Callable[[Recorder], bool], *, what: str, timeout: float = DEFAULT_WAIT
    ) -> None:
        """Wait until `predicate(self)` holds; fail the test after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        except TimeoutError:
            deliveries = [(d.id, d.attempt) for d in self.deliveries]
            raise AssertionError(
                f"timed out after {timeout} s waiting until {what}; "
                f"{len(deliveries)} deliveries (last {_SHOWN}: {deliveries[-_SHOWN:]}), "
                f"{len(self.processed)} processed (last {_SHOWN}: {self.processed[-_SHOWN:]})"
            ) from None

    async def wait_processed(self, *ids: str, timeout: float = DEFAULT_WAIT) -> None:
        await self.wait_for(
            lambda r: all(i in r.processed for i in ids),
            what=f"{', '.join(ids)} processed",
            timeout=timeout,
        )
