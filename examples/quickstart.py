"""Quick start: a publisher, a typed worker, acks, a retry and a dead letter, on the in-memory
backend.

Run it with `python examples/quickstart.py`; no broker needed.
"""

import asyncio
import logging

from pydantic import BaseModel

from foxwork import DeadLetter, Message, Publisher, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware


class Order(BaseModel):
    order_id: int
    sku: str
    quantity: int


class OrderWorker(Worker[Order]):
    payload_model = Order  # message.payload arrives validated, as an Order

    async def process(self, message: Message[Order]) -> None:
        order = message.payload
        if order.sku == "ZZ-404":
            raise DeadLetter(f"unknown SKU {order.sku!r}")  # no retry: straight to orders-dlq
        if order.order_id == 2 and message.attempt == 1:
            raise ConnectionError("inventory service timed out")  # retried after a backoff
        print(
            f"order {order.order_id}: reserved {order.quantity} x {order.sku} "
            f"(attempt {message.attempt}, {self.id})"
        )


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    backend = MemoryBackend(queues=["orders"])
    orders = (
        Order(order_id=1, sku="AB-12", quantity=2),
        Order(order_id=2, sku="CD-34", quantity=1),
        Order(order_id=3, sku="ZZ-404", quantity=5),
    )
    pool = WorkerPool(
        workers=[OrderWorker(), OrderWorker()],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=3, initial_backoff=0.1)],
        queues=["orders"],
    )
    async with backend:
        publisher = Publisher(backend)  # the same Publisher publishes to RabbitMQ
        for order in orders:
            await publisher.publish(order, routing_key="orders")  # JSON, with a message id
        await pool.start(backend)
        await backend.join("orders", timeout=10)  # every message settled, no retry pending
        await pool.shutdown()

    for dead in backend.dead_letters("orders"):
        print(f"dead letter: {dead.body.decode()} ({dead.headers['x-failure-reason']})")


if __name__ == "__main__":
    asyncio.run(main())
