"""`foxwork dlq list | show | replay | purge` as a user runs them: a subprocess against a
dead-letter queue that a real pool filled on the session broker."""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foxwork import Message, MessageProperties, WorkerPool, wire
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.harness.rabbitmq import RabbitMQNode
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

from .conftest import BackendFactory, PoolStarter
from .support import (
    SMALL_MAX_MESSAGE_SIZE,
    RabbitProbe,
    Recorder,
    dead_letter,
    max_message_size,
    put_dead_letters,
)

SECRET = "Sup3r-s3cret-pa55"


@dataclasses.dataclass
class Shop:
    """A pool whose worker fails on `BROKEN_IDS` until `fixed`, and the DLQ it filled."""

    url: str
    queue: str
    dlq: str
    pool: WorkerPool
    worker: Recorder
    broken: bool = True

    def processed_count(self, message_id: str) -> int:
        return self.worker.processed.count(message_id)


@pytest.fixture
async def shop(
    rabbitmq_url: str,
    queue_name: str,
    make_backend: BackendFactory,
    start_pool: PoolStarter,
    probe: RabbitProbe,
) -> AsyncIterator[Shop]:
    """`Q-dlq` holding one dead letter per id of `BROKEN_IDS` (a single attempt each), the
    pool still running."""
    state: dict[str, Shop] = {}

    async def behaviour(message: Message[Any]) -> None:
        if state["shop"].broken:
            fail_broken(message)

    worker = Recorder(behaviour)
    backend: RabbitMQBackend = await make_backend()
    pool = await start_pool(
        backend,
        worker,
        middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=1)],
        queues=[queue_name],
    )
    state["shop"] = shop = Shop(rabbitmq_url, queue_name, f"{queue_name}-dlq", pool, worker)
    for message_id in GOOD_IDS + BROKEN_IDS:
        properties = MessageProperties(content_type="application/json", message_id=message_id)
        await backend.publish(queue_name, body_of(message_id), properties)
    await worker.wait_for(
        lambda r: len(r.deliveries) == len(GOOD_IDS + BROKEN_IDS), what="every message was tried"
    )
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))
    yield shop


def assert_recent_utc(text: str) -> None:
    failed_at = datetime.fromisoformat(text)
    assert failed_at.utcoffset() == timedelta(0), f"{text} is not UTC"
    assert timedelta(0) <= datetime.now(UTC) - failed_at < timedelta(minutes=2), text


# -- list and show -----------------------------------------------------------------------


async def test_list_shows_every_dead_letter_with_its_reason_exception_attempt_and_time(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with five dead letters, each from a single failed attempt
    # When a user lists it
    result = await dlq("list", shop.queue, url=shop.url)

    # Then there is one row per dead letter, with everything needed to decide what to do
    assert result.code == 0, result.output
    rows = table_rows(result.stdout)
    assert sorted(rows) == sorted(BROKEN_IDS)
    for message_id in BROKEN_IDS:
        _, attempt, failed_at, exception_type, reason = rows[message_id]
        assert attempt == "1"
        assert_recent_utc(failed_at)
        if message_id in SKU_IDS:
            assert exception_type == exception_name(UnknownSku)
            assert reason == f"unknown SKU in {message_id}"
        else:
            assert exception_type == exception_name(UpstreamTimeout)
            assert reason == f"upstream timeout while pricing {message_id}"
    assert f"5 dead letter(s) in {shop.dlq}" in result.stderr
    # and listing consumed nothing
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))


async def test_list_with_a_limit_shows_that_many_and_reports_the_true_total(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with five dead letters
    # When a user lists only the first one
    result = await dlq("list", shop.queue, "--limit", "1", url=shop.url)

    # Then one row is shown, and the count says how many there are in all
    assert result.code == 0, result.output
    assert len(table_rows(result.stdout)) == 1
    assert f"showing 1 of 5 dead letter(s) in {shop.dlq}" in result.stderr
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))


