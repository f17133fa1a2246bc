"""`foxwork.Settings`: one model for code, `FOXWORK_*` variables and `foxwork run` flags,
with one precedence (flag > environment > code > default), secrets never shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from foxwork import Settings, cli
from foxwork.backends.rabbitmq.config import QueueType
from foxwork.cli.run import add_run_command
from foxwork.errors import ConfigurationError
from foxwork.settings import env_var, flag, resolve_settings

SECRET = "s3cr3t-pa55word"
URL = f"amqp://app:{SECRET}@127.0.0.1:5672/"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FOXWORK_"):
            monkeypatch.delenv(name)


def test_a_flag_beats_the_environment_which_beats_the_code(monkeypatch: pytest.MonkeyPatch):
    # Given a heartbeat, a prefetch and a concurrency in code, two of them also in the
    # environment, and one of those also as a flag
    code = Settings(heartbeat=5, prefetch=6, concurrency=7)
    monkeypatch.setenv("FOXWORK_PREFETCH", "60")
    monkeypatch.setenv("FOXWORK_CONCURRENCY", "70")
    # When they are resolved
    effective = resolve_settings(code, flags={"concurrency": 700, "exchange": None})
    # Then each comes from the strongest place that gives it
    assert (effective.heartbeat, effective.prefetch, effective.concurrency) == (5, 60, 700)
    # and what nobody gave keeps its default
    assert effective.exchange is None and effective.queue_type is QueueType.CLASSIC


def test_a_default_in_code_does_not_hide_the_environment(monkeypatch: pytest.MonkeyPatch):
    code = Settings()  # built before the variable is set: its heartbeat is the default
    monkeypatch.setenv("FOXWORK_HEARTBEAT", "42")
    assert resolve_settings(code).heartbeat == 42


def test_lists_come_from_the_environment_separated_by_commas_or_spaces(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("FOXWORK_URL", f"{URL}, amqp://b:pw@node2/")
    monkeypatch.setenv("FOXWORK_EXCHANGE", "events")
    monkeypatch.setenv("FOXWORK_BINDING_KEYS", "order.* invoice.*")
    effective = resolve_settings()
    assert effective.urls == [URL, "amqp://b:pw@node2/"]
    assert effective.binding_keys == ["order.*", "invoice.*"]


@pytest.mark.parametrize(
    ("variables", "error"),
    [
        ({"FOXWORK_HEARTBEAT": "soon"}, "heartbeat='soon'"),
        ({"FOXWORK_QUEUE_TYPE": "lazy"}, "queue_type='lazy'"),
        ({"FOXWORK_BINDING_KEYS": "a.*"}, "binding_keys need an exchange"),
        ({"FOXWORK_MEMORY": "true", "FOXWORK_URL": URL}, "choose one"),
        ({"FOXWORK_URL": f"{URL}?x=[", "FOXWORK_HTTP_PORT": "70000"}, "http_port='70000'"),
    ],
)
def test_an_invalid_variable_is_named_and_the_url_never_shown(
    variables: dict[str, str], error: str, monkeypatch: pytest.MonkeyPatch
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        resolve_settings()
    assert error in str(raised.value)
    assert SECRET not in str(raised.value)


def test_urls_are_secrets():
    settings = Settings(url=URL)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert settings.redacted()["url"] == ["amqp://app:***@127.0.0.1:5672/"]


def test_every_setting_has_a_flag_of_foxwork_run_and_a_variable():
    # Given the parser of foxwork run
    import argparse

    parser = argparse.ArgumentParser()
    add_run_command(parser.add_subparsers())
    [run] = [a for a in parser._subparsers._group_actions[0].choices.values()]  # type: ignore[union-attr]
    by_flag = {option: action for action in run._actions for option in action.option_strings}
    # Then every setting is a flag whose value lands on the setting's name
    for name in Settings.model_fields:
        assert by_flag[flag(name)].dest == name, name
        assert env_var(name) == f"FOXWORK_{name.upper()}"


def test_print_config_shows_the_effective_settings_and_their_sources(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # Given a URL in the environment, a heartbeat as a flag and an App with code settings
    monkeypatch.setenv("FOXWORK_URL", URL)
    # When foxwork run --print-config runs
    code = cli.main(["run", "tests.apps.billing:app", "--print-config", "--heartbeat", "30"])
    # Then it exits 0 without connecting, and prints the settings, redacted, with sources
    assert code == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    report = json.loads(out)
    assert report["settings"]["url"] == ["amqp://app:***@127.0.0.1:5672/"]
    assert report["settings"]["heartbeat"] == 30
    assert report["sources"]["url"] == "environment"
    assert report["sources"]["heartbeat"] == "flag"
    assert report["sources"]["prefetch"] == "default"
    assert [p["name"] for p in report["pools"]] == ["invoices", "events", "legacy"]
    assert report["pools"][0]["queue_settings"] == {"queue_type": "quorum"}


@pytest.mark.parametrize(
    ("flags", "environment", "expected", "source"),
    [
        ([], {}, False, "default"),
        (["--redis-cluster"], {}, True, "flag"),
        ([], {"FOXWORK_REDIS_CLUSTER": "true"}, True, "environment"),
        (["--redis-cluster"], {"FOXWORK_REDIS_CLUSTER": "false"}, True, "flag"),
    ],
)
def test_redis_cluster_comes_from_its_flag_or_its_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    environment: dict[str, str],
    expected: bool,
    source: str,
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    args = ["run", "tests.cli_app:pool", "--print-config", "--url", "redis://127.0.0.1:7000/"]
    assert cli.main([*args, *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["redis_cluster"] is expected
    assert report["sources"]["redis_cluster"] == source


def test_worker_processes_get_the_settings_of_the_flags_in_their_environment(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given a supervisor that records what its children get
    seen: list[tuple[list[str], dict[str, str]]] = []

    async def supervise(child: list[str], processes: int, *, env: dict[str, str]) -> int:
        seen.append((child, env))
        return 0

    monkeypatch.setattr("foxwork.cli.supervisor.supervise", supervise)
    # When foxwork run starts two processes with settings as flags
    args = ["run", "tests.cli_app:pool", "--processes", "2", "--url", URL, "--prefetch", "9"]
    assert cli.main([*args, "--binding-key", "a.*", "--exchange", "ev"]) == 0
    # Then the children get them as variables, never on their command line
    [(child, env)] = seen
    assert SECRET not in " ".join(child)
    assert env == {
        "FOXWORK_URL": URL,
        "FOXWORK_PREFETCH": "9",
        "FOXWORK_BINDING_KEYS": "a.*",
        "FOXWORK_EXCHANGE": "ev",
    }


def test_the_log_level_comes_from_the_environment_unless_given_as_a_flag(
    monkeypatch: pytest.MonkeyPatch,
):
    levels: list[Any] = []

    async def serve(pool: Any, backend: Any, **options: Any) -> int:
        import logging

        levels.append(logging.getLogger().level)
        return 0

    monkeypatch.setattr("foxwork.cli.run.serve", serve)
    monkeypatch.setenv("FOXWORK_LOG_LEVEL", "warning")
    assert cli.main(["run", "tests.cli_app:pool", "--memory"]) == 0
    assert cli.main(["run", "tests.cli_app:pool", "--memory", "--log-level", "DEBUG"]) == 0
    assert levels == [30, 10]


def test_worker_processes_log_in_the_format_of_their_parent(monkeypatch: pytest.MonkeyPatch):
    # Given a supervisor that records the children's command line
    seen: list[list[str]] = []

    async def supervise(child: list[str], processes: int, *, env: dict[str, str]) -> int:
        seen.append(child)
        return 0

    monkeypatch.setattr("foxwork.cli.supervisor.supervise", supervise)
    # When foxwork run starts two processes logging JSON
    args = ["run", "tests.cli_app:pool", "--processes", "2", "--url", URL, "--log-format", "json"]
    assert cli.main(args) == 0
    # Then each child is told so on its command line, not only through the environment
    [child] = seen
    assert child[child.index("--log-format") + 1] == "json"
