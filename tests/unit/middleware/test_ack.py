"""AckNackMiddleware: every delivery settled once, by a documented policy."""

from __future__ import annotations

import asyncio

import pytest

from foxwork import ConfigurationError, DeadLetter, Drop, RetryLater, SettleState
from foxwork.middleware import AckNackMiddleware, AckPolicy

from ..helpers import RecordingSettler, make_message, raising, succeed


class Boom(Exception):
    pass


def test_the_default_policy_is_dead_letter() -> None:
    assert AckNackMiddleware().on_failure is AckPolicy.DEAD_LETTER


@pytest.mark.parametrize("bad", ["requeue", None, 1])
def test_a_policy_that_is_not_an_ack_policy_is_refused_naming_the_choices(bad: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AckNackMiddleware(on_failure=bad)  # type: ignore[arg-type]
    assert "on_failure" in str(caught.value)
    assert "DEAD_LETTER, REQUEUE, REJECT" in str(caught.value)


async def test_success_is_acked() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    await AckNackMiddleware()(message, succeed)

    # Then
    assert message.state is SettleState.ACKED
    assert settler.names == ["ack"]


async def test_a_message_an_inner_layer_settled_is_not_settled_again() -> None:
    # Given an inner layer that nacks the message itself
    settler = RecordingSettler()
    message = make_message(settler=settler)

    async def nacking(msg: object) -> None:
        await message.nack(requeue=True)

    # When
    await AckNackMiddleware()(message, nacking)

    # Then
    assert settler.names == ["nack"]


@pytest.mark.parametrize(
    ("policy", "calls", "state"),
    [
        (AckPolicy.DEAD_LETTER, ["publish_dead_letter", "ack"], SettleState.DEAD_LETTERED),
        (AckPolicy.REQUEUE, ["nack"], SettleState.REQUEUED),
        (AckPolicy.REJECT, ["nack"], SettleState.REJECTED),
    ],
)
async def test_a_failure_is_settled_by_the_policy_and_re_raised(
    policy: AckPolicy, calls: list[str], state: SettleState
) -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    with pytest.raises(Boom):
        await AckNackMiddleware(on_failure=policy)(message, raising(Boom("broken")))

    # Then
    assert settler.names == calls
    assert message.state is state


async def test_the_requeue_policy_nacks_with_requeue_and_reject_without() -> None:
    # Given
    requeued, rejected = RecordingSettler(), RecordingSettler()

    # When
    for settler, policy in ((requeued, AckPolicy.REQUEUE), (rejected, AckPolicy.REJECT)):
        with pytest.raises(Boom):
            await AckNackMiddleware(on_failure=policy)(
                make_message(settler=settler), raising(Boom())
            )

    # Then
    assert requeued.calls == [("nack", True)]
    assert rejected.calls == [("nack", False)]


async def test_a_dead_letter_carries_the_failure_reason_and_type() -> None:
    # Given
    settler = RecordingSettler()

    # When
    with pytest.raises(Boom):
        await AckNackMiddleware()(make_message(settler=settler), raising(Boom("no stock")))

    # Then
    headers = settler.calls[0][1]
    assert headers["x-failure-reason"] == "no stock"
    assert headers["x-exception-type"] == f"{__name__}.Boom"


@pytest.mark.parametrize("policy", list(AckPolicy))
async def test_drop_is_acked_and_not_re_raised_whatever_the_policy(policy: AckPolicy) -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    await AckNackMiddleware(on_failure=policy)(message, raising(Drop("duplicate")))

    # Then
    assert settler.names == ["ack"]


@pytest.mark.parametrize("policy", list(AckPolicy))
async def test_dead_letter_is_honoured_whatever_the_policy(policy: AckPolicy) -> None:
    # Given
    settler = RecordingSettler()

    # When
    with pytest.raises(DeadLetter):
        await AckNackMiddleware(on_failure=policy)(
            make_message(settler=settler), raising(DeadLetter("unknown SKU"))
        )

    # Then
    assert settler.names == ["publish_dead_letter", "ack"]
    assert settler.calls[0][1]["x-failure-reason"] == "unknown SKU"


async def test_retry_later_without_a_retry_layer_requeues_at_once() -> None:
    # Given
    settler = RecordingSettler()

    # When
    with pytest.raises(RetryLater):
        await AckNackMiddleware()(make_message(settler=settler), raising(RetryLater(5.0)))

    # Then
    assert settler.calls == [("nack", True)]


async def test_cancelled_error_passes_through_untouched() -> None:
    # Given
    settler = RecordingSettler()
    message = make_message(settler=settler)

    # When
    with pytest.raises(asyncio.CancelledError):
        await AckNackMiddleware()(message, raising(asyncio.CancelledError()))

    # Then nothing settled it: the pool nacks a cancelled message back
    assert settler.calls == []
    assert not message.settled


def test_repr_shows_the_policy() -> None:
    assert repr(AckNackMiddleware(on_failure=AckPolicy.REJECT)) == (
        "AckNackMiddleware(on_failure=AckPolicy.REJECT)"
    )
