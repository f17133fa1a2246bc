"""A storm of retries on a real broker: every message fails once at the same time, so
hundreds of retry copies are in flight together on the publisher channel (publishes are
pipelined there, their confirms awaited one per message). Each message must come back
exactly once as attempt 2, no original may be acked without its copy, and the main and
retry queues end empty."""

from __future__ import annotations

import collections

from foxwork import MessageProperties, RetryLater, wire
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while

#: Messages of the storm: more than the prefetch, so copies and acks overlap deliveries.
STORM = 600
PREFETCH = 200
DELAY = 0.05


async def test_a_storm_of_retries_brings_every_message_back_exactly_once(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a backlog of messages that each fail once with RetryLater
    backend = await make_backend()
    await backend.declare(queue_name)
    ids = [f"s{i}" for i in range(STORM)]
    for message_id in ids:
        await backend.publish(queue_name, b"{}", MessageProperties(message_id=message_id))
    worker = Recorder(fail_while(lambda m: m.attempt == 1, lambda m: RetryLater(DELAY)))

    # When a pool works through them with a wide prefetch
    pool = await start_pool(
        backend,
        worker,
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=3)],
        prefetch=PREFETCH,
        concurrency_limit=PREFETCH,
    )
    await worker.wait_for(
        lambda w: len(w.processed) >= STORM, what="every message processed", timeout=60
    )

    # Then each message was delivered twice, attempts 1 and 2, and processed once
    attempts = collections.defaultdict(list)
    for delivery in worker.deliveries:
        attempts[delivery.id].append(delivery.attempt)
    assert sorted(attempts) == sorted(ids)
    wrong = {i: a for i, a in attempts.items() if sorted(a) != [1, 2]}
    assert not wrong, f"{len(wrong)} messages not delivered as attempts 1 and 2: {wrong}"
    assert sorted(worker.processed) == sorted(ids)
    # and nothing is left behind once the pool stopped (an original it had not acked would
    # be back in the queue): no original, no copy waiting for its delay, no dead letter
    await pool.shutdown(timeout=10)
    await backend.close()
    assert await probe.ready(queue_name) == 0
    retry_queue = wire.retry_queue_name(queue_name, wire.delay_tier_ms(DELAY))
    assert await probe.ready(retry_queue) == 0
    assert await probe.ready(f"{queue_name}-dlq") == 0
