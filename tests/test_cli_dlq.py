"""`foxwork dlq`: what it refuses before it connects to any broker (the commands against a
real broker are in tests/rabbitmq/test_cli_dlq.py and tests/redis/test_dlq.py)."""

from __future__ import annotations

import io

import pytest

from foxwork import cli
from foxwork.cli import dlq as dlq_cli
from foxwork.deadletter import ReplayResult

SECRET = "s3cr3t-pa55word"


@pytest.fixture(autouse=True)
def no_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.ENV_URL, raising=False)


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if a command opens a dead-letter queue; records the URLs asked for."""
    opened: list[str] = []

    def refuse(url: str, args: object) -> object:
        opened.append(url)
        raise AssertionError("the command connected to a broker")

    monkeypatch.setattr(dlq_cli, "_open", refuse)
    return opened


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (f"http://app:{SECRET}@127.0.0.1:1/", "URL scheme 'http' is not supported"),
        (f"kafka://app:{SECRET}@127.0.0.1:9092", "URL scheme 'kafka' is not supported"),
        ("127.0.0.1:5672", "a URL without a scheme is not supported"),
    ],
)
@pytest.mark.parametrize(
    "action", [["list"], ["show", "X"], ["replay", "--all"], ["purge", "--yes"]]
)
def test_an_unknown_url_scheme_exits_2_in_one_line_naming_the_supported_ones(
    url: str, named: str, action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # When a dlq command is given a URL of no broker it knows
    code = cli.main(["dlq", action[0], "orders", *action[1:], "--url", url])

    # Then it exits 2 with one line naming what it supports, and no password
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"foxwork dlq: error: {named}: use ")
    assert err.count("\n") == 1
    for scheme in ("amqp://", "amqps://", "redis://", "rediss://"):
        assert scheme in err
    assert SECRET not in err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--url", "redis://127.0.0.1:1/0", "--dlq", "other"], "--dlq is for RabbitMQ"),
        (["--url", "amqp://127.0.0.1:1/", "--key-prefix", "app"], "--key-prefix is for Redis"),
    ],
)
def test_an_option_of_the_other_broker_exits_2(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # When a user gives a RabbitMQ option with a Redis URL, or the other way round
    code = cli.main(["dlq", "list", "orders", *args])

    # Then the command says which broker the option is for
    assert code == 2
    assert error in capsys.readouterr().err


def test_replay_without_a_selection_exits_2_before_connecting_unless_all_is_given(
    no_broker: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # When a user replays without --id, --reason-match, --limit or --all
    code = cli.main(["dlq", "replay", "orders", "--url", "amqp://127.0.0.1:1/"])

    # Then it refuses, says how to confirm, and connects to nothing
    assert code == 2
    err = capsys.readouterr().err
    assert "puts every dead letter of 'orders' back in its queue: add --all" in err
    assert no_broker == []

    # while --all (or --yes), a selection, or a dry run go ahead and connect
    for extra in (["--all"], ["--yes"], ["--limit", "3"], ["--id", "a"], ["--dry-run"]):
        with pytest.raises(AssertionError, match="connected"):
            cli.main(["dlq", "replay", "orders", "--url", "amqp://127.0.0.1:1/", *extra])
    assert len(no_broker) == 5


def test_the_replay_summary_is_one_line_naming_what_failed() -> None:
    result = ReplayResult(replayed=["a", "b"], failed=["c"], skipped=4, dry_run=False)
    assert dlq_cli.summary(result) == "replayed 2, failed 1 (still in the DLQ: c), left alone 4"

    many = ReplayResult(replayed=[], failed=[str(i) for i in range(12)], skipped=0, dry_run=True)
    line = dlq_cli.summary(many)
    assert line.startswith("would replay 0, failed 12 (still in the DLQ: 0, 1, 2,")
    assert "9 and 2 more), left alone 0" in line


def test_the_progress_line_redraws_in_place_and_is_cleared() -> None:
    out = io.StringIO()
    progress = dlq_cli._Progress(out)
    progress(1, 4)
    progress(2, 4)  # within the redraw interval: not drawn
    progress(4, 4)  # the last one always is
    progress.clear()

    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\rreplaying [") == 2
    assert text.endswith("4/4\r\033[K")


def test_the_replay_summary_counts_what_a_large_result_does_not_name() -> None:
    # Given a result that kept only some ids of many replayed and failed
    result = ReplayResult(
        replayed=["a"],
        failed=["c", "d"],
        skipped=0,
        dry_run=False,
        total_replayed=5000,
        total_failed=1500,
    )

    # Then the summary counts them all and names the failures it has
    assert (result.replayed_count, result.failed_count) == (5000, 1500)
    assert dlq_cli.summary(result) == (
        "replayed 5000, failed 1500 (still in the DLQ: c, d and 1498 more), left alone 0"
    )
