"""`foxwork dlq --redis-cluster` (or `$FOXWORK_REDIS_CLUSTER`): which dead-letter queue the
command opens, and what it refuses before connecting (the command against a real cluster
is in tests/redis/test_cluster.py)."""

from __future__ import annotations

import argparse

import pytest

from foxwork import cli
from foxwork.cli import dlq as dlq_cli
from foxwork.cli.common import CommandLineError

URL = "redis://127.0.0.1:7000/"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.ENV_URL, raising=False)
    monkeypatch.delenv("FOXWORK_REDIS_CLUSTER", raising=False)


def parsed(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    dlq_cli.add_dlq_command(parser.add_subparsers())
    return parser.parse_args(["dlq", "list", "orders", *args])


@pytest.mark.parametrize(
    ("flags", "variable", "cluster"),
    [
        ((), None, False),
        (("--redis-cluster",), None, True),
        ((), "true", True),
        ((), "0", False),
        (("--redis-cluster",), "false", True),
    ],
)
def test_the_redis_dead_letters_are_opened_on_a_cluster_by_flag_or_variable(
    monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], variable: str | None, cluster: bool
) -> None:
    pytest.importorskip("redis")
    from foxwork.backends.redis.dlq import DeadLetterQueue

    if variable is not None:
        monkeypatch.setenv("FOXWORK_REDIS_CLUSTER", variable)
    opened = dlq_cli._open(URL, parsed("--url", URL, *flags))
    assert isinstance(opened, DeadLetterQueue)
    assert opened._config.cluster is cluster
    assert opened.name == "foxwork:{orders}:dlq"


def test_a_variable_that_is_not_a_boolean_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOXWORK_REDIS_CLUSTER", "maybe")
    with pytest.raises(CommandLineError, match=r"FOXWORK_REDIS_CLUSTER='maybe' is not a boolean"):
        dlq_cli._open(URL, parsed("--url", URL))


def test_redis_cluster_on_a_rabbitmq_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["dlq", "list", "orders", "--url", "amqp://127.0.0.1:1/", "--redis-cluster"])
    assert code == 2
    assert (
        "--redis-cluster (or $FOXWORK_REDIS_CLUSTER) is for Redis URLs" in capsys.readouterr().err
    )
