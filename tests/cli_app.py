"""Pools for the command-line tests: `foxwork run tests.cli_app:pool` and friends."""

from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.middleware import AckNackMiddleware

QUEUE = "cli-test"


class EchoWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        print(f"processed {message.payload!r}")


def make_pool() -> WorkerPool:
    return WorkerPool(
        workers=[EchoWorker("echo")],
        middleware=[AckNackMiddleware()],
        queues=[QUEUE],
        name="cli-test",
    )


pool = make_pool()

not_a_pool = 42


def returns_something_else() -> str:
    return "a string"


async def async_factory() -> WorkerPool:
    return make_pool()
