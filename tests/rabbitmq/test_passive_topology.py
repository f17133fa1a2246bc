"""Queues foxwork attaches to passively (`topology="passive"`) on a real broker: a queue
another application declared, without foxwork's dead-letter arguments, is consumed to the
end; what fails reaches `Q-dlq` with the usual headers, never through the queue's own
dead-letter exchange (it has none: the broker would drop the message). Also: a missing
passive queue, and one backend serving differently configured queues at once."""

from __future__ import annotations

import aio_pika
import aiormq
import pytest

from foxwork import DeadLetter, MessageProperties, TopologyConflict, wire
from foxwork.backends import QueueSettings, QueueType, TopologyMode
from foxwork.backends.rabbitmq.publishing import REFUSED_COPY_LIMIT
from foxwork.middleware import AckNackMiddleware, AckPolicy, RetryMiddleware
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import BackendFactory, PoolStarter, UserFactory
from .support import RabbitProbe, Recorder, fail_while

#: Messages the pre-existing queue holds when foxwork attaches to it.
MESSAGES = 500
#: Every this many messages, one fails on every attempt.
FAILING_EVERY = 50


def retry_fast(max_attempts: int = 3) -> RetryMiddleware:
    return RetryMiddleware(
        max_attempts=max_attempts, initial_backoff=0.05, max_backoff=0.2, jitter=0.0
    )


async def fill(probe: RabbitProbe, queue: str, count: int) -> None:
    """Publish `count` messages `m0`, `m1`, ... to `queue`, as a foreign application."""
    async with probe.channel() as channel:
        for n in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(b'{"n": %d}' % n, message_id=f"m{n}"), routing_key=queue
            )


def queue_arguments(node: RabbitMQNode, queue: str) -> str:
    """The arguments `queue` was declared with, as rabbitmqctl prints them."""
    for line in node.ctl("list_queues", "-q", "name", "arguments").splitlines():
        name, _, arguments = line.partition("\t")
        if name == queue:
            return arguments
    raise AssertionError(f"no queue {queue!r}")


async def test_a_passive_backend_consumes_a_plain_queue_holding_messages_and_dead_letters_failures(
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    rabbitmq_node: RabbitMQNode,
    queue_name: str,
) -> None:
    # Given a durable classic queue another application declared (a length limit, no
    # dead-letter exchange) holding 500 messages
    await probe.declare_plain_queue(queue_name, **{"x-max-length": 10_000})
    await fill(probe, queue_name, MESSAGES)
    failing = {f"m{n}" for n in range(0, MESSAGES, FAILING_EVERY)}

    # When a pool consumes it on a passive backend, one message in 50 failing every time
    backend = await make_backend(topology=TopologyMode.PASSIVE)
    worker = Recorder(fail_while(lambda m: m.id in failing))
    await start_pool(backend, worker, middleware=[AckNackMiddleware(), retry_fast()])

    # Then every other message is processed once, and the failing ones land in Q-dlq
    good = sorted({f"m{n}" for n in range(MESSAGES)} - failing)
    await worker.wait_processed(*good)
    await probe.wait_for_ready(f"{queue_name}-dlq", len(failing))
    assert sorted(worker.processed) == good
    dead = await probe.take(f"{queue_name}-dlq")
    assert {d.message_id for d in dead} == failing
    for letter in dead:
        assert letter.headers["x-exception-type"] == "builtins.RuntimeError"
        assert letter.headers["x-failure-reason"] == "scripted failure"
        assert letter.headers["x-final-attempt"] == 3
        assert letter.headers["x-retry-attempt"] == 2
        assert letter.headers["x-original-queue"] == queue_name
        assert letter.headers["x-original-exchange"] == ""
        assert letter.headers["x-original-routing-key"] == queue_name
        assert "x-failed-at" in letter.headers
    # and each failing one was tried three times, through the retry queues
    for message_id in failing:
        assert [d.attempt for d in worker.of(message_id)] == [1, 2, 3]
    # and the queue is empty and as it was declared: foxwork did not redeclare it
    assert await probe.ready(queue_name) == 0
    assert "x-dead-letter-exchange" not in queue_arguments(rabbitmq_node, queue_name)
    assert "x-max-length" in queue_arguments(rabbitmq_node, queue_name)


