"""The application the deployment recipes in this folder run: `foxwork run orders:make_pool`.

A typed worker on the queue `orders`, with the standard chain (acks, retries through the
broker, then `orders-dlq`). The broker URL comes from `$FOXWORK_URL`, set by the recipe
(a Kubernetes Secret, or the compose file); nothing here knows it.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from foxwork import DeadLetter, Message, Worker, WorkerPool
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

logger = logging.getLogger("orders")

QUEUE = "orders"


class Order(BaseModel):
    order_id: int
    sku: str
    quantity: int = 1


class OrderWorker(Worker[Order]):
    payload_model = Order

    async def process(self, message: Message[Order]) -> None:
        order = message.payload
        if order.quantity < 1:
            raise DeadLetter(f"order {order.order_id}: quantity {order.quantity} is not positive")
        logger.info("order %s: reserved %d x %s", order.order_id, order.quantity, order.sku)


def make_pool() -> WorkerPool:
    """A fresh pool on each call: `foxwork run` calls it once per process."""
    return WorkerPool(
        workers=[OrderWorker() for _ in range(4)],
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=5)],
        concurrency_limit=32,
        queues=[QUEUE],
    )
