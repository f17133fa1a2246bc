"""Copies foxwork publishes before it acks an original (retry and dead-letter copies), on a
real broker: a returned copy is never taken for a confirmed one, a copy foxwork cannot
encode or the broker always refuses never holds a slot or loops forever, and a retried
copy carries no broker bookkeeping headers."""

from __future__ import annotations

from foxwork import DeadLetter, MessageProperties
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.backends.rabbitmq.publishing import REFUSED_COPY_LIMIT
from foxwork.middleware import AckNackMiddleware

from .conftest import BackendFactory, PoolStarter, UserFactory
from .support import RabbitProbe, Recorder, fail_while, wait_until

#: Messages published through the fanout exchange in the returned-copy scenario.
FANOUT_MESSAGES = 200


async def test_a_returned_copy_is_never_taken_for_another_copy_of_the_same_message(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a fanout exchange feeding two foxwork queues, so every message arrives twice
    # with one message_id, and the dead-letter queue of the first one deleted
    lost_dlq, kept = f"{queue_name}-a", f"{queue_name}-b"
    backend = await make_backend(
        queue=[lost_dlq, kept], exchange=f"{queue_name}-fanout", exchange_type="fanout"
    )
    worker = Recorder(fail_while(lambda m: True, lambda m: DeadLetter("scripted")))
    pool = await start_pool(
        backend, worker, middleware=[AckNackMiddleware()], prefetch=50, concurrency_limit=100
    )
    await probe.delete_queues(f"{lost_dlq}-dlq")

    # When every delivery is dead-lettered at once: the copy of one queue is routable, the
    # copy of the other (same message_id, in flight on the same publisher) is returned
    ids = [f"m{i}" for i in range(FANOUT_MESSAGES)]
    for message_id in ids:
        await backend.publish(
            "", b"{}", MessageProperties(message_id=message_id), exchange=f"{queue_name}-fanout"
        )

    async def all_dead_lettered() -> bool:
        return (await probe.ready(f"{kept}-dlq") or 0) >= FANOUT_MESSAGES

    await wait_until(all_dead_lettered, what="every copy of the kept queue dead-lettered")
    await pool.shutdown(timeout=5)

    # Then no message was acked on the strength of a copy the broker returned: every one is
    # still in the queue whose dead-letter queue is gone, and in the other one's DLQ
    still_there = {r.message_id for r in await probe.take(lost_dlq)}
    lost = sorted(set(ids) - still_there, key=lambda i: int(i[1:]))
    assert not lost, f"{len(lost)} of {FANOUT_MESSAGES} messages lost: {lost[:20]}"
    # (each exactly once: no routed copy was taken for a returned one and published again)
    dead = [r.message_id for r in await probe.take(f"{kept}-dlq")]
    assert sorted(dead) == sorted(ids)


class _Latin1(str):
    """A header value a foreign publisher sends as an AMQP long string that is not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str(self).encode("latin-1")


async def test_a_header_that_is_not_utf8_goes_out_again_on_the_retried_copy_byte_for_byte(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a message whose header is a long string holding "café" in Latin-1, not UTF-8
    await backend.declare(queue_name)
    await probe.publish(
        b"{}", routing_key=queue_name, message_id="legacy", headers={"x-legacy": _Latin1("café")}
    )

    # When its first attempt fails, so foxwork publishes a retry copy of it
    worker = Recorder(fail_while(lambda m: m.attempt == 1))
    await start_pool(backend, worker)

    # Then the copy was published (the message is not stuck unsettled) and processed, with
    # the header's bytes unchanged
    await worker.wait_processed("legacy")
    first, second = worker.of("legacy")
    assert first.headers["x-legacy"] == second.headers["x-legacy"] == b"caf\xe9"
    assert second.attempt == 2


async def test_a_retried_copy_does_not_carry_the_brokers_delivery_count(
    backend: RabbitMQBackend, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a message delivered with a quorum queue's delivery count (here set by hand)
    await backend.declare(queue_name)
    await probe.publish(
        b"{}", routing_key=queue_name, message_id="counted", headers={"x-delivery-count": 3}
    )

    # When its first attempt fails and it is retried through the retry queue
    worker = Recorder(fail_while(lambda m: m.attempt == 1))
    await start_pool(backend, worker)
    await worker.wait_processed("counted")

    # Then the copy starts with no delivery count: it was never delivered before
    first, second = worker.of("counted")
    assert first.headers["x-delivery-count"] == 3
    assert "x-delivery-count" not in second.headers
    assert second.retry_attempt == 1


async def test_a_message_published_by_another_user_is_retried_without_that_user_id(
    make_backend: BackendFactory,
    make_user: UserFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a message another broker user published with its own user_id (the broker
    # refuses any publish whose user_id is not the connection's user)
    backend = await make_backend()
    await backend.declare(queue_name)
    other, other_url = make_user()
    publisher = await make_backend(url=other_url, connection_name=f"{queue_name}-publisher")
    await publisher.publish(queue_name, b"{}", MessageProperties(message_id="x", user_id=other))

    # When its first attempt fails, so the consumer (logged in as another user) retries it
    worker = Recorder(fail_while(lambda m: m.attempt == 1))
    await start_pool(backend, worker)

    # Then the retry copy was accepted and processed; it carries no user_id the consumer's
    # connection could not vouch for
    await worker.wait_processed("x")
    first, second = worker.of("x")
    assert first.properties.user_id == other
    assert second.properties.user_id is None
    assert len(worker.deliveries) == 2


async def test_a_copy_the_broker_always_refuses_sends_its_original_to_the_dlq_after_a_few_tries(
    make_backend: BackendFactory,
    make_user: UserFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a consumer whose user may not publish to the default exchange, so the broker
    # refuses every dead-letter copy it publishes (they go to Q-dlq through it)
    admin = await make_backend()
    await admin.declare(queue_name)
    _, url = make_user(write=r"^(?!amq\.default$).*")
    backend = await make_backend(url=url)
    await probe.publish(b"{}", routing_key=queue_name, message_id="refused")

    # When the message is dead-lettered by its worker every time
    worker = Recorder(fail_while(lambda m: True, lambda m: DeadLetter("scripted")))
    await start_pool(backend, worker)

    # Then after a bounded number of refused copies the original is rejected, and the
    # queue's dead-letter exchange puts it in Q-dlq (not requeued forever)
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    assert len(worker.of("refused")) == REFUSED_COPY_LIMIT
    assert await probe.ready(queue_name) == 0