async def test_a_rejected_message_of_a_passive_queue_reaches_q_dlq_instead_of_being_dropped(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a plain queue without a dead-letter exchange (a rejection would drop the
    # message), attached passively, with a pool that rejects what fails
    await probe.declare_plain_queue(queue_name)
    backend = await make_backend(topology="passive")
    worker = Recorder(fail_while(lambda m: m.id == "bad"))
    await start_pool(backend, worker, middleware=[AckNackMiddleware(on_failure=AckPolicy.REJECT)])

    # When a message fails
    await probe.publish(b"{}", routing_key=queue_name, message_id="bad", headers={"k": "v"})
    await probe.publish(b"{}", routing_key=queue_name, message_id="good")
    await worker.wait_processed("good")

    # Then the rejected message is in Q-dlq, with the diagnostic headers and its own
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "bad"
    assert dead.headers["k"] == "v"
    assert dead.headers["x-original-queue"] == queue_name
    assert "attached passively" in dead.headers["x-failure-reason"]
    assert dead.headers["x-final-attempt"] == 1
    assert "x-exception-type" in dead.headers
    assert await probe.ready(queue_name) == 0
    assert len(worker.of("bad")) == 1


async def test_a_retry_copy_the_broker_always_refuses_sends_the_original_to_q_dlq_by_a_copy(
    make_backend: BackendFactory,
    make_user: UserFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a passive queue consumed by a user who may not publish to the retry exchange
    # (on a queue foxwork declares, the original would be rejected to the queue's
    # dead-letter exchange after a few refused copies: here there is none)
    await probe.declare_plain_queue(queue_name)
    _, url = make_user(write=r"^(?!.*-retry_exchange$).*")
    backend = await make_backend(url=url, topology="passive")
    worker = Recorder(fail_while(lambda m: True))
    await start_pool(backend, worker, middleware=[AckNackMiddleware(), retry_fast()])

    # When its message fails and each retry copy is refused
    await probe.publish(b"{}", routing_key=queue_name, message_id="refused")

    # Then after a bounded number of refused copies it is dead-lettered by a copy to Q-dlq
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "refused"
    assert dead.headers["x-exception-type"] == ("foxwork.backends.rabbitmq.publishing.CopyRefused")
    reason = dead.headers["x-failure-reason"]
    assert f"refused {REFUSED_COPY_LIMIT} times" in reason
    assert f"{queue_name}-retry_exchange" in reason
    assert dead.headers["x-original-queue"] == queue_name
    assert len(worker.of("refused")) == REFUSED_COPY_LIMIT
    assert await probe.ready(queue_name) == 0


async def test_a_dead_letter_copy_the_broker_always_refuses_leaves_the_message_in_its_queue(
    make_backend: BackendFactory,
    make_user: UserFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    queue_name: str,
) -> None:
    # Given a passive queue consumed by a user who may not publish to the default
    # exchange, so every dead-letter copy to Q-dlq is refused
    await probe.declare_plain_queue(queue_name)
    _, url = make_user(write=r"^(?!amq\.default$).*")
    backend = await make_backend(url=url, topology="passive")
    worker = Recorder(fail_while(lambda m: True, lambda m: DeadLetter("scripted")))
    pool = await start_pool(backend, worker)
    await probe.publish(b"{}", routing_key=queue_name, message_id="kept")

    # When it has been dead-lettered past the refused-copy limit
    await worker.wait_for(
        lambda r: len(r.of("kept")) >= REFUSED_COPY_LIMIT + 2,
        what="deliveries past the refused-copy limit",
    )
    await pool.shutdown(timeout=5)

    # Then it is back in its queue, not dropped, and nothing reached Q-dlq
    await probe.wait_for_ready(queue_name, 1)
    assert await probe.ready(f"{queue_name}-dlq") == 0
    [kept] = await probe.take(queue_name)
    assert kept.message_id == "kept"


async def test_a_message_that_came_back_unsettled_is_counted_through_the_retry_queue(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a message of a passive classic queue that a consumer took and lost without
    # settling it (as a crashed process does): the broker marks it redelivered
    await probe.declare_plain_queue(queue_name)
    await probe.publish(b"{}", routing_key=queue_name, message_id="crash")
    [taken] = await probe.peek(queue_name)
    assert taken.message_id == "crash"

    # When a pool on a passive backend receives it
    backend = await make_backend(topology="passive")
    worker = Recorder()
    await start_pool(backend, worker, middleware=[AckNackMiddleware(), retry_fast()])

    # Then the crash was counted on a copy that went through the retry queue (not the
    # queue's dead-letter exchange) and came back to be processed once, as the same attempt
    await worker.wait_processed("crash")
    [delivery] = worker.of("crash")
    assert delivery.headers[wire.REDELIVERY_COUNT] == 1
    assert delivery.attempt == 1
    assert not delivery.redelivered
    assert await probe.ready(f"{queue_name}-dlq") == 0


async def test_a_message_crash_looping_on_a_passive_classic_queue_is_dead_lettered(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a message that came back unsettled, and a limit of one such return
    await probe.declare_plain_queue(queue_name)
    await probe.publish(b"{}", routing_key=queue_name, message_id="loop")
    await probe.peek(queue_name)
    backend = await make_backend(topology="passive")
    worker = Recorder()
    retry = RetryMiddleware(max_attempts=3, initial_backoff=0.05, max_redeliveries=1)
    await start_pool(backend, worker, middleware=[AckNackMiddleware(), retry])

    # Then it goes to Q-dlq unprocessed, saying why
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "loop"
    assert "redelivered 1 times without being settled" in dead.headers["x-failure-reason"]
    assert worker.of("loop") == []
    assert await probe.ready(queue_name) == 0


async def test_a_missing_passive_queue_is_refused_by_name_and_nothing_is_declared_for_it(
    make_backend: BackendFactory, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a passive backend for a queue that does not exist (a typo, say), and another
    # queue it declares
    declared = f"{queue_name}-declared"
    backend = await make_backend(
        queue=[queue_name, declared],
        queue_settings={declared: QueueSettings(topology=TopologyMode.DECLARE)},
        topology=TopologyMode.PASSIVE,
    )

    # When it declares the missing queue's topology
    with pytest.raises(TopologyConflict) as raised:
        await backend.declare(queue_name)

    # Then the error names the queue and the vhost, and says what to do
    message = str(raised.value)
    assert f"queue '{queue_name}' does not exist in vhost '/'" in message
    assert "create the queue first" in message
    assert "topology='declare'" in message
    # and nothing was declared for it: no queue, no Q-dlq, no retry exchange
    assert not await probe.exists(queue_name)
    assert not await probe.exists(f"{queue_name}-dlq")
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        async with probe.channel() as channel:
            await channel.get_exchange(f"{queue_name}-retry_exchange", ensure=True)
    # and the backend goes on declaring its other queue
    await backend.declare(declared)
    assert await probe.exists(declared)


async def test_a_pool_on_a_missing_passive_queue_does_not_start(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    backend = await make_backend(topology="passive")

    with pytest.raises(TopologyConflict, match=f"queue '{queue_name}' does not exist"):
        await start_pool(backend, Recorder())

    assert not await probe.exists(queue_name)


async def test_a_conflicting_existing_queue_suggests_passive_mode_and_the_plan_command(
    make_backend: BackendFactory, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a queue another application declared
    await probe.declare_plain_queue(queue_name)
    declaring = await make_backend()

    # When foxwork declares it
    with pytest.raises(TopologyConflict) as raised:
        await declaring.declare(queue_name)

    # Then the error offers attaching to it as it is
    message = str(raised.value)
    assert "topology='passive'" in message
    assert f"foxwork topology plan --queue {queue_name} --topology passive" in message
    assert "rabbitmqctl set_policy" in message


async def test_one_backend_serves_a_quorum_a_topic_bound_and_a_passive_queue_at_once(
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
    rabbitmq_node: RabbitMQNode,
    queue_name: str,
) -> None:
    # Given three queues: a quorum one, a classic one bound to a topic exchange, and a
    # plain queue another application declared, attached passively
    quorum, topic, passive = (f"{queue_name}-{kind}" for kind in ("quorum", "topic", "passive"))
    exchange = f"{queue_name}-events"
    await probe.declare_plain_queue(passive)
    backend = await make_backend(
        queue=[quorum, topic, passive],
        delivery_limit=4,
        queue_settings={
            quorum: QueueSettings(queue_type=QueueType.QUORUM),
            topic: QueueSettings(exchange=exchange, binding_keys=["order.*"]),
            passive: QueueSettings(topology=TopologyMode.PASSIVE),
        },
    )
    try:
        worker = Recorder(fail_while(lambda m: m.id.startswith("bad")))
        await start_pool(
            backend,
            worker,
            middleware=[AckNackMiddleware(), retry_fast(max_attempts=2)],
            queues=[quorum, topic, passive],
        )

        # When each gets a good and a bad message, the topic one through its exchange
        for target, prefix in ((quorum, "q"), (passive, "p")):
            await probe.publish(b"{}", routing_key=target, message_id=f"{prefix}-good")
            await probe.publish(b"{}", routing_key=target, message_id=f"bad-{prefix}")
        await backend.publish(
            "order.created", b"{}", MessageProperties(message_id="t-good"), exchange=exchange
        )
        await backend.publish(
            "order.failed", b"{}", MessageProperties(message_id="bad-t"), exchange=exchange
        )

        # Then every good message is processed, each bad one lands in its own Q-dlq
        await worker.wait_processed("q-good", "t-good", "p-good")
        for target, prefix in ((quorum, "q"), (topic, "t"), (passive, "p")):
            await probe.wait_for_ready(f"{target}-dlq", 1)
            [dead] = await probe.take(f"{target}-dlq")
            assert dead.message_id == f"bad-{prefix}"
            assert dead.headers["x-original-queue"] == target
            assert dead.headers["x-final-attempt"] == 2
        [created] = worker.of("t-good")
        assert (created.exchange, created.routing_key) == (exchange, "order.created")
        # and each queue was declared with its own settings (the passive one not at all)
        types = dict(
            line.split("\t")[:2]
            for line in rabbitmq_node.ctl("list_queues", "-q", "name", "type").splitlines()
        )
        assert (types[quorum], types[topic], types[passive]) == ("quorum", "classic", "classic")
        assert types[f"{quorum}-dlq"] == "quorum"
        assert "x-delivery-limit" in queue_arguments(rabbitmq_node, quorum)
        assert "x-dead-letter-routing-key" in queue_arguments(rabbitmq_node, topic)
        assert queue_arguments(rabbitmq_node, passive) == "[]"
    finally:
        await probe.delete_exchanges(exchange)


async def test_a_message_of_a_passive_queue_keeps_flowing_after_its_consumer_is_cancelled(
    make_backend: BackendFactory, start_pool: PoolStarter, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a pool consuming a passive queue
    await probe.declare_plain_queue(queue_name)
    backend = await make_backend(topology="passive")
    worker = Recorder()
    await start_pool(backend, worker)
    await probe.publish(b"{}", routing_key=queue_name, message_id="before")
    await worker.wait_processed("before")

    # When the queue is deleted and its owner declares it again
    await probe.delete_queues(queue_name)
    await probe.declare_plain_queue(queue_name)

    # Then the consumer attaches to it again (passively: foxwork never declared it)
    await probe.publish(b"{}", routing_key=queue_name, message_id="after")
    await worker.wait_processed("after")
    assert worker.processed == ["before", "after"]
