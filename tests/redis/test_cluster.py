"""`RedisStreamsBackend(cluster=True)` on a real Redis Cluster of three masters (no replicas).

One cluster serves the whole module (starting it takes a few seconds); each test has queues
of its own. The queues of a test are picked so that their hash tags land on different
masters (`CLUSTER KEYSLOT` and `CLUSTER SLOTS` say which), so every scenario spans the
cluster. Failover (a master dying, a replica taking over) is not covered here.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from foxwork import ConfigurationError, MessageProperties
from foxwork.backends import ResilientBackend
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.backends.redis import entry as entries
from foxwork.backends.redis.connection import close_client
from foxwork.backends.redis.dlq import DeadLetterQueue
from foxwork.backends.resilient import ReconnectStrategy
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from foxwork.pool import WorkerPool
from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env
from tests.harness.pytest_plugin import make_redis_cluster
from tests.harness.redis import RedisCluster, execute
from tests.support.deadletters import dlq, table_rows
from tests.support.recording import Recorder, fail_while
from tests.support.waiting import wait_until

from .conftest import FAST, Holder

#: Entries published to each queue of the multi-queue test.
PER_QUEUE = 40
#: Seconds to wait for `foxwork run` to start, or to process what it was given.
RUN_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with make_redis_cluster(3) as started:
        yield started


@pytest.fixture
async def client(cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    """A plain redis-py cluster client, to look at keys behind the backend."""
    plain = ClusterClient.from_url(cluster.urls[0])
    yield plain
    await close_client(plain)  # plain.aclose() may leave sockets open: see close_client


@pytest.fixture
async def make_backend(cluster: RedisCluster) -> AsyncIterator[Any]:
    """`await make_backend(queues, ...)`: a connected cluster backend with its queues
    declared (short block and claim times), closed at teardown."""
    backends: list[RedisStreamsBackend] = []

    async def make(queues: list[str], **settings: Any) -> RedisStreamsBackend:
        backend = RedisStreamsBackend(
            url=cluster.urls, cluster=True, queue=queues, **{**FAST, **settings}
        )
        backends.append(backend)
        await backend.connect()
        for queue in queues:
            await backend.declare(queue)
        return backend

    yield make
    for backend in backends:
        await backend.close()


def master_of(cluster: RedisCluster, key: str) -> int:
    """The port of the master serving `key`'s slot, as the cluster itself says."""
    port = cluster.nodes[0].port
    slot = execute(port, "CLUSTER", "KEYSLOT", key)
    ranges: Any = execute(port, "CLUSTER", "SLOTS")
    for first, last, (_host, master_port, *_rest), *_replicas in ranges:
        if first <= slot <= last:
            return int(master_port)
    raise AssertionError(f"no master serves slot {slot!r}")


def queues_on_every_master(cluster: RedisCluster) -> list[str]:
    """One new queue per master, each one's keys (`foxwork:{Q}...`) served by it."""
    prefix, found = uuid.uuid4().hex[:8], dict[int, str]()
    for n in range(1000):
        queue = f"cl-{prefix}-{n}"
        found.setdefault(master_of(cluster, f"foxwork:{{{queue}}}"), queue)
        if len(found) == len(cluster):
            return list(found.values())
    raise AssertionError("no queue names spread over every master")


async def pending(client: ClusterClient, stream: str) -> int:
    summary: Any = await client.xpending(stream, "foxwork")
    return int(summary["pending"])


async def assert_acked_away(
    client: ClusterClient, backend: RedisStreamsBackend, queues: list[str]
) -> None:
    """Every entry of `queues` was acked and deleted: no pending entry, empty streams."""
    for queue in queues:
        stream = backend.config.keys(queue).stream
        assert (await pending(client, stream), await client.xlen(stream)) == (0, 0), queue


# -- consuming ----------------------------------------------------------------------------


