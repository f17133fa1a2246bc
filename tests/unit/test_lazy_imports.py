"""`import foxwork` and `foxwork run` load only what they use: the names `foxwork` and
`foxwork.backends` export are imported on first use, and the command line builds (and
imports) only the parser of the subcommand it runs. Each check runs in a fresh interpreter,
where nothing was imported before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import foxwork
import foxwork.backends
import foxwork.cli
from foxwork import errors


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after it ran `code`."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: list[str]) -> list[str]:
    return [name for name in names if name in modules]


#: Never needed by `foxwork run` on RabbitMQ with the standard chain.
NOT_FOR_RUN = [
    "redis",
    "uvloop",
    "foxwork.backends.redis",
    "foxwork.backends.memory",
    "foxwork.builder",
    "foxwork.deadletter",
    "foxwork.publisher",
    "foxwork.spool",
    "foxwork.cli.demo",
    "foxwork.cli.dlq",
    "foxwork.cli.publish",
    "foxwork.cli.spool",
    "foxwork.cli.topology",
]


def test_import_foxwork_loads_only_the_errors() -> None:
    modules = _modules_after("import foxwork")
    assert {name for name in modules if name.startswith("foxwork")} == {
        "foxwork",
        "foxwork._lazy",
        "foxwork.errors",
    }
    assert _loaded(modules, ["pydantic", "aio_pika", "opentelemetry", "asyncio"]) == []


def test_a_message_needs_neither_pydantic_nor_the_broker_client() -> None:
    modules = _modules_after(
        """
        from foxwork import Message, codec
        codec.decode(b'{"a": 1}', "application/json")
        codec.encode({"a": 1})
        """
    )
    assert _loaded(modules, ["pydantic", "aio_pika", "aiormq", *NOT_FOR_RUN]) == []


def test_foxwork_run_loads_only_the_run_command() -> None:
    # What `foxwork run module:pool --url amqp://...` imports before it connects.
    modules = _modules_after(
        """
        import foxwork.cli
        from foxwork import Message, Worker, WorkerPool
        from foxwork.app import App, make_backend
        from foxwork.settings import Settings
        parser = foxwork.cli.build_parser("run")
        args = parser.parse_args(["run", "module:pool", "--url", "amqp://localhost/"])
        make_backend(Settings(url="amqp://localhost/"), ["q"])
        """
    )
    assert "foxwork.cli.run" in modules
    assert "aio_pika" in modules
    assert _loaded(modules, NOT_FOR_RUN) == []


@pytest.mark.parametrize("package", ["foxwork", "foxwork.backends"])
@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_exported_name_resolves_in_a_fresh_interpreter(package: str, order: str) -> None:
    # First thing after the import, in both orders: no name relies on another one having
    # been imported before it.
    _modules_after(
        f"""
        import importlib
        package = importlib.import_module({package!r})
        for name in {order}(package.__all__):
            assert getattr(package, name).__name__ == name, name
            exec(f"from {package} import {{name}}")
        """
    )


def test_the_lazy_names_are_the_names_exported() -> None:
    defined_here = {name for name in foxwork.__all__ if hasattr(errors, name)}
    assert set(foxwork.__all__) == defined_here | set(foxwork._LAZY) - {"__version__"}
    assert set(foxwork.backends.__all__) == set(foxwork.backends._LAZY)
    for package in (foxwork, foxwork.backends):
        for name in package.__all__:
            value = getattr(package, name)
            assert value.__name__ == name
            assert value.__module__.startswith(package.__name__)
            assert name in dir(package)


def test_star_import_and_version() -> None:
    namespace: dict[str, object] = {}
    exec("from foxwork import *", namespace)
    assert set(foxwork.__all__) <= set(namespace)
    assert isinstance(foxwork.__version__, str)
    assert "__version__" in dir(foxwork)


def test_submodules_stay_reachable_as_attributes() -> None:
    # As when `foxwork/__init__.py` imported them all.
    modules = _modules_after(
        """
        import foxwork
        assert foxwork.middleware.RetryMiddleware
        assert foxwork.backends.rabbitmq.RabbitMQBackend
        assert foxwork.telemetry.names.VERSION
        """
    )
    assert "foxwork.middleware" in modules


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = foxwork.nothing_here  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = foxwork.backends.nothing_here  # type: ignore[attr-defined]
    assert not hasattr(foxwork, "__wrapped__")


def test_commands_lists_every_subcommand_in_help_order() -> None:
    names = [add.__name__ for add in foxwork.cli.COMMANDS]
    assert names == [f"add_{name}_command" for name in foxwork.cli._COMMANDS]
    assert list(foxwork.cli._COMMANDS)[:2] == ["run", "demo"]


@pytest.mark.parametrize("command", list(foxwork.cli._COMMANDS))
def test_a_subcommand_parser_built_alone_is_the_same(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    helps = []
    for parser in (foxwork.cli.build_parser(), foxwork.cli.build_parser(command)):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1]
    assert helps[0].startswith(f"usage: foxwork {command} ")


def test_main_builds_every_parser_for_a_word_that_names_no_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        foxwork.cli.main(["nothing"])
    assert exit_info.value.code == 2
    assert "choose from" in capsys.readouterr().err
    for name in foxwork.cli._COMMANDS:
        with pytest.raises(SystemExit):
            foxwork.cli.main(["--help"])
        assert name in capsys.readouterr().out
