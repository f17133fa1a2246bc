"""Orders from RabbitMQ: retries through TTL retry queues, a dead letter, the DLQ API.

Needs a broker: `FOXWORK_URL=amqp://guest:guest@127.0.0.1:5672/ python examples/rabbitmq_orders.py`.
It declares `example-orders` with its retry exchange, retry queues and `example-orders-dlq`,
publishes five orders (one fails twice before it succeeds, one names an unknown SKU),
processes them, and then lists and purges the dead letters.
"""
# requires: rabbitmq

import asyncio
import logging
import os

from pydantic import BaseModel

from foxwork import DeadLetter, Message, MessageProperties, Worker, WorkerPool
from foxwork.backends import RabbitMQBackend, ResilientBackend
from foxwork.backends.rabbitmq.dlq import DeadLetterQueue
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

QUEUE = "example-orders"


class Order(BaseModel):
    order_id: int
    sku: str


class OrderWorker(Worker[Order]):
    payload_model = Order

    def __init__(self, done: asyncio.Event, expected: int) -> None:
        super().__init__()
        self.done = done
        self.expected = expected
        self.settled = 0

    async def process(self, message: Message[Order]) -> None:
        try:
            order = message.payload
            if order.sku == "ZZ-404":
                raise DeadLetter(f"unknown SKU {order.sku!r}")
            if order.order_id == 2 and message.attempt < 3:
                raise ConnectionError("warehouse API unavailable")
            print(f"order {order.order_id} shipped (attempt {message.attempt})")
        finally:
            if message.attempt == 3 or message.payload.order_id != 2:
                self.settled += 1
                if self.settled == self.expected:
                    self.done.set()


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    url = os.environ["FOXWORK_URL"]
    backend = ResilientBackend(RabbitMQBackend(url=url, queue=QUEUE))
    done = asyncio.Event()
    pool = WorkerPool(
        workers=[OrderWorker(done, expected=5)],
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=3, initial_backoff=0.2, jitter=0),
        ],
    )
    async with backend:
        await backend.declare(QUEUE)
        for order_id, sku in enumerate(["AB-1", "CD-2", "ZZ-404", "EF-3", "GH-4"], start=1):
            body = Order(order_id=order_id, sku=sku).model_dump_json().encode()
            props = MessageProperties(content_type="application/json", message_id=f"o{order_id}")
            await backend.publish(QUEUE, body, props)  # confirmed by the broker
        await pool.start(backend)
        await asyncio.wait_for(done.wait(), timeout=30)
        await pool.shutdown()

    async with DeadLetterQueue(url, QUEUE) as dlq:
        for letter in await dlq.list():
            print(f"dead letter {letter.id}: {letter.reason} (attempt {letter.final_attempt})")
        print(f"purged {await dlq.purge()} dead letter(s)")


if __name__ == "__main__":
    asyncio.run(main())
