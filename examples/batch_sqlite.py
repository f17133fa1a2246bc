"""Batch database updates: stock levels written to SQLite 50 rows per transaction.

`BatchMiddleware` parks messages until 50 are waiting (or 0.2 s passed), hands them to the
handler in one call, and settles each message by the batch's outcome. A row the database
refuses fails only its own message, which is retried and then dead-lettered; the others
are acked. Run it with `python examples/batch_sqlite.py`.
"""

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.backends import MemoryBackend
from foxwork.middleware import (
    AckNackMiddleware,
    BatchMiddleware,
    BatchResult,
    RetryMiddleware,
)


class StockWriter:
    """Writes a batch of stock updates in one transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.batches: list[int] = []

    async def process_batch(self, batch: Sequence[Message[Any]]) -> BatchResult | None:
        self.batches.append(len(batch))
        failed: dict[str, BaseException] = {}
        with self.db:  # one transaction per batch
            for message in batch:
                row = message.payload
                try:
                    self.db.execute(
                        "INSERT INTO stock (sku, quantity) VALUES (?, ?) "
                        "ON CONFLICT (sku) DO UPDATE SET quantity = excluded.quantity",
                        (row["sku"], row["quantity"]),
                    )
                except sqlite3.IntegrityError as exc:
                    failed[message.id] = exc  # only this message fails
        return BatchResult(failed=failed) if failed else None


class Unused(Worker[Any]):
    """The batch handler replaces the worker; a pool still needs one."""

    async def process(self, message: Message[Any]) -> None:
        raise AssertionError("not called behind BatchMiddleware")


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the pool logs each failed attempt at WARNING
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, quantity INTEGER CHECK (quantity >= 0))")
    backend = MemoryBackend()
    for n in range(200):
        quantity = -1 if n == 42 else n % 17  # one update the CHECK constraint refuses
        await backend.add_message("stock", {"sku": f"SKU-{n:03}", "quantity": quantity})

    writer = StockWriter(db)
    pool = WorkerPool(
        workers=[Unused()],
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=2, initial_backoff=0.05),
            BatchMiddleware(writer, batch_size=50, flush_interval=0.2),
        ],
        concurrency_limit=50,  # at least the batch size, or a batch can never fill
        queues=["stock"],
    )
    async with backend:
        await pool.start(backend)
        await backend.join("stock", timeout=30)
        await pool.shutdown()

    (rows,) = db.execute("SELECT COUNT(*) FROM stock").fetchone()
    print(f"batches: {writer.batches}")
    print(f"rows written: {rows}; dead letters: {len(backend.dead_letters('stock'))}")


if __name__ == "__main__":
    asyncio.run(main())