async def test_list_json_gives_one_parseable_object_per_dead_letter_and_consumes_nothing(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with five dead letters
    # When a user lists it as JSON lines, twice
    first = await dlq("list", shop.queue, "--json", url=shop.url)
    second = await dlq("list", shop.queue, "--json", url=shop.url)

    # Then each line is a JSON object with the diagnostic fields
    assert first.code == 0, first.output
    letters = [json.loads(line) for line in first.stdout.splitlines()]
    assert sorted(letter["id"] for letter in letters) == sorted(BROKEN_IDS)
    for letter in letters:
        expected = UnknownSku if letter["id"] in SKU_IDS else UpstreamTimeout
        assert letter["exception_type"] == exception_name(expected)
        assert letter["id"] in letter["reason"]
        assert letter["final_attempt"] == 1
        assert letter["queue"] == shop.queue
        assert_recent_utc(letter["failed_at"])
    # and the second listing saw the same dead letters: nothing was consumed
    assert second.code == 0, second.output
    assert [json.loads(line) for line in second.stdout.splitlines()] == letters
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))


async def test_show_prints_one_dead_letter_in_full_as_json(shop: Shop, probe: RabbitProbe) -> None:
    # Given a DLQ with a dead letter "sku-2"
    # When a user shows it
    result = await dlq("show", shop.queue, "sku-2", "--json", url=shop.url)

    # Then they see its diagnosis, its original headers and properties, and its body
    assert result.code == 0, result.output
    letter = json.loads(result.stdout)
    assert letter["id"] == "sku-2"
    assert letter["reason"] == "unknown SKU in sku-2"
    assert letter["exception_type"] == exception_name(UnknownSku)
    assert letter["final_attempt"] == 1
    assert_recent_utc(letter["failed_at"])
    assert letter["headers"][wire.ORIGINAL_QUEUE] == shop.queue
    assert letter["headers"][wire.ORIGINAL_ROUTING_KEY] == shop.queue
    assert letter["headers"][wire.ORIGINAL_EXCHANGE] == ""
    assert letter["properties"]["content_type"] == "application/json"
    assert json.loads(letter["body"]) == {"order": "sku-2"}
    # and showing consumed nothing
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))


async def test_show_of_an_unknown_id_exits_2_and_says_so(shop: Shop) -> None:
    # Given a DLQ without a message "order-9"
    # When a user asks for it
    result = await dlq("show", shop.queue, "order-9", url=shop.url)

    # Then the command fails with a usage error naming the id and the DLQ
    assert result.code == 2
    assert f"no dead letter with id 'order-9' in {shop.dlq}" in result.stderr


# -- replay ------------------------------------------------------------------------------


async def test_replay_dry_run_with_a_reason_match_names_the_matches_and_changes_nothing(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with two timeouts among five dead letters, and no pool consuming
    await shop.pool.shutdown(timeout=5)

    # When a user asks what replaying the timeouts would do
    result = await dlq(
        "replay",
        shop.queue,
        "--reason-match",
        "upstream time(out|d out)",
        "--dry-run",
        url=shop.url,
    )

    # Then the timeouts are named with their reasons, then one summary line
    assert result.code == 0, result.output
    *named, last = result.stdout.splitlines()
    assert sorted(named) == [
        f"would replay {i}: upstream timeout while pricing {i}" for i in TIMEOUT_IDS
    ]
    assert last == "would replay 2, failed 0, left alone 3"
    # and nothing moved: all five are in the DLQ, none in the queue
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))
    assert await probe.ready(shop.queue) == 0


async def test_replay_of_one_id_puts_only_that_message_back_as_a_first_attempt(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with five dead letters, and no pool consuming
    await shop.pool.shutdown(timeout=5)

    # When a user replays "sku-2" only
    result = await dlq("replay", shop.queue, "--id", "sku-2", url=shop.url)

    # Then "sku-2" is back in its queue, and the four others are still dead letters
    assert result.code == 0, result.output
    assert result.stdout.splitlines() == ["replayed 1, failed 0, left alone 4"]
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS) - 1)
    [copy] = await probe.take(shop.queue)
    assert copy.message_id == "sku-2"
    assert sorted(d.message_id or "" for d in await probe.peek(shop.dlq)) == sorted(
        set(BROKEN_IDS) - {"sku-2"}
    )
    # and the copy is the original message, without the diagnosis or a retry count
    assert copy.body == body_of("sku-2")
    assert copy.properties.content_type == "application/json"
    assert not set(copy.headers) & set(DIAGNOSTIC_HEADERS), copy.headers


