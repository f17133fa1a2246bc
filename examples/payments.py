"""Payments behind a circuit breaker and a timeout, on the in-memory backend.

The payment provider is down for a moment: after three failures in a row the circuit
opens, and the next payments wait (they are not failed, not dead-lettered, not retried)
until a probe finds the provider healthy again. A call that hangs is cut off by the
worker's `processing_timeout` and retried. Run it with `python examples/payments.py`.
"""

import asyncio
import logging
import time

from pydantic import BaseModel

from foxwork import Message, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitBreakerMiddleware,
    CircuitState,
    RetryMiddleware,
)


class Payment(BaseModel):
    payment_id: int
    amount_cents: int


class PaymentProvider:
    """A stand-in for an HTTP API: down for `outage` seconds, and one call hangs."""

    def __init__(self, outage: float) -> None:
        self.down_until = time.monotonic() + outage
        self.hung_once = False

    async def charge(self, payment: Payment) -> None:
        if time.monotonic() < self.down_until:
            raise ConnectionError("payment provider unavailable")
        if payment.payment_id == 7 and not self.hung_once:
            self.hung_once = True
            await asyncio.sleep(3600)  # hangs: the worker's timeout cuts it off


class PaymentWorker(Worker[Payment]):
    payload_model = Payment
    processing_timeout = 0.5  # seconds; a hung call is a failure, and so retried

    def __init__(self, provider: PaymentProvider) -> None:
        super().__init__()
        self.provider = provider
        self.charged: list[int] = []

    async def process(self, message: Message[Payment]) -> None:
        await self.provider.charge(message.payload)
        self.charged.append(message.payload.payment_id)


def show(old: CircuitState, new: CircuitState) -> None:
    print(f"circuit {old.name} -> {new.name}")


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    backend = MemoryBackend()
    for payment_id in range(1, 11):
        await backend.add_message("payments", Payment(payment_id=payment_id, amount_cents=995))

    worker = PaymentWorker(PaymentProvider(outage=0.3))
    breaker = CircuitBreakerMiddleware(
        failure_threshold=3, recovery_timeout=0.5, on_state_change=show
    )
    pool = WorkerPool(
        workers=[worker],
        # Retry inside the breaker: failures before the circuit opens are retried;
        # messages held while it is open use up no attempt.
        middleware=[AckNackMiddleware(), breaker, RetryMiddleware(initial_backoff=0.1)],
        concurrency_limit=2,
        queues=["payments"],
    )
    async with backend:
        await pool.start(backend)
        await backend.join("payments", timeout=30)
        await pool.shutdown()

    print(f"charged {len(set(worker.charged))} of 10 payments; circuit is {breaker.state.name}")
    print(f"dead letters: {len(backend.dead_letters('payments'))}")


if __name__ == "__main__":
    asyncio.run(main())
