"""MemoryBackend: the in-process broker keeps RabbitMQ's observable semantics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foxwork import (
    ConfigurationError,
    ConnectionLost,
    Message,
    MessageProperties,
    PoisonMessage,
    PublishNotConfirmed,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import RecordingWorker, compression_bomb

SOON = 2.0
#: Retry delays of milliseconds, so a retried message comes back at once.
FAST = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}


class Inbox:
    """An `Intake` that keeps every delivery, unsettled, for the test to settle."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[Message[Any]] = asyncio.Queue()

    async def dispatch(self, message: Message[Any]) -> None:
        self.deliveries.put_nowait(message)

    def try_dispatch(self, message: Message[Any]) -> bool:
        self.deliveries.put_nowait(message)
        return True

    async def next(self) -> Message[Any]:
        return await asyncio.wait_for(self.deliveries.get(), SOON)


def test_max_body_size_below_one_byte_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_body_size=0 must be at least 1 byte"):
        MemoryBackend(max_body_size=0)


async def test_it_works_as_an_async_context_manager() -> None:
    # Given
    backend = MemoryBackend()

    # When / Then
    async with backend as connected:
        assert connected is backend and backend.is_connected
    assert not backend.is_connected


async def test_deliveries_carry_the_message_and_its_origin(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    props = MessageProperties(message_id="m-1", headers={"x-tenant": "acme"})
    await memory_backend.add_message(queue_name, {"sku": "A-1"}, props)
    inbox = Inbox()

    # When
    await memory_backend.consume(queue_name, inbox, prefetch=1)
    message = await inbox.next()

    # Then
    assert message.body == b'{"sku":"A-1"}'
    assert message.payload == {"sku": "A-1"}
    assert message.properties.content_type == "application/json"
    assert (message.id, message.queue, message.routing_key) == ("m-1", queue_name, queue_name)
    assert message.headers == {"x-tenant": "acme"}
    assert (message.attempt, message.redelivered, message.exchange) == (1, False, "")


async def test_messages_are_delivered_in_queue_order(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    for n in range(5):
        await memory_backend.add_message(queue_name, n)
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=5)

    # When
    received = [await inbox.next() for _ in range(5)]

    # Then
    assert [m.payload for m in received] == [0, 1, 2, 3, 4]


async def test_at_most_prefetch_deliveries_are_unsettled_at_a_time(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given three messages and a prefetch of two
    for n in range(3):
        await memory_backend.add_message(queue_name, n)
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=2)
    first, second = await inbox.next(), await inbox.next()

    # Then the third waits in the queue
    assert memory_backend.messages(queue_name)[0].body == b"2"
    assert inbox.deliveries.empty()

    # When one is acked, the third is delivered
    await first.ack()
    third = await inbox.next()
    assert third.payload == 2
    await second.ack()
    await third.ack()
    await memory_backend.join(queue_name, timeout=SOON)


async def test_a_nack_with_requeue_redelivers_first_and_marked_redelivered(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    await memory_backend.add_message(queue_name, "a")
    await memory_backend.add_message(queue_name, "b")
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=1)
    first = await inbox.next()

    # When
    await first.nack(requeue=True)

    # Then
    again = await inbox.next()
    assert again.payload == "a" and again.redelivered
    assert not again.came_back_unsettled  # foxwork put it back itself: no crash
    await again.ack()
    assert (await inbox.next()).payload == "b"


async def test_a_nack_without_requeue_discards_the_message(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    await memory_backend.add_message(queue_name, "a")
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=1)

    # When
    await (await inbox.next()).reject()

    # Then
    await memory_backend.join(queue_name, timeout=SOON)
    assert memory_backend.depth(queue_name) == 0
    assert memory_backend.dead_letters(queue_name) == []


async def test_a_retried_copy_comes_back_after_its_delay_with_the_attempt_header(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a first delivery
    await memory_backend.add_message(
        queue_name, "job", MessageProperties(headers={"x-tenant": "acme"})
    )
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=1)
    first = await inbox.next()

    # When it is retried after 10 ms
    assert await first.retry(0.01)

    # Then it is counted as waiting, then comes back as attempt 2 with the same id
    assert memory_backend.depth(queue_name) == 1
    assert memory_backend.retried[queue_name] == 1
    second = await inbox.next()
    assert second.attempt == 2
    assert second.headers == {
        "x-tenant": "acme",
        "x-retry-attempt": 1,
        "x-original-routing-key": queue_name,
        "x-original-exchange": "",
    }
    assert second.id == first.id
    await second.ack()
    await memory_backend.join(queue_name, timeout=SOON)


async def test_a_retried_copy_drops_the_headers_a_broker_set_as_on_rabbitmq(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a delivery carrying a broker's delivery count and dead-letter history
    headers = {"x-tenant": "acme", "x-delivery-count": 3, "x-death": [{"queue": "other"}]}
    await memory_backend.add_message(queue_name, "job", MessageProperties(headers=headers))
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=1)

    # When it is retried
    assert await (await inbox.next()).retry(0.01)

    # Then the copy keeps the publisher's headers only, plus the retry's own
    second = await inbox.next()
    assert second.headers.keys() == {
        "x-tenant",
        "x-retry-attempt",
        "x-original-routing-key",
        "x-original-exchange",
    }
    await second.ack()


async def test_a_dead_letter_lands_in_the_dlq_with_its_headers(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    await memory_backend.add_message(queue_name, "job")
    inbox = Inbox()
    await memory_backend.consume(queue_name, inbox, prefetch=1)

    # When
    assert await (await inbox.next()).dead_letter("broken")

    # Then
    await memory_backend.join(queue_name, timeout=SOON)
    [dead] = memory_backend.dead_letters(queue_name)
    assert dead.body == b"job"
    assert dead.routing_key == f"{queue_name}-dlq"
    assert dead.headers["x-failure-reason"] == "broken"
    assert dead.headers["x-original-queue"] == queue_name


async def test_publishing_to_a_queue_that_does_not_exist_is_not_confirmed(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await memory_backend.publish(queue_name, b"x")
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await memory_backend.publish(queue_name, b"x", exchange="amq.topic")


async def test_publish_to_a_declared_queue_enqueues_it(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    await memory_backend.declare(queue_name)

    # When
    await memory_backend.publish(queue_name, b"x", MessageProperties(priority=1))

    # Then
    [stored] = memory_backend.messages(queue_name)
    assert (stored.body, stored.properties.priority) == (b"x", 1)
    assert memory_backend.dead_letters(queue_name) == []


async def test_a_disconnected_backend_refuses_to_publish_or_consume(queue_name: str) -> None:
    # Given
    backend = MemoryBackend(queues=[queue_name])

    # When / Then
    with pytest.raises(ConnectionLost, match="call connect\\(\\) first"):
        await backend.publish(queue_name, b"x")
    with pytest.raises(ConnectionLost):
        await backend.consume(queue_name, Inbox(), prefetch=1)
    assert backend.health()["connected"] is False


async def test_messages_can_be_preloaded_before_connecting(queue_name: str) -> None:
    # Given
    backend = MemoryBackend()

    # When
    await backend.enqueue_with_properties(queue_name, b"early", MessageProperties())

    # Then
    assert [m.body for m in backend.messages(queue_name)] == [b"early"]


async def test_close_puts_unsettled_deliveries_back_marked_redelivered(queue_name: str) -> None:
    # Given a delivery nobody settled
    backend = MemoryBackend()
    await backend.connect()
    await backend.add_message(queue_name, "a")
    inbox = Inbox()
    consumer = await backend.consume(queue_name, inbox, prefetch=1)
    await inbox.next()

    # When
    await backend.close()
    await backend.close()

    # Then
    assert not consumer.active
    [stored] = backend.messages(queue_name)
    assert stored.redelivered
    assert backend.depth(queue_name) == 1
    # and the next delivery says it came back unsettled (its consumer's connection died)
    await backend.connect()
    await backend.consume(queue_name, inbox, prefetch=1)
    again = await inbox.next()
    assert again.redelivered and again.came_back_unsettled
    await backend.close()


async def test_cancel_stops_delivering_and_is_idempotent(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given
    inbox = Inbox()
    consumer = await memory_backend.consume(queue_name, inbox, prefetch=1)
    assert consumer.active and consumer.queue == queue_name

    # When
    await consumer.cancel()
    await consumer.cancel()
    await memory_backend.add_message(queue_name, "late")

    # Then
    assert not consumer.active
    assert inbox.deliveries.empty()
    assert len(memory_backend.messages(queue_name)) == 1


async def test_join_times_out_saying_how_busy_the_queue_is(
    memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a queue with one waiting message
    await memory_backend.add_message(queue_name, "a")

    # When / Then
    with pytest.raises(TimeoutError, match="1 ready, 0 unacked, 0 delayed"):
        await memory_backend.join(queue_name, timeout=0.01)


async def test_an_oversize_body_is_delivered_marked_as_poison(queue_name: str) -> None:
    # Given
    backend = MemoryBackend(max_body_size=4)
    await backend.connect()
    await backend.enqueue_with_properties(queue_name, b"12345", MessageProperties())
    inbox = Inbox()
    await backend.consume(queue_name, inbox, prefetch=1)

    # When
    message = await inbox.next()

    # Then
    assert message.poison == "body of 5 bytes exceeds max_body_size of 4 bytes"
    await message.ack()
    await backend.close()


# -- bad input through a pool: dead-lettered after one attempt, never retried ------------

#: Bodies the JSON decoder cannot handle, and a fragment of the reason each must carry.
BAD_JSON = {
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "integer of 5,000 digits": (b'{"qty": ' + b"7" * 5000 + b"}", "integer"),
}


@pytest.mark.parametrize(("body", "reason"), BAD_JSON.values(), ids=BAD_JSON.keys())
async def test_json_the_decoder_cannot_handle_is_dead_lettered_after_one_attempt(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str, body: bytes, reason: str
) -> None:
    # Given a JSON message the decoder cannot handle, for a worker that reads its payload
    worker = RecordingWorker()
    pool = make_pool(worker, middleware=[AckNackMiddleware(), RetryMiddleware(**FAST)])
    properties = MessageProperties(content_type="application/json", message_id="bad")
    await memory_backend.enqueue_with_properties(queue_name, body, properties)

    # When the pool runs it
    failures = await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then it was tried once, never retried, and is in the DLQ with a clear reason
    assert [type(exc) for exc in failures.exceptions] == [PoisonMessage]
    assert memory_backend.retried[queue_name] == 0
    [dead] = memory_backend.dead_letters(queue_name)
    assert reason in dead.headers["x-failure-reason"]
    assert dead.headers["x-exception-type"] == "foxwork.errors.PoisonMessage"
    assert dead.headers["x-final-attempt"] == 1


async def test_a_compression_bomb_is_dead_lettered_with_the_limit_named(
    make_pool: PoolFactory, make_memory_backend: Any, queue_name: str
) -> None:
    # Given a 50 KB gzip body inflating to 50 MiB, on a backend with a 1 MB body limit
    backend = await make_memory_backend(max_body_size=1_000_000)
    worker = RecordingWorker()
    pool = make_pool(worker, middleware=[AckNackMiddleware(), RetryMiddleware(**FAST)])
    properties = MessageProperties(content_type="application/json", content_encoding="gzip")
    await backend.enqueue_with_properties(queue_name, compression_bomb("gzip", 50), properties)

    # When the pool runs it
    await run_until_idle(pool, backend, queue_name, expect_failures=True)

    # Then it is in the DLQ after one attempt, the reason naming the limit
    assert worker.payloads == []
    [dead] = backend.dead_letters(queue_name)
    assert "max_body_size of 1000000 bytes" in dead.headers["x-failure-reason"]
    assert dead.headers["x-final-attempt"] == 1
    assert backend.retried[queue_name] == 0
