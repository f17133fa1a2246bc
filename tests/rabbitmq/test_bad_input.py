"""Bad input on a real broker: each bad message ends in Q-dlq with a clear reason, once,
and the pool goes on with the next good message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from foxwork import MessageProperties, RetryLater, wire
from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.unit.helpers import compression_bomb

from .conftest import BackendFactory, PoolStarter
from .support import RabbitProbe, Recorder, fail_while, publish_without_message_id

#: The body limit the backend is configured with in these tests (bytes).
MAX_BODY_SIZE = 1_000_000


class Order(BaseModel):
    sku: str
    qty: int


class OrderWorker(Recorder):
    payload_model = Order


@dataclass(frozen=True)
class BadInput:
    body: bytes
    content_type: str = "application/json"
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: Fragments the x-failure-reason must contain.
    reason: tuple[str, ...] = ()


GOOD_BODY = b'{"sku": "B-2", "qty": 1}'

BAD_INPUTS = {
    "invalid JSON": BadInput(b'{"sku": "A-1", "qty": ', reason=("not valid JSON",)),
    "invalid UTF-8 text": BadInput(
        b"caf\xe9 \xff\xfe", content_type="text/plain", reason=("not valid utf-8 text",)
    ),
    "payload failing the model": BadInput(
        b'{"sku": "A-1", "qty": "many"}', reason=("does not match Order", "qty")
    ),
    "x-retry-attempt 'abc'": BadInput(
        GOOD_BODY, headers={"x-retry-attempt": "abc"}, reason=("x-retry-attempt", "abc")
    ),
    "x-retry-attempt -5": BadInput(
        GOOD_BODY, headers={"x-retry-attempt": -5}, reason=("x-retry-attempt", "-5")
    ),
    "x-retry-attempt 10**12": BadInput(
        GOOD_BODY, headers={"x-retry-attempt": 10**12}, reason=("x-retry-attempt", str(10**12))
    ),
    "5 MB body": BadInput(
        b'{"blob": "' + b"x" * 5_000_000 + b'"}',
        reason=("5000012 bytes", f"max_body_size of {MAX_BODY_SIZE} bytes"),
    ),
    "gzip body inflating to 50 MiB": BadInput(
        compression_bomb("gzip", 50),
        content_encoding="gzip",
        reason=("inflates to more than", f"max_body_size of {MAX_BODY_SIZE} bytes"),
    ),
    "JSON nested 100,000 deep": BadInput(
        b"[" * 100_000 + b"]" * 100_000, reason=("nested too deeply",)
    ),
    "JSON integer of 5,000 digits": BadInput(
        b'{"sku": "A-1", "qty": ' + b"7" * 5000 + b"}", reason=("integer", "4300 digits")
    ),
}


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_a_bad_message_is_dead_lettered_with_a_clear_reason_and_the_next_one_processed(
    bad: BadInput,
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a bad message, then a good one, for a worker with a payload model
    backend = await make_backend(max_body_size=MAX_BODY_SIZE)
    await backend.declare(queue_name)
    bad_properties = MessageProperties(
        content_type=bad.content_type,
        content_encoding=bad.content_encoding,
        message_id="bad",
        headers=bad.headers,
    )
    await backend.publish(queue_name, bad.body, bad_properties)
    await backend.publish(
        queue_name, GOOD_BODY, MessageProperties(content_type="application/json", message_id="good")
    )
    worker = OrderWorker()

    # When the pool runs them one at a time
    pool = await start_pool(backend, worker, concurrency_limit=1)
    await worker.wait_processed("good")
    await pool.shutdown(timeout=5)

    # Then the good message was processed, and the bad one never reached the worker
    assert worker.processed == ["good"]
    assert worker.deliveries[0].payload == Order(sku="B-2", qty=1)
    assert [d.id for d in worker.deliveries] == ["good"]
    # and is in Q-dlq, dead-lettered at once, with a reason that says what is wrong
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "bad"
    assert dead.body == bad.body
    reason = dead.headers["x-failure-reason"]
    for fragment in bad.reason:
        assert fragment in reason
    assert dead.headers["x-exception-type"] == "foxwork.errors.PoisonMessage"
    assert dead.headers["x-final-attempt"] == 1
    assert await probe.ready(queue_name) == 0


async def test_a_message_without_message_id_is_processed_and_its_copies_carry_a_generated_id(
    backend: RabbitMQBackend,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
    rabbitmq_url: str,
    request: pytest.FixtureRequest,
) -> None:
    # Given two messages without message_id (from a client that sets none): one fails
    # once, the other always
    await backend.declare(queue_name)
    for body in (b'{"fate": "retry"}', b'{"fate": "dead"}'):
        await publish_without_message_id(
            rabbitmq_url,
            queue_name,
            body,
            content_type="application/json",
            connection_name=request.node.nodeid,
        )
    worker = Recorder(fail_while(lambda m: m.payload["fate"] == "dead" or m.attempt == 1))

    # When the pool runs them with three attempts
    pool = await start_pool(backend, worker)
    await worker.wait_for(
        lambda r: len(r.processed) == 1 and len(r.deliveries) == 5, what="all five deliveries"
    )
    await pool.shutdown(timeout=5)

    # Then each arrived without a message_id, and got a generated id at once
    retried = [d for d in worker.deliveries if d.payload == {"fate": "retry"}]
    dead = [d for d in worker.deliveries if d.payload == {"fate": "dead"}]
    assert retried[0].message_id is None and retried[0].id
    assert dead[0].message_id is None and dead[0].id
    assert retried[0].id != dead[0].id
    # the retried copy carries that id, and the message was processed
    assert [d.message_id for d in retried] == [None, retried[0].id]
    assert worker.processed == [retried[0].id]
    # and so do the dead one's retries and its dead letter
    assert [d.message_id for d in dead] == [None, dead[0].id, dead[0].id]
    [dead_letter] = await probe.take(f"{queue_name}-dlq")
    assert dead_letter.message_id == dead[0].id
    assert dead_letter.body == b'{"fate": "dead"}'


async def test_a_retry_delay_past_the_maximum_waits_in_the_longest_tier_the_broker_accepts(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a worker asking for a retry in 31 years (a TTL RabbitMQ refuses)
    worker = Recorder(fail_while(lambda m: True, lambda m: RetryLater(delay=1e9)))
    await backend.declare(queue_name)
    await backend.publish(queue_name, b"{}", MessageProperties(message_id="later"))

    # When the pool runs it once
    await start_pool(backend, worker)
    retry_queue = f"{queue_name}-retry-{round(wire.MAX_RETRY_DELAY * 1000)}ms"
    await probe.wait_for_ready(retry_queue, 1)

    # Then the copy waits in the tier of the maximum delay, after a single delivery
    assert [d.message_id for d in worker.deliveries] == ["later"]
    assert await probe.ready(queue_name) == 0
