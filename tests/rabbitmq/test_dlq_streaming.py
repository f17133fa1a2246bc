"""`DeadLetterQueue` against a real broker: a large DLQ is read one dead letter at a time
(show and replay read no further than they need, a rate-limited replay checks nothing out
while it waits), a copy the broker refuses does not end a replay, and a dead letter another
user sent can be replayed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from foxwork.backends.rabbitmq import dlq as dlq_module
from foxwork.backends.rabbitmq import replay as replay_module
from foxwork.backends.rabbitmq.dlq import DeadLetterQueue
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import UserFactory
from .support import (
    SMALL_MAX_MESSAGE_SIZE,
    Queues,
    RabbitProbe,
    dead_letter,
    max_message_size,
    put_dead_letters,
)

#: Dead letters in the large DLQ: far more than any of the operations below needs to read.
DEAD_LETTERS = 300


@pytest.fixture
async def large_dlq(queues: Queues) -> tuple[Queues, list[str]]:
    """`queues` with `DEAD_LETTERS` dead letters in the DLQ, and their ids, oldest first."""
    ids = [f"dl-{n:03}" for n in range(DEAD_LETTERS)]
    await put_dead_letters(queues.url, queues.dlq, *(dead_letter(queues.queue, i) for i in ids))
    return queues, ids


def redelivered_ids(messages: list[Any]) -> list[str]:
    return [m.message_id for m in messages if m.redelivered]


# -- reading a large DLQ -----------------------------------------------------------------


async def test_show_reads_no_further_than_the_dead_letter_it_shows(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe
) -> None:
    # Given a DLQ of 300 dead letters
    queues, ids = large_dlq

    # When a user shows the third one
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        letter = await dlq.show("dl-002")

    # Then they get it
    assert letter is not None
    assert letter.id == "dl-002"
    assert letter.reason == "could not price dl-002"
    # and only the first three were ever handed out (and so marked redelivered): the rest
    # were never fetched, let alone held
    left = await probe.peek(queues.dlq)
    assert redelivered_ids(left) == ids[:3]
    # and every dead letter is still in the DLQ, in order
    assert [m.message_id for m in left] == ids


async def test_list_with_a_limit_reads_only_that_many(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe
) -> None:
    # Given a DLQ of 300 dead letters
    queues, ids = large_dlq

    # When a user lists the first five
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        letters = await dlq.list(limit=5)

    # Then they get those five, oldest first, and no other dead letter was handed out
    assert [letter.id for letter in letters] == ids[:5]
    left = await probe.peek(queues.dlq)
    assert redelivered_ids(left) == ids[:5]
    assert [m.message_id for m in left] == ids


async def test_replay_with_a_limit_reads_no_further_than_what_it_replays(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe
) -> None:
    # Given a DLQ of 300 dead letters
    queues, ids = large_dlq

    # When a user replays two of them
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay(limit=2)

    # Then the two oldest are back in their queue, and the others were left alone
    assert result.replayed == ids[:2]
    assert (result.failed, result.skipped, result.stopped) == ([], DEAD_LETTERS - 2, "")
    assert [m.message_id for m in await probe.take(queues.queue)] == ids[:2]
    # and none of the others was ever handed out: they are in the DLQ, in order, untouched
    left = await probe.peek(queues.dlq)
    assert [m.message_id for m in left] == ids[2:]
    assert redelivered_ids(left) == []


async def test_a_rate_limited_replay_checks_out_nothing_while_it_waits(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe
) -> None:
    # Given a DLQ of 300 dead letters
    queues, ids = large_dlq

    # When a user replays them all at one every 1,000 s, and the first is back in its queue
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        replay = asyncio.create_task(dlq.replay(rate=0.001))
        await probe.wait_for_ready(queues.queue, 1)

        # Then while it waits for the next slot, every other dead letter is ready in the
        # DLQ: none is held unacknowledged, so none can run into the broker's ack timeout
        await probe.wait_for_ready(queues.dlq, DEAD_LETTERS - 1)

        # and stopping the replay then loses nothing and changes nothing else
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay
    assert [m.message_id for m in await probe.take(queues.queue)] == ids[:1]
    assert [m.message_id for m in await probe.peek(queues.dlq)] == ids[1:]


async def test_a_filtered_rate_limited_replay_hands_back_what_it_passed_over_to_wait(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a DLQ of 300 dead letters, and a replay that holds the dead letters it passed
    # over for no time at all before it waits on the rate limit (minutes, normally)
    queues, ids = large_dlq
    monkeypatch.setattr(replay_module, "_HOLD_LIMIT", 0.0)

    # When a user replays the 6th and 7th at one every 1,000 s, and the 6th is back in its
    # queue
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        replay = asyncio.create_task(dlq.replay(ids=["dl-005", "dl-006"], rate=0.001))
        await probe.wait_for_ready(queues.queue, 1)

        # Then while it waits to replay the 7th, it holds neither the five it passed over
        # nor the 7th: all 299 are ready in the DLQ
        await probe.wait_for_ready(queues.dlq, DEAD_LETTERS - 1)
        replay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replay

    # and the DLQ is as it was, less the 6th
    assert [m.message_id for m in await probe.take(queues.queue)] == ["dl-005"]
    assert [m.message_id for m in await probe.peek(queues.dlq)] == ids[:5] + ids[6:]


# -- a copy the broker refuses -----------------------------------------------------------


@pytest.mark.parametrize("window", [1, 256])
async def test_a_copy_the_broker_refuses_fails_alone_and_the_replay_goes_on(
    queues: Queues,
    probe: RabbitProbe,
    rabbitmq_node: RabbitMQNode,
    window: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a DLQ of three dead letters, the middle one larger than the broker now accepts,
    # replayed one copy at a time or a window of them
    monkeypatch.setattr(replay_module, "_REPLAY_WINDOW", window)
    big = b"x" * (4 * SMALL_MAX_MESSAGE_SIZE)
    await put_dead_letters(
        queues.url,
        queues.dlq,
        dead_letter(queues.queue, "ok-1"),
        dead_letter(queues.queue, "big-1", body=big),
        dead_letter(queues.queue, "ok-2"),
    )
    with max_message_size(rabbitmq_node, SMALL_MAX_MESSAGE_SIZE):
        # When a user replays them all (the broker closes the publishing channel on the
        # big copy)
        async with DeadLetterQueue(queues.url, queues.queue) as dlq:
            result = await dlq.replay()

    # Then the big one failed and the replay went on with the next
    assert (result.replayed, result.failed, result.stopped) == (["ok-1", "ok-2"], ["big-1"], "")
    requeued = [m.message_id for m in await probe.take(queues.queue)]
    if window == 1:
        assert requeued == ["ok-1", "ok-2"]
    else:
        # a copy in flight on the channel the big one closed may have lost only its confirm:
        # its turn alone then makes a second copy (at least once, never lost)
        assert requeued in (["ok-1", "ok-2"], ["ok-1", "ok-1", "ok-2"])
    # and the big one is still a dead letter, whole
    [left] = await probe.take(queues.dlq)
    assert (left.message_id, left.body) == ("big-1", big)


@pytest.mark.parametrize("window", [1, 256])
async def test_a_replay_that_loses_its_connection_stops_and_says_why(
    queues: Queues,
    probe: RabbitProbe,
    rabbitmq_node: RabbitMQNode,
    window: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a DLQ of three dead letters, replayed one copy at a time or a window of them
    monkeypatch.setattr(replay_module, "_REPLAY_WINDOW", window)
    ids = ["lost-1", "lost-2", "lost-3"]
    await put_dead_letters(queues.url, queues.dlq, *(dead_letter(queues.queue, i) for i in ids))

    def close_replay_connection(done: int, total: int) -> None:
        if done == 1:
            name = f"foxwork dlq {queues.dlq}"
            for line in rabbitmq_node.ctl(
                "list_connections", "pid", "client_properties"
            ).splitlines():
                if name in line:
                    rabbitmq_node.ctl("close_connection", line.split()[0], "closed by the test")

    # When the broker closes the replay's connection once the first is replayed
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay(on_progress=close_replay_connection)

    # Then the replay has lost nothing: what it replayed is back in its queue, in order,
    # and every other dead letter is still in the DLQ
    requeued = [m.message_id for m in await probe.take(queues.queue)]
    left = [m.message_id for m in await probe.take(queues.dlq)]
    assert requeued == result.replayed
    assert set(requeued) | set(left) == set(ids)
    if window == 1:
        # and, one at a time, it stops and says why: the first is replayed and the other
        # two are still dead letters
        assert result.stopped.startswith("lost the connection to amqp://guest:***@")
        assert (requeued, left) == (["lost-1"], ids[1:])
    else:
        # (copies in flight when the connection went may all be confirmed, their dead
        # letters then in both places, never in neither)
        assert requeued[0] == "lost-1"


# -- a dead letter another user sent -----------------------------------------------------


async def test_a_dead_letter_another_user_sent_is_replayed_without_its_user_id(
    queues: Queues, probe: RabbitProbe, make_user: UserFactory
) -> None:
    # Given a dead letter with the user id of the one who replays ("guest"), and one with
    # the user id of another user, who sent it
    user, user_url = make_user()
    await put_dead_letters(
        queues.url, queues.dlq, dead_letter(queues.queue, "ours", user_id="guest")
    )
    await put_dead_letters(user_url, queues.dlq, dead_letter(queues.queue, "theirs", user_id=user))

    # When "guest" replays them
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay()

    # Then both are back in their queue; the copy of the other user's has no user id (the
    # broker refuses any but the publisher's own), the other keeps its own
    assert (result.replayed, result.failed, result.stopped) == (["ours", "theirs"], [], "")
    copies = await probe.take(queues.queue)
    assert [(c.message_id, c.properties.user_id) for c in copies] == [
        ("ours", "guest"),
        ("theirs", None),
    ]
    assert await probe.ready(queues.dlq) == 0


async def test_iter_letters_streams_every_dead_letter_in_order_a_window_at_a_time(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a DLQ of 300 dead letters, read in windows of 64 (the last one short)
    queues, ids = large_dlq
    monkeypatch.setattr(dlq_module, "_BROWSE_WINDOW", 64)

    # When a user iterates over them
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        seen = [letter.id async for letter in dlq.iter_letters()]

    # Then they get every one, oldest first, and every one is still in the DLQ, in order
    assert seen == ids
    assert dlq.unread == 0
    assert [m.message_id for m in await probe.peek(queues.dlq)] == ids


async def test_a_replay_of_many_windows_replays_every_dead_letter_in_order(
    large_dlq: tuple[Queues, list[str]], probe: RabbitProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a DLQ of 300 dead letters, read in windows of 64 with 16 copies in flight
    queues, ids = large_dlq
    monkeypatch.setattr(dlq_module, "_BROWSE_WINDOW", 64)
    monkeypatch.setattr(replay_module, "_REPLAY_WINDOW", 16)

    # When every one is replayed
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay()

    # Then each is back in its queue once, in order, and the DLQ is empty (acks within a
    # window do not let the broker hand the window's consumer a dead letter past it)
    assert (result.replayed, result.failed, result.skipped, result.stopped) == (ids, [], 0, "")
    assert [m.message_id for m in await probe.take(queues.queue)] == ids
    assert await probe.peek(queues.dlq) == []
