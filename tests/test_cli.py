"""The `foxwork` command line: `run` (signals, exit codes, redaction) and `demo`."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foxwork import Message, MessageProperties, SettleState, Worker, WorkerPool, cli
from foxwork.backends import (
    Backend,
    MemoryBackend,
    RabbitMQBackend,
    ReconnectStrategy,
    ResilientBackend,
)
from foxwork.backends.redis import RedisStreamsBackend
from foxwork.cli import demo as _demo
from foxwork.cli import supervisor
from foxwork.codec import JSON
from foxwork.errors import ConnectionLost
from foxwork.middleware import AckNackMiddleware

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a subprocess gets to print an expected line or to exit.
PROCESS_TIMEOUT = 20.0
SECRET = "s3cr3t-pa55word"


# -- helpers -----------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != cli.ENV_URL}
    env.update(extra)
    return env


def _foxwork_command() -> list[str]:
    # The installed console script when there is one: it is what users run.
    script = Path(sys.executable).with_name("foxwork")
    return [str(script)] if script.exists() else [sys.executable, "-m", "foxwork"]


class _Process:
    """A `foxwork` subprocess whose merged output can be waited on line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "foxwork", *args],
            cwd=ROOT,
            env=env or _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._popen.stdout is not None
        for line in self._popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, text: str, timeout: float = PROCESS_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {timeout} s:\n{''.join(self.output)}")
            if line is None:
                pytest.fail(f"foxwork exited before printing {text!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return line

    def send_signal(self, signum: int) -> None:
        self._popen.send_signal(signum)

    def finish(self, timeout: float = PROCESS_TIMEOUT) -> tuple[int, str]:
        code = self._popen.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while (line := self._lines.get_nowait()) is not None:
            self.output.append(line)
        assert self._popen.stdout is not None
        self._popen.stdout.close()
        return code, "".join(self.output)

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        if self._popen.stdout is not None:
            self._popen.stdout.close()


@pytest.fixture
def foxwork_process() -> Iterator[type[_Process]]:
    """Start `foxwork` subprocesses; any still running at teardown is killed."""
    started: list[_Process] = []

    class Tracked(_Process):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(*args, env=env)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def _summary_number(summary: str, label: str) -> int:
    match = re.search(rf"^\s+{label}\s+(\d+)\s*$", summary, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{summary}"
    return int(match.group(1))


class _LogEvent(logging.Handler):
    """Sets an asyncio event when a log record containing `text` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
def log_event() -> Iterator[Any]:
    """`log_event(text)` returns an event set once a `foxwork` log record contains text."""
    handlers: list[_LogEvent] = []
    foxwork_logger = logging.getLogger("foxwork")
    previous_level = foxwork_logger.level
    foxwork_logger.setLevel(logging.INFO)

    def factory(text: str) -> asyncio.Event:
        handler = _LogEvent(text)
        foxwork_logger.addHandler(handler)
        handlers.append(handler)
        return handler.event

    yield factory
    for handler in handlers:
        foxwork_logger.removeHandler(handler)
    foxwork_logger.setLevel(previous_level)


class _HeldWorker(Worker[Any]):
    """Holds each message until `release` is set; records the messages it got."""

    def __init__(self) -> None:
        super().__init__("held")
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.messages: list[Message[Any]] = []

    async def process(self, message: Message[Any]) -> None:
        self.messages.append(message)
        self.started.set()
        await self.release.wait()


async def _serve_held_message(
    queue_name: str, **kwargs: Any
) -> tuple[_HeldWorker, MemoryBackend, asyncio.Task[int]]:
    worker = _HeldWorker()
    pool = WorkerPool(workers=[worker], middleware=[AckNackMiddleware()], queues=[queue_name])
    backend = MemoryBackend(queues=[queue_name])
    await backend.add_message(queue_name, {"order_id": 1})
    serving = asyncio.create_task(cli.serve(pool, backend, **kwargs))
    # The handlers are installed before the first message can reach the worker.
    await asyncio.wait_for(worker.started.wait(), timeout=5)
    return worker, backend, serving


# -- foxwork demo ------------------------------------------------------------------------


def test_demo_runs_to_the_end_and_its_summary_adds_up():
    # Given a seeded demo of 20 orders, run as a user runs it
    # When it runs to the end
    result = subprocess.run(
        [*_foxwork_command(), "demo", "--messages", "20", "--seed", "1"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits 0 and every order is either completed or dead-lettered
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout
    assert _summary_number(summary, "orders") == 20
    completed = _summary_number(summary, "completed")
    retried = _summary_number(summary, "retried")
    dead = _summary_number(summary, "dead-lettered")
    assert completed + dead == 20
    # And exactly the unknown SKU and the malformed order were dead-lettered, with reasons
    assert dead == 2
    assert re.search(r"order \d+: DeadLetter: unknown SKU 'ZZ-404'", summary)
    assert re.search(r"order \d+: PoisonMessage: payload does not match Order", summary)
    # And the workers together handled every delivery: first attempts plus retried copies
    handled = [int(m) for m in re.findall(r"^\s+order-worker-\d+\s+(\d+)", summary, re.M)]
    assert len(handled) == _demo.DEFAULT_WORKERS
    assert sum(handled) == 20 + retried
    assert retried > 0
    assert "--seed 1" in summary


async def test_demo_with_the_same_seed_replays_the_same_run():
    # Given two demo runs with the same seed
    runs = [
        await _demo.run_demo(messages=8, workers=3, seed=5, out=io.StringIO()) for _ in range(2)
    ]

    # When their outcomes are compared
    def outcome(result: _demo.DemoResult) -> tuple[Any, ...]:
        return (
            result.completed,
            result.retried,
            sorted((d.id, d.exception_type, d.reason) for d in result.dead_letters),
            [w.handled for w in result.workers],
        )

    # Then they are the same
    assert outcome(runs[0]) == outcome(runs[1])


async def test_demo_shows_plain_progress_lines_when_not_on_a_terminal():
    # Given output that is not a terminal
    out = io.StringIO()
    # When the demo runs
    await _demo.run_demo(messages=4, workers=2, seed=2, out=out)
    # Then progress comes as whole lines, without carriage returns, ending at all done
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines()[-1].startswith("orders 4/4 done")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--queue", "q"], "no broker URL: pass --url amqp://... or set $FOXWORK_URL"),
        (["--url", "amqp://h/", "--queue", "q", "--exchange", "x"], "either --queue Q"),
        (["--url", "amqp://h/"], "say where to publish: --queue Q"),
        (["--url", "amqp://h/", "--queue", "q", "--header", "novalue"], "NAME=VALUE"),
        (["--url", "amqp://h/", "--queue", "q", "--file", "/no/such/file"], "--file /no/such"),
    ],
)
def test_publish_refuses_what_it_cannot_do_before_connecting(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOXWORK_URL", raising=False)

    code = cli.main(["publish", *args])

    assert code == 2
    assert error in capsys.readouterr().err


def test_demo_refuses_too_few_messages(capsys: pytest.CaptureFixture[str]):
    # When the demo is asked for fewer orders than its two failing ones
    code = cli.main(["demo", "--messages", "1"])
    # Then it exits 2 with a one-line reason
    assert code == 2
    assert "messages=1 must be between 2" in capsys.readouterr().err


# -- foxwork run: loading the pool -------------------------------------------------------


@pytest.mark.parametrize("target", ["tests.cli_app:pool", "tests.cli_app:make_pool"])
def test_run_accepts_a_pool_or_a_function_returning_one(target: str):
    assert isinstance(cli.load_pool(target), WorkerPool)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("tests.cli_app", "is not MODULE:ATTR"),
        ("tests.no_such_module:pool", "cannot import module 'tests.no_such_module'"),
        ("tests.cli_app:missing", "module 'tests.cli_app' has no attribute 'missing'"),
        ("tests.cli_app:not_a_pool", "is a int: expected a WorkerPool"),
        ("tests.cli_app:returns_something_else", "returned a str, not a WorkerPool"),
        ("tests.cli_app:async_factory", "is an async function"),
    ],
)
def test_run_with_a_bad_target_prints_a_clear_error_and_exits_2(
    target: str, error: str, capsys: pytest.CaptureFixture[str]
):
    # When foxwork run is pointed at something that is not a pool
    code = cli.main(["run", target])
    # Then it exits 2 with one line that says what is wrong
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("foxwork run: error: ")
    assert error in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["run", "tests.cli_app:pool", "--concurrency", "0"],
        ["run", "tests.cli_app:pool", "--prefetch", "many"],
        ["run", "tests.cli_app:pool", "--shutdown-timeout", "-1"],
        ["run", "tests.cli_app:pool", "--log-level", "loud"],
        ["run", "tests.cli_app:pool", "--loop", "trio"],
        [],
    ],
)
def test_invalid_arguments_exit_2_with_usage(args: list[str]):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2


# -- foxwork run: signals ----------------------------------------------------------------


def test_run_on_the_memory_backend_stops_gracefully_on_sigterm(foxwork_process: Any):
    # Given `foxwork run` serving a pool without a broker URL, with overrides
    process = foxwork_process(
        "run", "tests.cli_app:pool", "--memory", "--queue", "cli-other", "--concurrency", "3"
    )
    ready = process.wait_for_line("stop it with Ctrl-C")
    assert "consuming cli-other (concurrency 3, prefetch 3)" in ready
    # When it gets SIGTERM
    process.send_signal(signal.SIGTERM)
    # Then it shuts down gracefully and exits 0
    code, output = process.finish()
    assert code == 0, output
    assert "received SIGTERM: graceful shutdown" in output
    assert "graceful shutdown complete" in output
    # And it said plainly that it ran in memory
    assert "running on the in-memory backend" in output
    # and that it froze its start-up heap, once the pool had started
    assert output.index("start-up heap frozen") < output.index("stop it with Ctrl-C")


def test_run_leaves_the_heap_alone_when_told(foxwork_process: Any):
    process = foxwork_process("run", "tests.cli_app:pool", "--memory", "--no-gc-freeze")
    process.wait_for_line("stop it with Ctrl-C")
    process.send_signal(signal.SIGTERM)
    code, output = process.finish()
    assert code == 0, output
    assert "heap frozen" not in output


# -- foxwork run: the event loop ---------------------------------------------------------


def test_run_on_uvloop_serves_and_stops_gracefully(foxwork_process: Any):
    pytest.importorskip("uvloop")
    # Given `foxwork run --loop uvloop`
    process = foxwork_process("run", "tests.cli_app:pool", "--memory", "--loop", "uvloop")
    process.wait_for_line("stop it with Ctrl-C")
    # When it gets SIGTERM
    process.send_signal(signal.SIGTERM)
    # Then it said which loop it runs on, and stopped gracefully
    code, output = process.finish()
    assert code == 0, output
    assert "event loop: uvloop" in output
    assert "graceful shutdown complete" in output


@pytest.mark.parametrize(("loop", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_run_on_loop_runs_the_coroutine_on_the_loop_asked_for(loop: str, module: str):
    if loop == "uvloop":
        pytest.importorskip("uvloop")

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert cli.run_on_loop(loop_module(), loop).split(".")[0] == module


def test_asking_for_uvloop_without_it_installed_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # Given no uvloop (an import of it fails)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    # When foxwork run is asked to use it
    code = cli.main(["run", "tests.cli_app:pool", "--loop", "uvloop"])
    # Then it exits 2 with one line that says how to get it, before running anything
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("foxwork run: error: --loop uvloop needs uvloop")
    assert "pip install" in err and err.count("\n") == 1


# -- foxwork run: the backend the URL picks -----------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Backend]:
    """`foxwork run` records the backend it would serve, and returns 0 instead of serving."""
    backends: list[Backend] = []

    async def serve(pool: WorkerPool, backend: Backend, **options: Any) -> int:
        backends.append(backend)
        return 0

    monkeypatch.setattr("foxwork.cli.run.serve", serve)
    monkeypatch.delenv(cli.ENV_URL, raising=False)
    return backends


@pytest.mark.parametrize("source", ["--url", "$FOXWORK_URL"])
@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("amqp://guest:guest@127.0.0.1:1/", RabbitMQBackend),
        ("amqps://guest:guest@127.0.0.1:1/", RabbitMQBackend),
        ("redis://127.0.0.1:1/0", RedisStreamsBackend),
        ("rediss://:secret@127.0.0.1:1/0", RedisStreamsBackend),
    ],
)
def test_run_picks_the_backend_by_the_url_scheme_and_makes_it_resilient(
    url: str,
    kind: type[Backend],
    source: str,
    served: list[Backend],
    monkeypatch: pytest.MonkeyPatch,
):
    # Given a broker URL on the command line or in the environment
    args = ["run", "tests.cli_app:pool", "--queue", "q1", "--queue", "q2"]
    if source == "--url":
        args += ["--url", url]
    else:
        monkeypatch.setenv(cli.ENV_URL, url)
    # When foxwork run starts
    assert cli.main(args) == 0
    # Then it serves the backend of the URL's scheme, for every queue, reconnected forever
    # and failing fast on the first connect
    [backend] = served
    assert isinstance(backend, ResilientBackend)
    assert type(backend.backend) is kind
    assert backend.backend.queues == ("q1", "q2")
    assert backend.fail_fast


def test_run_waits_for_a_redis_server_when_told(served: list[Backend]):
    code = cli.main(
        ["run", "tests.cli_app:pool", "--url", "redis://127.0.0.1:1/0", "--wait-for-broker"]
    )
    assert code == 0
    [backend] = served
    assert isinstance(backend, ResilientBackend)
    assert isinstance(backend.backend, RedisStreamsBackend)
    assert not backend.fail_fast


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (f"http://app:{SECRET}@127.0.0.1:1/", "URL scheme 'http' is not supported"),
        (f"kafka://app:{SECRET}@127.0.0.1:9092", "URL scheme 'kafka' is not supported"),
        ("127.0.0.1:5672", "a URL without a scheme is not supported"),
    ],
)
@pytest.mark.parametrize("processes", ["1", "2"])
def test_run_refuses_an_unknown_url_scheme_in_one_line_naming_the_supported_ones(
    url: str,
    named: str,
    processes: str,
    served: list[Backend],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    async def supervise(child: list[str], processes: int, *, env: dict[str, str]) -> int:
        raise AssertionError("no worker process may start with an unusable URL")

    monkeypatch.setattr("foxwork.cli.supervisor.supervise", supervise)
    # When foxwork run is given a URL of no backend it knows
    code = cli.main(["run", "tests.cli_app:pool", "--url", url, "--processes", processes])
    # Then it exits 2, before serving anything, with one line naming what it supports
    assert code == 2
    assert not served
    err = capsys.readouterr().err
    assert err.startswith("foxwork run: error: invalid broker settings for ")
    assert err.count("\n") == 1
    assert named in err
    for scheme in ("amqp://", "amqps://", "redis://", "rediss://"):
        assert scheme in err
    assert SECRET not in err


def test_processes_pass_the_event_loop_and_the_heap_choice_on_to_each_child(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given a supervisor that records the command line of its children
    seen: list[list[str]] = []

    async def supervise(child: list[str], processes: int, *, env: dict[str, str]) -> int:
        seen.append(child)
        return 0

    monkeypatch.setattr("foxwork.cli.supervisor.supervise", supervise)
    # When foxwork run starts two processes on uvloop, without freezing the heap
    url = "amqp://guest:guest@127.0.0.1:1/"
    code = cli.main(
        [
            "run",
            "tests.cli_app:pool",
            "--processes",
            "2",
            "--url",
            url,
            "--loop",
            "uvloop",
            "--no-gc-freeze",
        ]
    )
    # Then every child runs on uvloop too, and leaves its heap alone
    assert code == 0
    [child] = seen
    assert child[child.index("--loop") + 1] == "uvloop"
    assert "--no-gc-freeze" in child


async def test_a_stop_request_while_worker_processes_start_stops_every_one(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given a supervisor of three worker processes (each a `foxwork run` on the in-memory
    # backend, which runs until it is signalled), whose start-up is interleaved so that the
    # SIGTERM arrives while the second one is being created
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(cli.ENV_URL, raising=False)
    created: list[asyncio.subprocess.Process] = []
    real_start = supervisor._Child.start

    async def start(child: supervisor._Child, stop_signals: list[int]) -> None:
        if child.index == 1 and created:
            os.kill(os.getpid(), signal.SIGTERM)
            # The supervisor forwarded it to the one child it had: that child is gone.
            await created[0].wait()
        await real_start(child, stop_signals)
        if child.process is not None and child.process not in created:
            created.append(child.process)

    monkeypatch.setattr(supervisor._Child, "start", start)
    try:
        # When it runs
        async with asyncio.timeout(PROCESS_TIMEOUT):
            code = await supervisor.supervise(["run", "tests.cli_app:pool", "--memory"], 3)
    finally:
        leftover = [process for process in created if process.returncode is None]
        for process in leftover:
            process.kill()
            await process.wait()
    # Then it returns 0, and no worker process, whenever started, outlives it
    assert code == 0
    assert created and not leftover


async def test_first_signal_lets_in_flight_messages_finish_and_exits_0(
    queue_name: str, log_event: Any
):
    # Given a served pool with one message in flight
    shutting_down = log_event("graceful shutdown")
    worker, backend, serving = await _serve_held_message(queue_name, shutdown_timeout=10)
    # When SIGTERM arrives, and the message finishes only after it
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(shutting_down.wait(), timeout=5)
    worker.release.set()
    # Then serve returns exit code 0 and the message was acked, not sent back
    assert await asyncio.wait_for(serving, timeout=5) == 0
    assert worker.messages[0].state is SettleState.ACKED
    assert backend.messages(queue_name) == []


async def test_second_signal_forces_exit_and_nacks_in_flight_messages_back(
    queue_name: str, log_event: Any
):
    # Given a served pool whose only message never finishes, with a long shutdown timeout
    shutting_down = log_event("graceful shutdown")
    worker, backend, serving = await _serve_held_message(queue_name, shutdown_timeout=60)
    # When SIGINT arrives twice
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(shutting_down.wait(), timeout=5)
    os.kill(os.getpid(), signal.SIGINT)
    # Then serve returns 130 well before the timeout, the message nacked back to its queue
    assert await asyncio.wait_for(serving, timeout=5) == 128 + signal.SIGINT
    assert worker.messages[0].state is SettleState.REQUEUED
    assert [m.redelivered for m in backend.messages(queue_name)] == [True]


async def test_signal_handlers_are_removed_when_serve_returns(queue_name: str, log_event: Any):
    # Given a served pool that was stopped by a signal
    shutting_down = log_event("graceful shutdown")
    worker, _backend, serving = await _serve_held_message(queue_name, shutdown_timeout=1)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(shutting_down.wait(), timeout=5)
    worker.release.set()
    await asyncio.wait_for(serving, timeout=5)
    # Then the event loop no longer handles SIGTERM (the pool is embeddable again)
    loop = asyncio.get_running_loop()
    assert loop.remove_signal_handler(signal.SIGTERM) is False


# -- foxwork run: connecting -------------------------------------------------------------


class _UnreachableBackend(MemoryBackend):
    """A memory backend whose first `failures` connects fail like an unreachable broker."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.attempts = 0

    async def connect(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionLost(f"cannot connect to amqp://app:{SECRET}@127.0.0.1:1/: refused")
        await super().connect()


async def test_a_first_connect_failure_is_one_redacted_error(queue_name: str):
    # Given a broker that cannot be reached
    pool = WorkerPool(workers=[_HeldWorker()], queues=[queue_name])
    backend = _UnreachableBackend(failures=1)
    # When the pool is served without --wait-for-broker
    with pytest.raises(cli.CommandLineError) as error:
        await cli.serve(pool, backend, broker=f"amqp://app:{SECRET}@127.0.0.1:1/")
    # Then it fails at once, naming the broker without its password
    assert backend.attempts == 1
    assert SECRET not in str(error.value)
    assert "--wait-for-broker" in str(error.value)


async def test_waiting_for_the_broker_keeps_trying_until_it_is_up(queue_name: str, log_event: Any):
    # Given a broker that comes up on the third connect attempt, behind a backend that
    # waits for it (what --wait-for-broker builds)
    running = log_event("running on")
    pool = WorkerPool(workers=[_HeldWorker()], queues=[queue_name])
    flaky = _UnreachableBackend(failures=2)
    backend = ResilientBackend(flaky, strategy=ReconnectStrategy.Fixed(0.01), fail_fast=False)
    # When the pool is served
    serving = asyncio.create_task(cli.serve(pool, backend))
    await asyncio.wait_for(running.wait(), timeout=5)
    # Then it kept trying and is now consuming; a signal still stops it gracefully
    assert flaky.attempts == 3
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, timeout=5) == 0


async def test_a_signal_while_waiting_for_the_broker_exits_0_without_consuming(
    queue_name: str, log_event: Any
):
    # Given a backend waiting for a broker that never comes up
    waiting = log_event("reconnect attempt")
    pool = WorkerPool(workers=[_HeldWorker()], queues=[queue_name])
    backend = ResilientBackend(
        _UnreachableBackend(failures=10**6),
        strategy=ReconnectStrategy.Fixed(0.01),
        fail_fast=False,
    )
    serving = asyncio.create_task(cli.serve(pool, backend))
    await asyncio.wait_for(waiting.wait(), timeout=5)
    # When SIGTERM arrives
    os.kill(os.getpid(), signal.SIGTERM)
    # Then the wait ends and serve returns 0
    assert await asyncio.wait_for(serving, timeout=5) == 0


def test_a_password_in_the_url_never_appears_in_the_output(foxwork_process: Any):
    # Given broker URLs with a password, from --url and from the environment, that fail
    url = f"amqp://app:{SECRET}@127.0.0.1:1/"
    runs = [
        foxwork_process("run", "tests.cli_app:pool", "--url", url, "--log-level", "DEBUG"),
        foxwork_process(
            "run", "tests.cli_app:pool", "--log-level", "DEBUG", env=_env(FOXWORK_URL=url)
        ),
    ]
    for process in runs:
        # When foxwork run gives up on the first connect
        code, output = process.finish()
        # Then it exits 2, shows the URL redacted and never the password
        assert code == 2, output
        assert SECRET not in output
        assert "amqp://app:***@127.0.0.1:1/" in output
        assert output.splitlines()[-1].startswith("foxwork run: error: ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # refused by the configuration: the "?" ends the authority for a URL parser
        (f"amqp://app:{SECRET}?x@127.0.0.1:1/", "amqp://app:***@127.0.0.1:1/"),
        (f"amqp://app:{SECRET}#x@127.0.0.1:1/", "amqp://app:***@127.0.0.1:1/"),
        # parsed as host 127.0.0.1, port 1: refused when connecting
        (f"amqp://127.0.0.1:1?{SECRET}@rabbit/", "amqp://127.0.0.1:***@rabbit/"),
    ],
)
def test_a_password_with_an_unencoded_question_mark_or_hash_never_appears_in_the_output(
    foxwork_process: Any, url: str, shown: str
):
    # Given a broker URL whose password holds an unencoded "?" or "#"
    process = foxwork_process("run", "tests.cli_app:pool", "--url", url, "--log-level", "DEBUG")
    # When foxwork run refuses it
    code, output = process.finish()
    # Then it exits 2 with one error line showing the URL redacted, never the password
    assert code == 2, output
    assert SECRET not in output
    assert shown in output
    assert output.splitlines()[-1].startswith("foxwork run: error: ")


@pytest.mark.rabbitmq
async def test_run_consumes_from_rabbitmq_and_stops_gracefully_on_sigterm(
    foxwork_process: Any, rabbitmq_url: str, queue_name: str
):
    # Given `foxwork run` serving a pool on a real broker
    from foxwork.backends import RabbitMQBackend, RabbitMQConsumerConfig

    process = foxwork_process(
        "run",
        "tests.cli_app:pool",
        "--queue",
        queue_name,
        env=_env(FOXWORK_URL=rabbitmq_url, PYTHONUNBUFFERED="1"),
    )
    ready = await asyncio.to_thread(process.wait_for_line, "stop it with Ctrl-C", 60)
    assert f"consuming {queue_name}" in ready
    assert "in-memory" not in ready
    # When a message is published to its queue
    publisher = RabbitMQBackend(RabbitMQConsumerConfig(url=rabbitmq_url, queue=queue_name))
    async with publisher:
        await publisher.publish(queue_name, b'"hello"', MessageProperties(content_type=JSON))
    # Then the worker processes it
    await asyncio.to_thread(process.wait_for_line, "processed 'hello'")
    # And SIGTERM stops the pool gracefully with exit code 0
    process.send_signal(signal.SIGTERM)
    code, output = await asyncio.to_thread(process.finish)
    assert code == 0, output
    assert "graceful shutdown complete" in output
