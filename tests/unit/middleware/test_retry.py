"""RetryMiddleware: backoff on the broker, then the dead-letter queue."""

from __future__ import annotations

import math
from typing import Any

import pytest

from foxwork import (
    ConfigurationError,
    DeadLetter,
    Drop,
    Message,
    PoisonMessage,
    RetryLater,
    SettleState,
    wire,
)
from foxwork.backends import MemoryBackend
from foxwork.middleware import AckNackMiddleware, RetryMiddleware
from tests.conftest import PoolFactory, run_until_idle

from ..helpers import FailingWorker, RecordingSettler, make_message, raising, succeed

#: Tiny delays keep the MemoryBackend's real retry timers in the milliseconds.
FAST = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}


class Boom(Exception):
    pass


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_attempts": 0}, "max_attempts=0"),
        ({"max_attempts": -1}, "max_attempts=-1"),
        ({"max_attempts": 2.5}, "max_attempts=2.5"),
        ({"max_attempts": True}, "max_attempts=True"),
        ({"initial_backoff": -1}, "initial_backoff=-1"),
        ({"initial_backoff": 5, "max_backoff": 1}, "max_backoff=1"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier=0.5"),
        ({"jitter": 1.5}, "jitter=1.5"),
        ({"jitter": -0.1}, "jitter=-0.1"),
        ({"max_redeliveries": 0}, "max_redeliveries=0"),
        ({"initial_backoff": "1"}, "initial_backoff='1'.*number of seconds"),
        ({"initial_backoff": True}, "initial_backoff=True"),
        ({"max_backoff": "60"}, "max_backoff='60'.*number of seconds"),
        ({"max_backoff": True}, "max_backoff=True"),
        ({"backoff_multiplier": "2"}, "backoff_multiplier='2'.*number"),
        ({"backoff_multiplier": True}, "backoff_multiplier=True"),
        ({"jitter": "0.1"}, "jitter='0.1'.*fraction"),
        ({"jitter": True}, "jitter=True"),
        ({"max_redeliveries": "5"}, "max_redeliveries='5'.*int"),
        ({"max_redeliveries": 2.5}, "max_redeliveries=2.5"),
        ({"max_redeliveries": True}, "max_redeliveries=True"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument_and_value(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        RetryMiddleware(**kwargs)


def test_defaults_are_five_attempts_from_one_second_doubling() -> None:
    middleware = RetryMiddleware()
    assert (middleware.max_attempts, middleware.initial_backoff) == (5, 1.0)
    assert (middleware.backoff_multiplier, middleware.max_backoff) == (2.0, 300.0)
    assert "max_attempts=5" in repr(middleware)


# -- the backoff schedule ---------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_maximum() -> None:
    # Given
    middleware = RetryMiddleware(
        initial_backoff=1.0, backoff_multiplier=2.0, max_backoff=10.0, jitter=0.0
    )

    # When
    schedule = [middleware.backoff(failed) for failed in range(1, 8)]

    # Then
    assert schedule == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_with_multiplier_one_is_constant() -> None:
    middleware = RetryMiddleware(initial_backoff=3.0, backoff_multiplier=1.0, jitter=0.0)
    assert {middleware.backoff(failed) for failed in range(1, 6)} == {3.0}


def test_jitter_spreads_delays_within_its_fraction_and_never_past_the_maximum() -> None:
    # Given
    middleware = RetryMiddleware(initial_backoff=10.0, max_backoff=20.0, jitter=0.1)

    # When
    first = [middleware.backoff(1) for _ in range(500)]
    capped = [middleware.backoff(5) for _ in range(500)]

    # Then
    assert all(9.0 <= delay <= 11.0 for delay in first)
    assert len(set(first)) > 1
    assert all(18.0 <= delay <= 20.0 for delay in capped)


# -- settlement decisions, against a recording settler ----------------------------------


async def test_a_failure_before_the_last_attempt_is_retried_with_the_backoff_delay() -> None:
    # Given
    settler = RecordingSettler()
    middleware = RetryMiddleware(max_attempts=3, initial_backoff=2.0, jitter=0.0)
    message = make_message(settler=settler, headers={"x-retry-attempt": 1})

    # When the second attempt fails
    with pytest.raises(Boom):
        await middleware(message, raising(Boom()))

    # Then a copy goes out with the second delay, and the failure still reaches outer layers
    assert settler.calls == [("publish_retry", 4.0), ("ack", None)]
    assert message.state is SettleState.RETRIED


async def test_retry_later_uses_its_own_delay() -> None:
    # Given
    settler = RecordingSettler()
    middleware = RetryMiddleware(initial_backoff=1.0, jitter=0.0)

    # When
    with pytest.raises(RetryLater):
        await middleware(make_message(settler=settler), raising(RetryLater(delay=7.5)))

    # Then
    assert settler.calls == [("publish_retry", 7.5), ("ack", None)]


async def test_retry_later_on_the_last_attempt_dead_letters() -> None:
    # Given
    settler = RecordingSettler()
    middleware = RetryMiddleware(max_attempts=2)

    # When
    with pytest.raises(RetryLater):
        await middleware(
            make_message(settler=settler, headers={"x-retry-attempt": 1}),
            raising(RetryLater(delay=1.0)),
        )

    # Then
    assert settler.names == ["publish_dead_letter", "ack"]
    assert settler.calls[0][1]["x-final-attempt"] == 2


@pytest.mark.parametrize("error", [DeadLetter("unknown SKU"), PoisonMessage("bad body")])
async def test_dead_letter_and_poison_skip_the_retries(error: DeadLetter) -> None:
    # Given a first attempt with plenty of attempts left
    settler = RecordingSettler()

    # When
    with pytest.raises(DeadLetter):
        await RetryMiddleware(max_attempts=5)(make_message(settler=settler), raising(error))

    # Then
    assert settler.names == ["publish_dead_letter", "ack"]
    assert settler.calls[0][1]["x-failure-reason"] == error.reason


async def test_drop_passes_through_unsettled_for_the_ack_layer() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    with pytest.raises(Drop):
        await RetryMiddleware()(message, raising(Drop()))

    # Then
    assert settler.calls == []
    assert not message.settled


async def test_success_settles_nothing_itself() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    await RetryMiddleware()(message, succeed)

    # Then
    assert settler.calls == []


async def test_an_unconfirmed_retry_copy_requeues_the_original() -> None:
    # Given a broker that nacks the copy
    settler = RecordingSettler(confirm=False)
    message = make_message(settler=settler)

    # When
    with pytest.raises(Boom):
        await RetryMiddleware()(message, raising(Boom()))

    # Then
    assert settler.calls == [("nack", True)]
    assert message.state is SettleState.REQUEUED


# -- crash loops ------------------------------------------------------------------------


class CopySettler(RecordingSettler):
    """Records the headers of each retry copy, as the broker would deliver them next."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[dict[str, Any]] = []

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        await super().publish_retry(message, delay=delay)
        self.copies.append(wire.retry_headers(message.headers, message.attempt))


async def crashing(message: Message[Any]) -> None:
    raise SystemExit  # the process "dies": nothing settles the delivery


async def test_a_redelivered_classic_message_is_counted_on_a_copy_not_processed() -> None:
    # Given a message redelivered by a classic queue (its process died holding it)
    settler = CopySettler()
    message = make_message(settler=settler, redelivered=True, message_id="order-7")

    # When it reaches the middleware
    await RetryMiddleware(max_redeliveries=3)(message, crashing)

    # Then it is not processed: a copy counting the crash is retried, and the delivery acked
    assert settler.names == ["publish_retry", "ack"]
    assert settler.copies[0]["x-redelivery-count"] == 1
    assert message.state is SettleState.RETRIED


async def test_a_crash_is_not_a_failed_attempt_the_copy_comes_back_as_the_same_attempt() -> None:
    # Given the third attempt of a message, redelivered after its process died holding it
    settler = CopySettler()
    message = make_message(
        settler=settler, redelivered=True, message_id="order-8", headers={"x-retry-attempt": 2}
    )
    assert message.attempt == 3

    # When it reaches the middleware
    await RetryMiddleware(max_attempts=3, max_redeliveries=3)(message, crashing)

    # Then its copy is its third attempt again, not a fourth (which would be past the limit)
    [copy] = settler.copies
    assert copy["x-retry-attempt"] == 2
    assert copy["x-redelivery-count"] == 1


async def test_the_crash_count_survives_a_restart_and_dead_letters_the_message() -> None:
    # Given a message that kills its process on every delivery, each process with a new
    # middleware (nothing survives in memory)
    headers: dict[str, Any] = {}
    processed = 0
    outcome = ""
    for _ in range(10):
        settler = CopySettler()
        first = make_message(settler=settler, headers=headers)  # the copy, delivered fresh
        with pytest.raises(SystemExit):
            await RetryMiddleware(max_redeliveries=3)(first, crashing)
        processed += 1
        # When the next process gets it redelivered
        again = make_message(settler=settler, headers=headers, redelivered=True)
        try:
            await RetryMiddleware(max_redeliveries=3)(again, crashing)
        except DeadLetter as exc:
            outcome = str(exc)
            break
        headers = settler.copies[-1]

    # Then its third redelivery goes to the DLQ unprocessed, saying why
    assert processed == 3
    assert "redelivered 3 times without being settled (max_redeliveries=3)" in outcome
    assert settler.names == ["publish_dead_letter", "ack"]
    assert "max_redeliveries=3" in settler.calls[0][1]["x-failure-reason"]


async def test_a_message_without_id_keeps_its_id_across_redeliveries() -> None:
    # Given a message published without a message id, delivered, then redelivered
    first = make_message(b'{"order": 1}', message_id=None)
    again = make_message(b'{"order": 1}', message_id=None, redelivered=True)

    # Then both deliveries have the same id
    assert first.id == again.id


async def test_on_a_quorum_queue_the_broker_counts_deliveries_not_the_middleware() -> None:
    # Given a redelivered quorum message far past max_redeliveries (the broker's own
    # delivery limit dead-letters crash loops there, and counts every requeue too)
    settler = RecordingSettler()
    message = make_message(settler=settler, redelivered=True, delivery_count=50)

    # When it is processed
    await RetryMiddleware(max_redeliveries=5)(message, succeed)

    # Then the middleware does not dead-letter it
    assert "publish_dead_letter" not in settler.names


async def test_a_requeue_foxwork_made_itself_is_not_counted_as_a_crash() -> None:
    # Given a copy that cannot be confirmed, so the original is requeued, five times over
    # (each redelivery is one foxwork caused: it did not come back unsettled)
    settler = RecordingSettler(confirm=False)
    middleware = RetryMiddleware(max_redeliveries=2, initial_backoff=0)
    for delivery in range(5):
        message = make_message(
            settler=settler,
            message_id="order-3",
            redelivered=delivery > 0,
            came_back_unsettled=False,
        )
        with pytest.raises(RuntimeError):
            await middleware(message, raising(RuntimeError("flaky")))
    # Then it was never dead-lettered as a crash loop
    assert "publish_dead_letter" not in settler.names


async def test_first_deliveries_are_never_counted_as_crash_loops() -> None:
    # Given a middleware that dead-letters at the first redelivery
    middleware = RetryMiddleware(max_redeliveries=1)
    settler = RecordingSettler()
    processed: list[str] = []

    async def process(message: Message[Any]) -> None:
        processed.append(message.id)

    # When the same message arrives three times, never redelivered
    for _ in range(3):
        await middleware(make_message(settler=settler, message_id="order-9"), process)

    # Then each delivery was processed, and nothing was copied or dead-lettered
    assert processed == ["order-9"] * 3
    assert settler.calls == []


async def test_max_redeliveries_none_disables_the_count() -> None:
    settler = RecordingSettler()
    await RetryMiddleware(max_redeliveries=None)(
        make_message(settler=settler, redelivered=True, delivery_count=100), succeed
    )
    assert settler.calls == []


# -- delays out of range ----------------------------------------------------------------


@pytest.mark.parametrize("delay", [math.inf, -math.inf, math.nan, -1.0])
def test_retry_later_refuses_a_delay_that_is_not_a_finite_number_of_seconds(delay: float) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryLater\(delay={delay!r}\).*finite"):
        RetryLater(delay)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"initial_backoff": math.nan}, "initial_backoff=nan"),
        ({"initial_backoff": math.inf}, "initial_backoff=inf"),
        ({"max_backoff": math.nan}, "max_backoff=nan"),
        ({"backoff_multiplier": math.nan}, "backoff_multiplier=nan"),
        ({"backoff_multiplier": math.inf}, "backoff_multiplier=inf"),
    ],
)
def test_backoff_settings_that_are_not_finite_are_refused(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        RetryMiddleware(**kwargs)


async def test_a_retry_later_delay_past_the_maximum_is_capped_to_it() -> None:
    # Given a worker asking for a retry in 31,700 years
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    with pytest.raises(RetryLater):
        await RetryMiddleware()(message, raising(RetryLater(delay=1e12)))

    # Then the copy waits the longest delay there is
    assert settler.calls[0] == ("publish_retry", wire.MAX_RETRY_DELAY)


@pytest.mark.parametrize("max_backoff", [1e12, math.inf])
def test_a_computed_backoff_never_passes_the_maximum_delay(max_backoff: float) -> None:
    # Given a schedule whose own ceiling is beyond the maximum (or none)
    middleware = RetryMiddleware(initial_backoff=1e9, max_backoff=max_backoff, jitter=0.1)

    # When / Then
    assert {middleware.backoff(failed) for failed in (1, 5, 1000)} == {wire.MAX_RETRY_DELAY}


async def test_a_worker_raising_retry_later_forever_does_not_hang_the_backend(
    make_pool: PoolFactory, memory_backend: MemoryBackend, queue_name: str
) -> None:
    # Given a worker asking for an infinite delay (refused: it raises ConfigurationError)
    worker = FailingWorker(lambda: RetryLater(delay=math.inf))
    pool = make_pool(
        worker, middleware=[AckNackMiddleware(), RetryMiddleware(max_attempts=2, **FAST)]
    )
    await memory_backend.add_message(queue_name, {"order": 1})

    # When the pool runs it, Then the queue drains (join returns) and the DLQ says why
    await run_until_idle(pool, memory_backend, queue_name, timeout=2, expect_failures=True)
    [dead] = memory_backend.dead_letters(queue_name)
    assert "RetryLater(delay=inf)" in dead.headers["x-failure-reason"]
    assert worker.attempts == [1, 2]