async def test_queues_on_every_master_are_consumed_by_one_pool_and_acked_away(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given three queues whose keys live on three different masters
    queues = queues_on_every_master(cluster)
    backend = await make_backend(queues)
    masters = {master_of(cluster, backend.config.keys(q).stream) for q in queues}
    assert masters == {node.port for node in cluster.nodes}
    sent = [f"{q}/{n}" for q in queues for n in range(PER_QUEUE)]
    for message_id in sent:
        queue = message_id.split("/")[0]
        await backend.publish(queue, b"{}", MessageProperties(message_id=message_id))

    # When one pool consumes them all through one backend
    worker = Recorder()
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware()], queues=queues)
    await pool.start(backend)
    await worker.wait_processed(*sent)
    await pool.shutdown(timeout=5)

    # Then every message was processed once, and acked away: nothing pending, streams empty
    assert sorted(worker.processed) == sorted(sent)
    await assert_acked_away(client, backend, queues)
    health = backend.health()
    assert health["cluster"] is True
    assert health["url"].startswith("redis-cluster://") and health["url"].count(",") == 2


async def test_more_publishes_at_once_than_max_connections_wait_for_a_connection(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given a backend allowed two connections per master for its own commands
    [queue, *_] = queues_on_every_master(cluster)
    backend = await make_backend([queue], max_connections=2)

    # When 200 publishes to one queue (one master) are made at once
    await asyncio.gather(
        *(backend.publish(queue, b"{}", MessageProperties(message_id=f"m{n}")) for n in range(200))
    )

    # Then they waited for a connection instead of failing ("Too many connections")
    assert await client.xlen(backend.config.keys(queue).stream) == 200
    assert backend.is_connected


async def test_the_depth_of_each_queue_is_asked_of_its_own_master(
    cluster: RedisCluster, make_backend: Any
) -> None:
    # Given a queue on each master with 1, 2 and 3 entries waiting
    queues = queues_on_every_master(cluster)
    backend = await make_backend(queues)
    for count, queue in enumerate(queues, start=1):
        for n in range(count):
            await backend.publish(queue, b"{}", MessageProperties(message_id=f"{queue}/{n}"))
    # Then each queue's depth is its own
    assert [await backend.queue_depth(queue) for queue in queues] == [1, 2, 3]

    # and after a consumer took one entry of the last queue, one fewer waits there
    holder = Holder()
    await backend.consume(queues[2], holder, prefetch=1)
    await holder.wait_count(1)
    assert await backend.queue_depth(queues[2]) == 2


# -- retries and dead letters -----------------------------------------------------------------


async def test_a_failing_message_is_retried_with_its_delay_then_dead_lettered(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given a message that fails every time, with 3 attempts 0.3 s apart at least
    queues = queues_on_every_master(cluster)
    backend = await make_backend(queues)
    queue = queues[1]
    sent = MessageProperties(message_id="m0", headers={"tenant": "acme"})
    await backend.publish(queue, b'{"sku": "A-1"}', sent)
    worker = Recorder(fail_while(lambda m: True, lambda m: ValueError("SKU A-1 is gone")))
    retry = RetryMiddleware(max_attempts=3, initial_backoff=0.3, backoff_multiplier=1, jitter=0)
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware(), retry], queues=queues)

    # When a pool consumes it
    await pool.start(backend)
    keys = backend.config.keys(queue)
    await worker.wait_for(lambda r: len(r.of("m0")) == 3, what="3 deliveries of m0")

    # Then each attempt came back from the retry set after its delay
    deliveries = worker.of("m0")
    assert [d.attempt for d in deliveries] == [1, 2, 3]
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    assert all(gap >= 0.29 for gap in gaps), gaps

    # and the last failure went to the queue's dead-letter stream, with the usual fields
    async def dead_lettered() -> bool:
        return await client.xlen(keys.dead_letter) == 1

    await wait_until(dead_lettered, what=f"one entry in {keys.dead_letter}")
    await pool.shutdown(timeout=5)
    dead_letters: Any = await client.xrange(keys.dead_letter)
    [(_id, fields)] = dead_letters
    dead = entries.decode(fields)
    assert dead.body == b'{"sku": "A-1"}'
    headers = dead.properties.headers
    assert headers["tenant"] == "acme"
    assert headers["x-original-queue"] == queue
    assert headers["x-failure-reason"] == "SKU A-1 is gone"
    assert headers["x-exception-type"] == "builtins.ValueError"
    assert headers["x-final-attempt"] == 3
    assert dead.properties.message_id == "m0"
    # and nothing is left behind: no pending entry, no retry copy
    assert await pending(client, keys.stream) == 0
    assert await client.xlen(keys.stream) == 0
    assert await client.zcard(keys.retry) == 0