async def test_replay_after_a_fix_processes_every_dead_letter_exactly_once(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ of five messages that failed, and the pool still running
    before = len(shop.worker.deliveries)

    # When the bug is fixed and a user replays every dead letter
    shop.broken = False
    result = await dlq("replay", shop.queue, "--all", url=shop.url)

    # Then the command says so in one line, and each is processed by the running pool
    assert result.code == 0, result.output
    assert result.stdout.splitlines() == ["replayed 5, failed 0, left alone 0"]
    await shop.worker.wait_processed(*BROKEN_IDS)
    # and the DLQ is empty
    await probe.wait_for_ready(shop.dlq, 0)
    # and once the pool stopped (handing back anything it still held), nothing is left over
    await shop.pool.shutdown(timeout=5)
    assert await probe.ready(shop.queue) == 0
    assert await probe.ready(shop.dlq) == 0
    # and each replayed message was processed exactly once, the others not again
    replayed = shop.worker.deliveries[before:]
    assert collections.Counter(d.id for d in replayed) == dict.fromkeys(BROKEN_IDS, 1)
    assert collections.Counter(shop.worker.processed) == dict.fromkeys(GOOD_IDS + BROKEN_IDS, 1)
    # and each came back as a first attempt, without the headers of its failure
    for delivery in replayed:
        assert delivery.attempt == 1
        assert delivery.retry_attempt is None
        assert not set(delivery.headers) & set(DIAGNOSTIC_HEADERS), delivery.headers
        assert delivery.payload == {"order": delivery.id}


async def test_replay_goes_on_past_a_copy_the_broker_refuses_and_names_it(
    rabbitmq_url: str, queue_name: str, probe: RabbitProbe, rabbitmq_node: RabbitMQNode
) -> None:
    # Given a DLQ of three dead letters, the middle one larger than the broker now accepts
    dead_letters = f"{queue_name}-dlq"
    await probe.declare_plain_queue(queue_name)
    await probe.declare_plain_queue(dead_letters)
    try:
        await put_dead_letters(
            rabbitmq_url,
            dead_letters,
            dead_letter(queue_name, "ok-1"),
            dead_letter(queue_name, "big-1", body=b"x" * (4 * SMALL_MAX_MESSAGE_SIZE)),
            dead_letter(queue_name, "ok-2"),
        )
        with max_message_size(rabbitmq_node, SMALL_MAX_MESSAGE_SIZE):
            # When a user replays them all (the broker closes the publishing channel on the
            # big copy)
            result = await dlq("replay", queue_name, "--all", url=rabbitmq_url)

        # Then the others are replayed, the big one is named as still in the DLQ, the
        # command exits 1, and there is no traceback
        assert result.code == 1, result.output
        assert result.stdout.splitlines() == [
            "replayed 2, failed 1 (still in the DLQ: big-1), left alone 0"
        ]
        assert "Traceback" not in result.output
        # (ok-1's copy, in flight on the channel the big one closed, may have lost only its
        # confirm: its turn alone then makes a second copy; at least once, never lost)
        requeued = [m.message_id for m in await probe.take(queue_name)]
        assert requeued in (["ok-1", "ok-2"], ["ok-1", "ok-1", "ok-2"])
        assert [m.message_id for m in await probe.take(dead_letters)] == ["big-1"]
    finally:
        await probe.delete_queues(queue_name, dead_letters)


# -- purge -------------------------------------------------------------------------------


async def test_purge_without_yes_exits_2_and_deletes_nothing(
    shop: Shop, probe: RabbitProbe
) -> None:
    # Given a DLQ with five dead letters
    # When a user purges it without confirming
    result = await dlq("purge", shop.queue, url=shop.url)

    # Then the command refuses, says how to confirm, and every dead letter is still there
    assert result.code == 2
    assert "--yes" in result.stderr
    await probe.wait_for_ready(shop.dlq, len(BROKEN_IDS))


async def test_purge_with_yes_empties_the_dlq(shop: Shop, probe: RabbitProbe) -> None:
    # Given a DLQ with five dead letters
    # When a user purges it and confirms
    result = await dlq("purge", shop.queue, "--yes", url=shop.url)

    # Then they are gone, and the command says how many
    assert result.code == 0, result.output
    assert f"purged 5 dead letter(s) from {shop.dlq}" in result.stdout
    assert await probe.ready(shop.dlq) == 0


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [["list"], ["show", "X"], ["replay", "--all"], ["replay", "--dry-run"], ["purge", "--yes"]],
    ids=lambda action: " ".join(action),
)
async def test_an_unknown_queue_exits_2_with_a_clear_message(
    rabbitmq_url: str, queue_name: str, action: list[str]
) -> None:
    # Given a queue name foxwork never consumed, so it has no DLQ
    # When a user runs a dlq command on it
    result = await dlq(action[0], queue_name, *action[1:], url=rabbitmq_url)

    # Then it fails as a usage error that names the missing DLQ, without a traceback
    assert result.code == 2, result.output
    assert f"there is no dead-letter queue '{queue_name}-dlq'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "action", [["list"], ["show", "X"], ["replay", "--all"], ["purge", "--yes"]]
)
async def test_without_a_url_the_command_exits_2_and_says_how_to_give_one(
    queue_name: str, action: list[str]
) -> None:
    # Given neither --url nor $FOXWORK_URL
    # When a user runs a dlq command
    result = await dlq(action[0], queue_name, *action[1:])

    # Then it fails as a usage error that says how to give the URL
    assert result.code == 2
    assert (
        "no broker URL: pass --url amqp://... or --url redis://..., or set $FOXWORK_URL"
        in result.stderr
    )


