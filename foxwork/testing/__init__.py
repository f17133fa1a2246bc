"""Testing foxwork workers: run a pool on an in-memory broker, with virtual retry delays.

`TestHarness` runs a copy of a pool (so a module-level pool runs in every test) on a
`MemoryBackend` whose retry delays pass on a `VirtualClock`; `join()` waits until every
queue is idle and re-raises what a worker raised. The pytest plugin (installed with
foxwork) adds the fixtures `foxwork_harness` (a running `TestHarness` of the pool your
`foxwork_pool` fixture returns) and `foxwork_rabbitmq_url` (a real, throwaway broker).

Example:
    from foxwork.testing import TestHarness
    from myapp import pool

    async def test_an_order_is_reserved():
        async with TestHarness(pool) as harness:
            await harness.publish({"sku": "A-1", "qty": 2}, queue="orders")
            await harness.join()
            assert harness.processed("orders")[0].payload == {"sku": "A-1", "qty": 2}
"""

from ..backends.memory import RetryClock, ScheduledRetry, StoredMessage
from ._clock import VirtualClock
from .harness import DEFAULT_TIMEOUT, Failure, TestHarness, fresh_pool

__all__ = [
    "DEFAULT_TIMEOUT",
    "Failure",
    "RetryClock",
    "ScheduledRetry",
    "StoredMessage",
    "TestHarness",
    "VirtualClock",
    "fresh_pool",
]
