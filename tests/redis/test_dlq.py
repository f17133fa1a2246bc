"""Dead letters on Redis Streams: `foxwork.backends.redis.dlq.DeadLetterQueue` and
`foxwork dlq ... --url redis://...`, against dead letters a real pool made on the session
redis-server.

The keys are looked at with a plain redis-py client (`redis`), never through the code
under test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from foxwork import ConfigurationError, Message, MessageProperties, WorkerPool, wire
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.backends.redis import entry as entries
from foxwork.backends.redis.config import StreamKeys
from foxwork.backends.redis.dlq import DeadLetterQueue
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.support.deadletters import (
    BROKEN_IDS,
    DIAGNOSTIC_HEADERS,
    GOOD_IDS,
    SKU_IDS,
    TIMEOUT_IDS,
    UnknownSku,
    UpstreamTimeout,
    body_of,
    dlq,
    exception_name,
    fail_broken,
    table_rows,
)
from tests.support.recording import Recorder
from tests.support.waiting import wait_until

from .conftest import BackendFactory

#: Attempts each message gets (so a dead letter was retried once: x-retry-attempt 1).
MAX_ATTEMPTS = 2


@dataclasses.dataclass
class Shop:
    """A pool whose worker fails on `BROKEN_IDS` until `fixed`, and the dead letters it made."""

    url: str
    queue: str
    keys: StreamKeys
    backend: RedisStreamsBackend
    pool: WorkerPool
    worker: Recorder
    broken: bool = True

    @property
    def dlq_name(self) -> str:
        return self.keys.dead_letter


async def fill(backend: RedisStreamsBackend, queue: str, ids: tuple[str, ...]) -> None:
    for message_id in ids:
        properties = MessageProperties(
            content_type="application/json", message_id=message_id, headers={"tenant": "acme"}
        )
        await backend.publish(queue, body_of(message_id), properties)


async def xlen(redis: Redis, key: str) -> int:
    return int(await redis.xlen(key))


async def xrange(redis: Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    found: Any = await redis.xrange(key)
    return list(found)


async def message_ids(redis: Redis, key: str) -> list[str]:
    return [
        entries.decode(fields).properties.message_id or "" for _, fields in await xrange(redis, key)
    ]


async def make_shop(
    url: str, queue: str, make_backend: BackendFactory, redis: Redis, **settings: Any
) -> AsyncIterator[Shop]:
    state: dict[str, Shop] = {}

    async def behaviour(message: Message[Any]) -> None:
        if state["shop"].broken:
            fail_broken(message)

    backend = await make_backend(**settings)
    worker = Recorder(behaviour)
    retry = RetryMiddleware(max_attempts=MAX_ATTEMPTS, initial_backoff=0.05, jitter=0.0)
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware(), retry], queues=[queue])
    keys = backend.config.keys(queue)
    state["shop"] = shop = Shop(url, queue, keys, backend, pool, worker)
    await pool.start(backend)
    try:
        await fill(backend, queue, GOOD_IDS + BROKEN_IDS)
        await worker.wait_processed(*GOOD_IDS)
        await wait_until(
            lambda: _xlen_is(redis, keys.dead_letter, len(BROKEN_IDS)),
            what="every broken message is dead-lettered",
        )
        yield shop
    finally:
        with contextlib.suppress(Exception):
            await pool.shutdown(timeout=5)
        await redis.delete(keys.stream, keys.retry, keys.dead_letter)


async def _xlen_is(redis: Redis, key: str, count: int) -> bool:
    return await xlen(redis, key) == count


@pytest.fixture
async def shop(
    redis_url: str, queue_name: str, make_backend: BackendFactory, redis: Redis
) -> AsyncIterator[Shop]:
    """`foxwork:{Q}:dlq` holding one dead letter per id of `BROKEN_IDS` (after two attempts
    each), the pool still running."""
    async for made in make_shop(redis_url, queue_name, make_backend, redis):
        yield made


# -- browsing ------------------------------------------------------------------------------


async def test_list_describes_every_dead_letter_oldest_first_and_removes_nothing(
    shop: Shop, redis: Redis
) -> None:
    # Given five dead letters, each after two failed attempts
    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        # When they are listed, in full and only the first two
        letters = await dead.list()
        first_two = await dead.list(limit=2)
        count = await dead.count()

    # Then each says why it failed, with what, on which attempt, in which queue
    assert sorted(letter.id for letter in letters) == sorted(BROKEN_IDS)
    assert [letter.id for letter in letters] == await message_ids(redis, shop.dlq_name)
    for letter in letters:
        expected = UnknownSku if letter.id in SKU_IDS else UpstreamTimeout
        assert letter.exception_type == exception_name(expected)
        assert letter.id in letter.reason
        assert letter.final_attempt == MAX_ATTEMPTS
        assert (letter.queue, letter.routing_key, letter.source) == (
            shop.queue,
            shop.queue,
            "foxwork",
        )
        assert letter.failed_at
    assert first_two == letters[:2]
    assert count == len(BROKEN_IDS)
    # and browsing removed nothing
    assert await xlen(redis, shop.dlq_name) == len(BROKEN_IDS)


async def test_show_finds_a_dead_letter_by_message_id_or_entry_id(shop: Shop, redis: Redis) -> None:
    [(entry_id, _)] = [
        (entry_id, fields)
        for entry_id, fields in await xrange(redis, shop.dlq_name)
        if fields[b"message_id"] == b"sku-2"
    ]
    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        by_id = await dead.show("sku-2")
        by_entry = await dead.show(entry_id.decode())
        missing = await dead.show("order-9")

    assert by_id is not None
    assert by_id == by_entry
    assert by_id.body == body_of("sku-2")
    assert by_id.headers[wire.FAILURE_REASON] == "unknown SKU in sku-2"
    assert by_id.headers[wire.RETRY_ATTEMPT] == MAX_ATTEMPTS - 1
    assert by_id.headers["tenant"] == "acme"
    assert by_id.properties["content_type"] == "application/json"
    assert by_id.properties["entry_id"] == entry_id.decode()
    assert missing is None


async def test_an_unknown_queue_is_a_configuration_error_naming_the_keys(
    redis_url: str, queue_name: str
) -> None:
    async with DeadLetterQueue(redis_url, queue_name) as dead:
        with pytest.raises(ConfigurationError, match=r"no dead-letter queue 'foxwork:\{"):
            await dead.list()


# -- replay --------------------------------------------------------------------------------


async def test_replay_by_id_moves_only_that_one_back_as_a_first_attempt_and_it_is_processed(
    shop: Shop, redis: Redis
) -> None:
    # Given five dead letters, the bug fixed, and the pool running
    shop.broken = False
    before = len(shop.worker.deliveries)

    # When "sku-2" is replayed
    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        result = await dead.replay(ids=["sku-2"])

    # Then it alone went back and was processed, once, as a first attempt
    assert (result.replayed, result.failed, result.skipped) == (["sku-2"], [], 4)
    await shop.worker.wait_processed("sku-2")
    [delivery] = shop.worker.deliveries[before:]
    assert delivery.id == "sku-2"
    assert (delivery.attempt, delivery.retry_attempt) == (1, None)
    assert not set(delivery.headers) & set(DIAGNOSTIC_HEADERS), delivery.headers
    assert delivery.headers["tenant"] == "acme"
    assert delivery.payload == {"order": "sku-2"}
    assert delivery.properties.content_type == "application/json"
    # and the four others are still dead letters
    assert sorted(await message_ids(redis, shop.dlq_name)) == sorted(set(BROKEN_IDS) - {"sku-2"})


async def test_replay_by_reason_moves_the_matches_back_and_leaves_the_others(
    shop: Shop, redis: Redis
) -> None:
    # Given five dead letters, two of them timeouts, and no pool consuming
    await shop.pool.shutdown(timeout=5)

    # When the timeouts are replayed
    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        dry = await dead.replay(reason_match="upstream time(out|d out)", dry_run=True)
        result = await dead.replay(reason_match="upstream time(out|d out)")

    # Then the dry run chose them (with their reasons) and changed nothing, and the replay
    # moved exactly them into the stream, without their retry count
    assert dry.dry_run and dry.replayed == list(TIMEOUT_IDS)
    assert dry.reasons == {i: f"upstream timeout while pricing {i}" for i in TIMEOUT_IDS}
    assert result.replayed == list(TIMEOUT_IDS)
    assert await message_ids(redis, shop.keys.stream) == list(TIMEOUT_IDS)
    for _, fields in await xrange(redis, shop.keys.stream):
        headers = json.loads(fields[b"headers"])
        assert not set(headers) & set(DIAGNOSTIC_HEADERS), headers
    assert sorted(await message_ids(redis, shop.dlq_name)) == sorted(SKU_IDS)


async def test_replay_honours_the_limit_and_the_rate(shop: Shop, redis: Redis) -> None:
    await shop.pool.shutdown(timeout=5)
    loop = asyncio.get_running_loop()

    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        started = loop.time()
        result = await dead.replay(limit=3, rate=10)
        took = loop.time() - started

    assert len(result.replayed) == 3
    assert result.skipped == 2
    assert await xlen(redis, shop.keys.stream) == 3
    # one at once, then one every 1/10 s
    assert took >= 0.18, took


@pytest.fixture
async def big_dlq(
    redis_url: str, queue_name: str, make_backend: BackendFactory, redis: Redis
) -> AsyncIterator[tuple[StreamKeys, list[str]]]:
    """300 dead letters (written as the backend writes them), no pool consuming."""
    backend = await make_backend()
    keys = backend.config.keys(queue_name)
    ids = [f"dl-{i:03}" for i in range(300)]
    for message_id in ids:
        headers = {wire.FAILURE_REASON: "boom", wire.RETRY_ATTEMPT: 4, wire.FINAL_ATTEMPT: 5}
        properties = MessageProperties(message_id=message_id, headers=headers)
        await redis.xadd(keys.dead_letter, entries.encode(b"x" * 100, properties))  # type: ignore[arg-type]
    yield keys, ids
    await redis.delete(keys.stream, keys.retry, keys.dead_letter)


async def assert_each_message_once(redis: Redis, keys: StreamKeys, ids: list[str]) -> None:
    """Every message is in the stream or in the dead-letter stream, exactly once."""
    found = await message_ids(redis, keys.stream) + await message_ids(redis, keys.dead_letter)
    duplicated = [i for i, n in collections.Counter(found).items() if n > 1]
    assert duplicated == []
    assert sorted(found) == ids


async def test_replay_moves_each_dead_letter_atomically_never_in_both_or_neither(
    redis_url: str, queue_name: str, big_dlq: tuple[StreamKeys, list[str]], redis: Redis
) -> None:
    # Given 300 dead letters
    keys, ids = big_dlq
    samples: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        # Both lengths read in one MULTI: one consistent view of Redis. (Stopped by a flag:
        # a cancel inside redis-py's send may be lost on Python 3.11.)
        while not done.is_set():
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xlen(keys.stream)
                pipe.xlen(keys.dead_letter)
                in_stream, in_dlq = await pipe.execute()
            samples.append(in_stream + in_dlq)
            await asyncio.sleep(0)

    # When they are all replayed while another client keeps counting both streams
    sampler = asyncio.create_task(sample())
    async with DeadLetterQueue(redis_url, queue_name) as dead:
        result = await dead.replay()
    done.set()
    await sampler

    # Then at every moment the two held all 300 (a message was never in both or neither)
    assert len(result.replayed) == len(ids)
    assert len(samples) > 10
    assert set(samples) == {len(ids)}
    await assert_each_message_once(redis, keys, ids)
    assert await xlen(redis, keys.dead_letter) == 0


async def test_a_replay_cut_off_by_a_killed_connection_or_cancelled_loses_and_duplicates_nothing(
    redis_url: str, queue_name: str, big_dlq: tuple[StreamKeys, list[str]], redis: Redis
) -> None:
    # Given 300 dead letters, and a replay at 500 a second
    keys, ids = big_dlq
    async with DeadLetterQueue(redis_url, queue_name) as dead:
        replay = asyncio.create_task(dead.replay(rate=500))

        # When its connection is killed once 30 are back in the stream
        await wait_until(lambda: _at_least(redis, keys.stream, 30), what="30 moved back")
        await redis.client_kill_filter(_type="normal", skipme=True)
        result = await replay

    # Then it stopped and said why, and every message is in one of the two streams, once
    assert "lost the connection" in result.stopped
    assert 30 <= len(result.replayed) < len(ids)
    assert await xlen(redis, keys.stream) == len(result.replayed)
    await assert_each_message_once(redis, keys, ids)

    # and a replay cancelled midway leaves each message once too
    async with DeadLetterQueue(redis_url, queue_name) as dead:
        moved = await xlen(redis, keys.stream)
        replay = asyncio.create_task(dead.replay(rate=500))
        await wait_until(
            lambda: _at_least(redis, keys.stream, moved + 30), what="30 more moved back"
        )
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay
    await assert_each_message_once(redis, keys, ids)

    # and a last replay moves the rest
    async with DeadLetterQueue(redis_url, queue_name) as dead:
        rest = await dead.replay()
    assert rest.failed == [] and rest.stopped == ""
    await assert_each_message_once(redis, keys, ids)
    assert await xlen(redis, keys.dead_letter) == 0


async def _at_least(redis: Redis, key: str, count: int) -> bool:
    return await xlen(redis, key) >= count


# -- purge ---------------------------------------------------------------------------------


async def test_purge_deletes_every_dead_letter_and_says_how_many(shop: Shop, redis: Redis) -> None:
    async with DeadLetterQueue(shop.url, shop.queue) as dead:
        assert await dead.purge() == len(BROKEN_IDS)
        assert await dead.count() == 0
        assert await dead.list() == []
    assert await xlen(redis, shop.dlq_name) == 0


# -- the command line ----------------------------------------------------------------------


async def test_cli_list_shows_each_dead_letter_and_the_true_total(shop: Shop, redis: Redis) -> None:
    # When a user lists the dead letters as a table, as JSON, and only the first one
    table = await dlq("list", shop.queue, url=shop.url)
    lines = await dlq("list", shop.queue, "--json", url=shop.url)
    first = await dlq("list", shop.queue, "--limit", "1", url=shop.url)

    # Then the table has one row per dead letter with its attempt, exception and reason
    assert table.code == 0, table.output
    rows = table_rows(table.stdout)
    assert sorted(rows) == sorted(BROKEN_IDS)
    for message_id, (_, attempt, _, exception_type, reason) in rows.items():
        assert attempt == str(MAX_ATTEMPTS)
        expected = UnknownSku if message_id in SKU_IDS else UpstreamTimeout
        assert exception_type == exception_name(expected)
        assert message_id in reason
    assert f"5 dead letter(s) in {shop.dlq_name}" in table.stderr
    # and the JSON lines say the same
    assert lines.code == 0, lines.output
    letters = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [letter["id"] for letter in letters] == list(rows)
    assert {letter["final_attempt"] for letter in letters} == {MAX_ATTEMPTS}
    # and a limited list shows one, and the total
    assert first.code == 0, first.output
    assert len(table_rows(first.stdout)) == 1
    assert f"showing 1 of 5 dead letter(s) in {shop.dlq_name}" in first.stderr
    # and nothing was removed
    assert await xlen(redis, shop.dlq_name) == len(BROKEN_IDS)


async def test_cli_show_prints_the_headers_and_the_body(shop: Shop) -> None:
    text = await dlq("show", shop.queue, "sku-2", url=shop.url)
    as_json = await dlq("show", shop.queue, "sku-2", "--json", url=shop.url)
    missing = await dlq("show", shop.queue, "order-9", url=shop.url)

    assert text.code == 0, text.output
    assert "reason: unknown SKU in sku-2" in text.stdout
    assert 'body: {"order": "sku-2"}' in text.stdout
    assert '"x-failure-reason": "unknown SKU in sku-2"' in text.stdout
    letter = json.loads(as_json.stdout)
    assert letter["headers"][wire.ORIGINAL_QUEUE] == shop.queue
    assert letter["headers"]["tenant"] == "acme"
    assert letter["properties"]["content_type"] == "application/json"
    assert json.loads(letter["body"]) == {"order": "sku-2"}
    assert missing.code == 2
    assert f"no dead letter with id 'order-9' in {shop.dlq_name}" in missing.stderr


async def test_cli_replay_dry_run_shows_each_reason_and_one_summary(
    shop: Shop, redis: Redis
) -> None:
    result = await dlq(
        "replay", shop.queue, "--reason-match", "upstream", "--dry-run", url=shop.url
    )

    assert result.code == 0, result.output
    assert result.stdout.splitlines() == [
        *(f"would replay {i}: upstream timeout while pricing {i}" for i in TIMEOUT_IDS),
        "would replay 2, failed 0, left alone 3",
    ]
    assert await xlen(redis, shop.dlq_name) == len(BROKEN_IDS)


async def test_cli_replay_needs_a_selection_or_all_and_then_everything_is_processed_once(
    shop: Shop, redis: Redis
) -> None:
    # Given five dead letters and the pool running
    refused = await dlq("replay", shop.queue, url=shop.url)
    assert refused.code == 2
    assert "add --all" in refused.stderr
    assert await xlen(redis, shop.dlq_name) == len(BROKEN_IDS)

    # When the bug is fixed and a user replays them all
    shop.broken = False
    before = len(shop.worker.deliveries)
    result = await dlq("replay", shop.queue, "--all", url=shop.url)

    # Then the command prints one summary line, and each is processed once, as a first try
    assert result.code == 0, result.output
    assert result.stdout.splitlines() == ["replayed 5, failed 0, left alone 0"]
    await shop.worker.wait_processed(*BROKEN_IDS)
    replayed = shop.worker.deliveries[before:]
    assert collections.Counter(d.id for d in replayed) == dict.fromkeys(BROKEN_IDS, 1)
    assert {(d.attempt, d.retry_attempt) for d in replayed} == {(1, None)}
    assert await xlen(redis, shop.dlq_name) == 0


async def test_cli_replay_by_id(shop: Shop, redis: Redis) -> None:
    await shop.pool.shutdown(timeout=5)

    result = await dlq("replay", shop.queue, "--id", "sku-1", "--id", "slow-2", url=shop.url)

    assert result.code == 0, result.output
    assert result.stdout.splitlines() == ["replayed 2, failed 0, left alone 3"]
    assert await message_ids(redis, shop.keys.stream) == ["sku-1", "slow-2"]


async def test_cli_purge_needs_yes(shop: Shop, redis: Redis) -> None:
    refused = await dlq("purge", shop.queue, url=shop.url)
    assert refused.code == 2
    assert "--yes" in refused.stderr
    assert await xlen(redis, shop.dlq_name) == len(BROKEN_IDS)

    purged = await dlq("purge", shop.queue, "--yes", url=shop.url)
    assert purged.code == 0, purged.output
    assert f"purged 5 dead letter(s) from {shop.dlq_name}" in purged.stdout
    assert await xlen(redis, shop.dlq_name) == 0


@pytest.mark.parametrize(
    "action", [["list"], ["show", "X"], ["replay", "--all"], ["purge", "--yes"]]
)
async def test_cli_on_an_unknown_queue_exits_2_naming_the_missing_keys(
    redis_url: str, queue_name: str, action: list[str]
) -> None:
    result = await dlq(action[0], queue_name, *action[1:], url=redis_url)

    assert result.code == 2, result.output
    assert f"there is no dead-letter queue 'foxwork:{{{queue_name}}}:dlq'" in result.stderr
    assert "Traceback" not in result.output


async def test_cli_finds_the_dead_letters_of_a_backend_with_its_own_key_prefix(
    redis_url: str, queue_name: str, make_backend: BackendFactory, redis: Redis
) -> None:
    # Given dead letters of a backend whose keys start with "shop" instead of "foxwork"
    async for made in make_shop(redis_url, queue_name, make_backend, redis, key_prefix="shop"):
        assert made.dlq_name == f"shop:{{{queue_name}}}:dlq"

        # When a user lists them with and without --key-prefix
        found = await dlq("list", queue_name, "--key-prefix", "shop", url=redis_url)
        missed = await dlq("list", queue_name, url=redis_url)

        # Then the prefix finds them, and the default prefix says there are none
        assert found.code == 0, found.output
        assert sorted(table_rows(found.stdout)) == sorted(BROKEN_IDS)
        assert missed.code == 2
        assert "there is no dead-letter queue 'foxwork:" in missed.stderr


async def test_cli_names_a_dead_letter_without_a_message_id_by_its_entry_id(
    redis_url: str, queue_name: str, make_backend: BackendFactory, redis: Redis
) -> None:
    # Given a dead letter another tool wrote, without a message id
    keys = (await make_backend()).config.keys(queue_name)
    headers = {wire.FAILURE_REASON: "bad input", wire.FINAL_ATTEMPT: 1}
    properties = MessageProperties(headers=headers)
    added: Any = await redis.xadd(keys.dead_letter, entries.encode(b"raw", properties))  # type: ignore[arg-type]
    entry_id = added.decode()
    try:
        # When a user lists it, shows it and replays it by the id the list shows
        listed = await dlq("list", queue_name, url=redis_url)
        shown = await dlq("show", queue_name, entry_id, "--json", url=redis_url)
        replayed = await dlq("replay", queue_name, "--id", entry_id, url=redis_url)

        # Then the list names it by its entry id, which show and replay accept
        assert listed.code == 0, listed.output
        assert list(table_rows(listed.stdout)) == [entry_id]
        assert json.loads(shown.stdout)["body"] == "raw"
        assert replayed.stdout.splitlines() == ["replayed 1, failed 0, left alone 0"]
        [(_, fields)] = await xrange(redis, keys.stream)
        assert fields[b"body"] == b"raw"
        assert await xlen(redis, keys.dead_letter) == 0
    finally:
        await redis.delete(keys.stream, keys.retry, keys.dead_letter)