async def test_a_wrong_password_exits_2_without_showing_it(
    rabbitmq_url: str, queue_name: str
) -> None:
    # Given a URL whose password is wrong
    url = rabbitmq_url.replace("guest:guest@", f"guest:{SECRET}@")
    assert SECRET in url

    # When a user lists a DLQ with it
    result = await dlq("list", queue_name, url=url)

    # Then the command fails with a clear message that shows the URL redacted
    assert result.code == 2
    assert "cannot connect to amqp://guest:***@" in result.stderr
    assert SECRET not in result.output


@pytest.fixture
def secret_url(rabbitmq_node: RabbitMQNode, rabbitmq_url: str, queue_name: str) -> Any:
    """The broker URL of a user (made for the test) whose password is `SECRET`."""
    user = f"user-{queue_name}"
    rabbitmq_node.ctl("add_user", user, SECRET)
    try:
        rabbitmq_node.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield rabbitmq_url.replace("guest:guest@", f"{user}:{SECRET}@")
    finally:
        rabbitmq_node.ctl("delete_user", user)


async def test_a_password_in_the_url_never_appears_in_any_output(
    shop: Shop, secret_url: str, probe: RabbitProbe
) -> None:
    # Given a DLQ, no pool consuming, and a URL with a password that works
    await shop.pool.shutdown(timeout=5)

    # When a user runs every dlq command with that URL, and some that fail (one after the
    # other: two browses at once would each see only what the other does not hold)
    results = [
        await dlq("list", shop.queue, url=secret_url),
        await dlq("list", shop.queue, "--json", url=secret_url),
        await dlq("show", shop.queue, "sku-1", url=secret_url),
        await dlq("show", shop.queue, "sku-1", "--json", url=secret_url),
        await dlq("show", shop.queue, "order-9", url=secret_url),
        await dlq("replay", shop.queue, "--dry-run", url=secret_url),
        await dlq("replay", shop.queue, "--reason-match", "(", url=secret_url),
        await dlq("purge", f"{shop.queue}-unknown", "--yes", url=secret_url),
    ]
    results.append(await dlq("replay", shop.queue, "--id", "slow-1", url=secret_url))
    results.append(await dlq("purge", shop.queue, "--yes", url=secret_url))

    # Then they did their work (so the URL was used), and no output shows the password
    assert [r.code for r in results] == [0, 0, 0, 0, 2, 0, 2, 2, 0, 0], [r.output for r in results]
    assert "purged 4 dead letter(s)" in results[-1].stdout
    for result in results:
        assert SECRET not in result.output
    assert await probe.ready(shop.dlq) == 0
