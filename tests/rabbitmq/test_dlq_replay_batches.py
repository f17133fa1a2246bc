"""A replay without a rate limit publishes its copies in batches (one write each) and
removes runs of dead letters whose copies are confirmed with one `basic.ack` (`multiple`):
neither may remove a dead letter it leaves in place, nor one whose own copy was not
confirmed."""

from __future__ import annotations

import contextlib

import pytest

from foxwork.backends.rabbitmq import dlq as dlq_module
from foxwork.backends.rabbitmq import replay as replay_module
from foxwork.backends.rabbitmq.dlq import DeadLetterQueue

from .support import Queues, RabbitProbe, dead_letter, put_dead_letters


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches and ack runs far smaller than the DLQ, so a replay makes many of each."""
    monkeypatch.setattr(replay_module, "_PUBLISH_BATCH", 16)
    monkeypatch.setattr(replay_module, "_ACK_BATCH", 8)


@pytest.mark.usefixtures("small_batches")
async def test_a_filtered_replay_removes_only_the_dead_letters_it_replayed(
    queues: Queues, probe: RabbitProbe
) -> None:
    # Given 300 dead letters: a run of 20 to replay, then one in every seven to keep
    ids = [f"keep-{n:03}" if n >= 20 and n % 7 == 0 else f"dl-{n:03}" for n in range(300)]
    await put_dead_letters(queues.url, queues.dlq, *(dead_letter(queues.queue, i) for i in ids))

    # When a user replays those whose reason matches (every copy is confirmed)
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay(reason_match="price dl-")

    # Then each chosen one is back in its queue once, in order, and the ones passed over
    # are still in the DLQ, in order (no `multiple` ack reached one of them)
    chosen = [i for i in ids if i.startswith("dl-")]
    kept = [i for i in ids if i.startswith("keep-")]
    assert (result.replayed, result.failed, result.stopped) == (chosen, [], "")
    assert [m.message_id for m in await probe.take(queues.queue)] == chosen
    assert [m.message_id for m in await probe.take(queues.dlq)] == kept


@pytest.mark.usefixtures("small_batches")
async def test_a_copy_returned_in_a_batch_fails_alone_and_its_neighbours_are_replayed(
    queues: Queues, probe: RabbitProbe
) -> None:
    # Given 60 dead letters, every tenth of a queue that no longer exists (its copy comes
    # back unroutable), in the middle of batches of copies that are confirmed
    gone = f"{queues.queue}-gone"
    letters = [
        dead_letter(gone, f"gone-{n:02}")
        if n % 10 == 5
        else dead_letter(queues.queue, f"dl-{n:02}")
        for n in range(60)
    ]
    ids = [letter.message_id for letter in letters]
    await put_dead_letters(queues.url, queues.dlq, *letters)

    # When every one is replayed
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        result = await dlq.replay()

    # Then exactly the returned copies failed and their dead letters stay, in order; the
    # others are back in their queue, in order, and gone from the DLQ
    returned = [i for i in ids if i and i.startswith("gone-")]
    replayed = [i for i in ids if i and i.startswith("dl-")]
    assert (result.replayed, result.failed, result.stopped) == (replayed, returned, "")
    assert [m.message_id for m in await probe.take(queues.queue)] == replayed
    assert [m.message_id for m in await probe.take(queues.dlq)] == returned


async def test_leaving_a_listing_while_the_next_window_arrives_hands_every_dead_letter_back(
    queues: Queues, probe: RabbitProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 300 dead letters, read in windows of 64 (the next received while one is handed on)
    monkeypatch.setattr(dlq_module, "_BROWSE_WINDOW", 64)
    ids = [f"dl-{n:03}" for n in range(300)]
    await put_dead_letters(queues.url, queues.dlq, *(dead_letter(queues.queue, i) for i in ids))

    # When a user leaves the listing in the middle of the second window
    seen: list[str] = []
    async with DeadLetterQueue(queues.url, queues.queue) as dlq:
        async with contextlib.aclosing(dlq.iter_letters()) as letters:
            async for letter in letters:
                seen.append(letter.id)
                if len(seen) == 100:
                    break
        # Then the listing gave the first 100 in order, and every dead letter is back in
        # the DLQ, in order (the window being received was dropped with its consumer)
        assert seen == ids[:100]
        assert await dlq.count() == 300
    assert [m.message_id for m in await probe.peek(queues.dlq)] == ids
