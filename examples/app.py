"""Several pools in one process: an `App` whose pools each consume their own queue, with
their own workers, middleware and queue settings, on one backend.

Here the backend is the in-memory one; on a broker, `foxwork run examples.app:app` with
`FOXWORK_URL` set serves the same App (the invoices queue declared as a quorum queue, the
events queue bound to the `events` exchange by `order.*`). Run it with
`python examples/app.py`.
"""

import asyncio
from typing import Any

from foxwork import App, Message, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware


class Invoices(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        print(f"invoice {message.payload['id']} sent")


class OrderEvents(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        print(f"order event {message.payload['event']} recorded")


app = App("billing")
app.add(
    WorkerPool(
        workers=[Invoices("invoices")],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=5)],
        name="invoices",
    ),
    queues=["invoices"],
    queue_type="quorum",
)
app.add(
    WorkerPool(workers=[OrderEvents("events")], middleware=[AckNackMiddleware()], name="events"),
    queues=["billing-events"],
    exchange="events",
    binding_keys=["order.*"],
)


async def main() -> None:
    backend = MemoryBackend(queues=list(app.queues))
    await backend.add_message("invoices", {"id": 1})
    await backend.add_message("billing-events", {"event": "order.created"})
    await app.start(backend)
    await backend.join("invoices", timeout=5)
    await backend.join("billing-events", timeout=5)
    await app.shutdown()
    print([pool["processed"] for pool in app.health()["pools"]])


if __name__ == "__main__":
    asyncio.run(main())