async def test_a_reject_and_a_requeue_are_settled_on_the_queues_master(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given two queues on two masters, one message held unsettled on each
    first, second, _ = queues_on_every_master(cluster)
    backend = await make_backend([first, second])
    holder = Holder()
    for queue in (first, second):
        await backend.publish(queue, b"{}", MessageProperties(message_id=queue))
        await backend.consume(queue, holder, prefetch=5)
    await holder.wait_count(2)
    by_queue = {m.queue: m for m in holder.messages}

    # When one is rejected and the other requeued
    await by_queue[first].nack(requeue=False)
    await by_queue[second].nack(requeue=True)

    # Then the rejected one is in its queue's dead-letter stream with the broker's reason
    dead_letters: Any = await client.xrange(backend.config.keys(first).dead_letter)
    [(_id, fields)] = dead_letters
    [death] = entries.decode(fields).properties.headers["x-death"]
    assert (death["reason"], death["queue"]) == ("rejected", first)
    # and the requeued one comes back, marked redelivered
    await holder.wait_count(3)
    again = holder.messages[2]
    assert (again.queue, again.redelivered) == (second, True)
    await again.ack()
    assert await backend.flush(timeout=5)
    await assert_acked_away(client, backend, [first, second])


async def rejected_on(backend: RedisStreamsBackend, ids: dict[str, list[str]]) -> None:
    """Publish `ids` (queue → message ids) and reject each delivery: dead letters."""
    holder = Holder()
    for queue, queue_ids in ids.items():
        for message_id in queue_ids:
            await backend.publish(queue, b"{}", MessageProperties(message_id=message_id))
        await backend.consume(queue, holder, prefetch=10)
    await holder.wait_count(sum(map(len, ids.values())))
    for message in holder.messages:
        await message.nack(requeue=False)


async def two_dead_letters(
    cluster: RedisCluster, make_backend: Any
) -> tuple[str, RedisStreamsBackend]:
    """A new queue with two dead letters ("a", "b"), and the backend that made them."""
    [queue, *_] = queues_on_every_master(cluster)
    backend = await make_backend([queue])
    await rejected_on(backend, {queue: ["a", "b"]})
    return queue, backend


async def test_dead_letters_on_two_masters_are_listed_and_replayed_back_to_their_queues(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given dead letters in two queues whose keys live on two different masters
    first, second, _ = queues_on_every_master(cluster)
    ids = {first: [f"{first}/{n}" for n in range(3)], second: [f"{second}/0"]}
    backend = await make_backend([first, second])
    await rejected_on(backend, ids)
    keys = {queue: backend.config.keys(queue) for queue in ids}
    await backend.close()  # nothing consumes the replayed copies

    for queue, queue_ids in ids.items():
        # When the dead-letter tool lists them through one startup node of the cluster
        async with DeadLetterQueue(cluster.urls[-1], queue, cluster=True) as dead:
            listed = await dead.list()
            # Then it finds every one, with the broker's reason
            assert [letter.id for letter in listed] == queue_ids
            assert {letter.reason for letter in listed} == {"dead-lettered by the broker: rejected"}
            assert "redis-cluster://" in repr(dead)

            # and a replay moves each back to its queue's stream, in one step on its master
            result = await dead.replay()
            assert (result.replayed, result.failed, result.stopped) == (queue_ids, [], "")
            assert await dead.count() == 0

        assert await client.xlen(keys[queue].dead_letter) == 0
        copies: Any = await client.xrange(keys[queue].stream)
        assert [entries.decode(f).properties.message_id for _, f in copies] == queue_ids


async def test_a_purge_on_the_cluster_deletes_the_dead_letters(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given two dead letters of a queue on the cluster
    queue, backend = await two_dead_letters(cluster, make_backend)

    # When the dead-letter tool purges them
    async with DeadLetterQueue(cluster.urls, queue, cluster=True) as dead:
        assert await dead.purge() == 2

    # Then the dead-letter stream is gone
    assert await client.exists(backend.config.keys(queue).dead_letter) == 0


async def test_the_dead_letter_tool_refuses_a_cluster_node_given_as_a_single_server(
    cluster: RedisCluster,
) -> None:
    dead = DeadLetterQueue(cluster.urls[0], "orders")
    with pytest.raises(ConfigurationError, match=r"is a Redis Cluster node: .*cluster=True"):
        await dead.connect()


# -- reclaiming -------------------------------------------------------------------------------


async def test_an_abandoned_pending_entry_is_taken_over_by_another_consumer(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given consumer "a" holding one entry on each master, which then goes away unsettled
    queues = queues_on_every_master(cluster)
    dying = await make_backend(queues, consumer="a")
    held = Holder()
    for queue in queues:
        await dying.publish(queue, b"{}", MessageProperties(message_id=queue))
        await dying.consume(queue, held, prefetch=5)
    await held.wait_count(len(queues))
    await dying.close()

    # When consumer "b" runs, after claim_idle (0.3 s)
    survivor = await make_backend(queues, consumer="b")
    taken = Holder()
    for queue in queues:
        await survivor.consume(queue, taken, prefetch=5)
    await taken.wait_count(len(queues))

    # Then it has them all, as having come back unsettled, and its acks clear them
    assert sorted(m.id for m in taken.messages) == sorted(queues)
    assert all(m.came_back_unsettled and m.delivery_count == 1 for m in taken.messages)
    for message in taken.messages:
        await message.ack()
    assert await survivor.flush(timeout=5)
    await assert_acked_away(client, survivor, queues)


# -- connections ------------------------------------------------------------------------------


async def test_killed_connections_on_every_master_lose_nothing_under_a_resilient_backend(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given a pool consuming a queue on each master through a ResilientBackend
    queues = queues_on_every_master(cluster)
    inner = await make_backend(queues)
    backend = ResilientBackend(inner, strategy=ReconnectStrategy.Fixed(0.05))
    worker = Recorder()
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware()], queues=queues)
    await pool.start(backend)

    # When every master kills its client connections, twice, with a message on each queue
    sent = []
    for n in range(2):
        for node in cluster.nodes:
            execute(node.port, "CLIENT", "KILL", "TYPE", "normal")
        for queue in queues:
            fields = entries.encode(b"{}", MessageProperties(message_id=f"{queue}/{n}"))
            await client.xadd(inner.config.keys(queue).stream, fields)  # type: ignore[arg-type]
            sent.append(f"{queue}/{n}")
        await worker.wait_processed(*sent)

    # Then every message was processed once and acked away
    await pool.shutdown(timeout=5)
    assert sorted(worker.processed) == sorted(sent)
    await assert_acked_away(client, inner, queues)
    await backend.close()


# -- the command line --------------------------------------------------------------------------


def foxwork_run(cluster: RedisCluster, app: str, queues: list[str], **env: str) -> FoxworkProcess:
    """`foxwork run APP --url NODE1 --url NODE2 --redis-cluster --queue Q...` (two of the
    three masters as startup nodes: the client learns the third)."""
    command = ["run", app, "--redis-cluster", "--concurrency", "4"]
    for url in cluster.urls[:2]:
        command += ["--url", url]
    for queue in queues:
        command += ["--queue", queue]
    return FoxworkProcess(*command, env=foxwork_env(**env))


async def publish_to(cluster: RedisCluster, ids: list[str]) -> None:
    """Publish each `QUEUE/N` id to its QUEUE, through a cluster backend."""
    queues = sorted({message_id.split("/")[0] for message_id in ids})
    async with RedisStreamsBackend(url=cluster.urls, cluster=True, queue=queues) as publisher:
        for message_id in ids:
            queue = message_id.split("/")[0]
            await publisher.publish(queue, b"{}", MessageProperties(message_id=message_id))


async def test_foxwork_run_on_the_cluster_consumes_queues_on_every_master_and_exits_0_on_sigterm(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any, tmp_path: Path
) -> None:
    # Given `foxwork run --redis-cluster` consuming a queue on each master
    queues = queues_on_every_master(cluster)
    done = tmp_path / "processed"
    foxwork = foxwork_run(
        cluster, "tests.apps.recorder:pool", queues, FOXWORK_TEST_PROCESSED_FILE=str(done)
    )
    async with foxwork:
        await foxwork.wait_for(r"pool 'recorder' running on .*, consuming ", timeout=RUN_TIMEOUT)

        # When entries are added to each queue's stream
        ids = [f"{queue}/{n}" for queue in queues for n in range(PER_QUEUE)]
        await publish_to(cluster, ids)

        # Then every one is processed, and acked away on its master
        def processed() -> list[str]:
            return [line.split()[2] for line in read_lines(done)] if done.exists() else []

        await wait_until(
            lambda: set(ids) <= set(processed()),
            what=lambda: f"{len(ids)} ids processed (now {len(processed())})",
            timeout=RUN_TIMEOUT,
        )
        observer = await make_backend(queues)
        await wait_until(
            lambda: _acked_away(client, observer, queues), what="every stream is empty"
        )

        # And SIGTERM stops it gracefully with exit code 0
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait(timeout=RUN_TIMEOUT) == 0, foxwork.output
    assert "graceful shutdown complete" in foxwork.output
    assert sorted(processed()) == sorted(ids)


async def test_foxwork_run_on_the_cluster_finishes_in_flight_messages_on_sigterm(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any, tmp_path: Path
) -> None:
    # Given `foxwork run --redis-cluster` of a slow worker (1 s a message) on every master
    queues = queues_on_every_master(cluster)
    started, finished = tmp_path / "started", tmp_path / "finished"
    files = {"FOXWORK_TEST_STARTED_FILE": str(started), "FOXWORK_TEST_FINISHED_FILE": str(finished)}
    async with foxwork_run(
        cluster, "tests.apps.slow:pool", queues, FOXWORK_TEST_SLEEP="1", **files
    ) as foxwork:
        await foxwork.wait_for(r"pool 'slow' running on .*, consuming ", timeout=RUN_TIMEOUT)
        ids = [f"{queue}/0" for queue in queues]
        await publish_to(cluster, ids)
        await wait_until(
            lambda: started.exists() and len(read_lines(started)) == len(ids),
            what="a message of each queue in flight",
            timeout=RUN_TIMEOUT,
        )

        # When it gets SIGTERM while they are in flight
        foxwork.send_signal(signal.SIGTERM)

        # Then it lets them finish, acks them on their masters and exits 0
        assert await foxwork.wait(timeout=RUN_TIMEOUT) == 0, foxwork.output
    assert sorted(read_lines(finished)) == sorted(ids)
    assert await _acked_away(client, await make_backend(queues), queues)


async def _acked_away(
    client: ClusterClient, backend: RedisStreamsBackend, queues: list[str]
) -> bool:
    try:
        await assert_acked_away(client, backend, queues)
    except AssertionError:
        return False
    return True


async def test_foxwork_dlq_with_redis_cluster_lists_and_replays_dead_letters(
    cluster: RedisCluster, client: ClusterClient, make_backend: Any
) -> None:
    # Given two dead letters of a queue on the cluster
    queue, backend = await two_dead_letters(cluster, make_backend)
    await backend.close()
    url = cluster.urls[0]

    # When `foxwork dlq list --redis-cluster` lists them
    listed = await dlq("list", queue, "--redis-cluster", url=url)
    # Then it shows both
    assert listed.code == 0, listed.output
    assert sorted(table_rows(listed.stdout)) == ["a", "b"]

    # and `foxwork dlq replay --all --redis-cluster` puts them back in their queue
    replayed = await dlq("replay", queue, "--all", "--redis-cluster", url=url)
    assert replayed.code == 0, replayed.output
    keys = backend.config.keys(queue)
    assert (await client.xlen(keys.dead_letter), await client.xlen(keys.stream)) == (0, 2)

    # while without --redis-cluster the node is refused, naming what to give
    refused = await dlq("list", queue, url=url)
    assert refused.code == 2
    assert "is a Redis Cluster node" in refused.stderr


async def test_a_cluster_node_given_as_a_single_server_is_refused(cluster: RedisCluster) -> None:
    backend = RedisStreamsBackend(url=cluster.urls[0], queue="orders")
    with pytest.raises(ConfigurationError, match=r"is a Redis Cluster node: .*cluster=True"):
        await backend.connect()
    assert not backend.is_connected


async def test_a_single_server_given_as_a_cluster_is_refused(redis_url: str) -> None:
    backend = RedisStreamsBackend(url=redis_url, cluster=True, queue="orders")
    with pytest.raises(ConfigurationError, match=r"not a Redis Cluster node"):
        await backend.connect()
    assert not backend.is_connected
