"""The circuit breaker, written once and run on every backend: messages held through an
outage of their dependency are neither lost, dead-lettered, retried nor redelivered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from foxwork import Message, MessageProperties
from foxwork.backends import Backend
from foxwork.middleware import (
    AckNackMiddleware,
    CircuitBreakerMiddleware,
    CircuitState,
    RetryMiddleware,
)
from tests.support.recording import Recorder

from .conftest import Broker, PoolStarter
from .test_semantics import stop

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

#: Seconds the stubbed dependency is down once the pool starts.
OUTAGE = 3.0
MESSAGES = 40
CONCURRENCY = 4
FAILURE_THRESHOLD = 3


async def test_an_open_circuit_holds_messages_through_an_outage_and_loses_or_dead_letters_none(
    backend: Backend, broker: Broker, start_pool: PoolStarter, queue_name: str
) -> None:
    # Given 40 messages waiting, and a dependency that is down for 3 s once the pool starts
    ids = [f"m{i:02d}" for i in range(MESSAGES)]
    for message_id in ids:
        properties = MessageProperties(content_type="application/json", message_id=message_id)
        await broker.publish(queue_name, b"{}", properties)
    loop = asyncio.get_running_loop()
    changes: list[tuple[float, CircuitState, CircuitState]] = []
    breaker = CircuitBreakerMiddleware(
        failure_threshold=FAILURE_THRESHOLD,
        recovery_timeout=0.5,
        on_state_change=lambda old, new: changes.append((loop.time(), old, new)),
    )
    outage_ends = time.monotonic() + OUTAGE

    async def dependency(message: Message[Any]) -> None:
        if time.monotonic() < outage_ends:
            raise ConnectionError("dependency down")

    worker = Recorder(dependency)

    # When a pool of 4 consumes them behind AckNack, the breaker and Retry
    pool = await start_pool(
        worker,
        middleware=[
            AckNackMiddleware(),
            breaker,
            RetryMiddleware(max_attempts=3, initial_backoff=0.2, jitter=0.0),
        ],
        concurrency_limit=CONCURRENCY,
    )
    await worker.wait_for(
        lambda r: set(r.processed) == set(ids), what="all 40 processed", timeout=OUTAGE + 8
    )
    await stop(pool, backend)

    # Then the circuit opened, probed (reopening while the dependency was still down), and
    # closed once a probe succeeded
    path = [(old, new) for _, old, new in changes]
    assert path[0] == (CLOSED, OPEN)
    assert path[-2:] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    reopened = path.count((HALF_OPEN, OPEN))
    assert path[1:-2] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)] * reopened
    assert list(breaker.transitions)[-1][1:] == (HALF_OPEN, CLOSED)
    assert breaker.state is CLOSED
    # and every message succeeded exactly once, after the last probe began
    assert sorted(worker.processed) == ids
    last_half_open = changes[-2][0]
    assert all(worker.of(i)[-1].at >= last_half_open for i in ids)
    # and the failed calls are bounded: in CLOSED, the threshold plus the calls already in
    # flight when the circuit opened (at most concurrency - 1); then one probe per HALF_OPEN
    # that reopened. Held messages are not called, not retried and not redelivered.
    failed_calls = len(worker.deliveries) - len(worker.processed)
    bound = FAILURE_THRESHOLD + (CONCURRENCY - 1) + reopened
    redelivered = sum(d.redelivered for d in worker.deliveries)
    retried = [d for d in worker.deliveries if d.retry_attempt is not None]
    counts = (
        f"calls={len(worker.deliveries)} failed={failed_calls} bound={bound} "
        f"reopened={reopened} redelivered={redelivered} retry_copies={len(retried)}"
    )
    assert len(worker.deliveries) <= MESSAGES + bound, counts
    assert redelivered == 0, counts
    # only the failures in CLOSED consumed an attempt (a failed probe consumes none)
    assert all(d.retry_attempt == 1 for d in retried)
    assert len({d.id for d in retried}) <= FAILURE_THRESHOLD + CONCURRENCY - 1
    # and nothing was dead-lettered, nothing is left in the queue or a retry tier
    assert await broker.messages(queue_name) == []
    assert await broker.messages(f"{queue_name}-dlq") == []
    assert await broker.waiting_retries(queue_name) == 0
