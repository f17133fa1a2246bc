"""Logs people can use: context fields, JSON lines, one line per failure, the command
line's handler stepping aside for the application's, and the AMQP client's noise folded."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from foxwork import DeadLetter, Message, MessageProperties, RetryLater, Worker
from foxwork.backends import MemoryBackend
from foxwork.backends._client_noise import fold_client_noise, unfold_client_noise
from foxwork.logs import ContextFilter, JsonFormatter, command_line_logging, compact_traceback
from foxwork.middleware import AckNackMiddleware, RetryMiddleware

from ..conftest import PoolFactory, run_until_idle

app_logger = logging.getLogger("tests.app")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of the `tests.app` and `foxwork` loggers, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    loggers = [app_logger, logging.getLogger("foxwork")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    yield stream
    for each, level in zip(loggers, levels, strict=True):
        each.removeHandler(handler)
        each.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class LoggingWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        app_logger.info("handling order %s", message.payload["order"])


class BlockingLoggingWorker(Worker[Any]):
    def process(self, message: Message[Any]) -> None:
        app_logger.info("handled in thread %s", threading.current_thread().name)


@pytest.mark.parametrize("worker_class", [LoggingWorker, BlockingLoggingWorker])
async def test_a_line_logged_while_processing_names_pool_queue_message_attempt_and_worker(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    json_lines: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    worker_class: type[Worker[Any]],
) -> None:
    # Given a worker process of `foxwork run --processes` (index 3) that logs from process()
    monkeypatch.setenv("FOXWORK_PROCESS_INDEX", "3")
    app_logger.handlers[-1].filters[:] = [ContextFilter()]  # reads the index when built
    worker = worker_class("orders-1")
    pool = make_pool(worker, name="orders")
    await memory_backend.add_message(queue_name, {"order": 7}, MessageProperties(message_id="m-7"))

    # When
    await run_until_idle(pool, memory_backend, queue_name)

    # Then the worker's line is one JSON object carrying the context
    lines = [line for line in parsed(json_lines) if line["logger"] == "tests.app"]
    assert len(lines) == 1
    line = lines[0]
    assert line["level"] == "INFO"
    assert line["pool"] == "orders" and line["queue"] == queue_name
    assert line["message_id"] == "m-7" and line["attempt"] == 1
    assert line["worker"] == "orders-1" and line["process_index"] == 3
    assert line["timestamp"].endswith("+00:00")


def test_a_json_line_outside_a_message_has_no_message_fields_and_hides_passwords() -> None:
    # Given the JSON formatter and the context filter on a handler
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # When a line with a URL and a traceback is logged outside of any message
        try:
            raise ConnectionError("cannot reach amqp://app:s3cret@rabbit:5672/")
        except ConnectionError:
            logger.exception("connect to amqp://app:s3cret@rabbit:5672/ failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    # Then it is one parseable line, without the password and without message fields
    [line] = parsed(stream)
    assert "s3cret" not in stream.getvalue()
    assert line["message"] == "connect to amqp://app:***@rabbit:5672/ failed"
    assert "ConnectionError: cannot reach amqp://app:***@rabbit:5672/" in line["traceback"]
    assert line["level"] == "ERROR" and line["logger"] == "tests.json"
    assert not {"pool", "queue", "message_id", "attempt", "worker"} & set(line)


class Failing(Worker[Any]):
    def __init__(self, error: Exception) -> None:
        super().__init__("failing")
        self.error = error

    async def process(self, message: Message[Any]) -> None:
        raise self.error


def pool_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "foxwork.pool" and "message" in r.msg]


async def test_a_failure_is_one_warning_line_with_a_compact_traceback(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker that fails, retried by the chain
    pool = make_pool(
        Failing(RuntimeError("database is down")),
        middleware=[
            AckNackMiddleware(),
            RetryMiddleware(max_attempts=2, initial_backoff=0.01, jitter=0),
        ],
    )
    await memory_backend.add_message(queue_name, {"order": 1}, MessageProperties(message_id="m-1"))

    # When
    with caplog.at_level(logging.INFO):
        await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then each attempt is one WARNING line saying where it failed and how it ended,
    # without a multi-line traceback
    first, last = pool_records(caplog)
    assert first.levelno == last.levelno == logging.WARNING
    assert first.exc_info is None and last.exc_info is None
    text = first.getMessage()
    assert text.startswith("message m-1 failed on attempt 1 in worker failing: RuntimeError:")
    assert "database is down (at test_logs.py:" in text and " in process" in text
    assert text.endswith("; retrying in 0.01 s")
    assert last.getMessage().startswith(
        f"message m-1 dead-lettered to {queue_name}-dlq: RuntimeError: database is down"
    )
    # And the retry layer said nothing more at INFO
    assert not [r for r in caplog.records if r.name == "foxwork.retry"]


async def test_at_debug_a_failure_carries_its_full_traceback(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = make_pool(Failing(DeadLetter("unknown SKU")))
    await memory_backend.add_message(queue_name, {"order": 1}, MessageProperties(message_id="m-2"))
    with caplog.at_level(logging.DEBUG, logger="foxwork.pool"):
        await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)
    [record] = pool_records(caplog)
    assert record.getMessage().startswith(
        f"message m-2 dead-lettered to {queue_name}-dlq: DeadLetter: unknown SKU"
    )
    assert record.exc_info is not None


async def test_retry_later_is_logged_at_info_not_as_a_failure(
    make_pool: PoolFactory,
    memory_backend: MemoryBackend,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker asking for a later retry once
    class Busy(Worker[Any]):
        calls = 0

        async def process(self, message: Message[Any]) -> None:
            Busy.calls += 1
            if Busy.calls == 1:
                raise RetryLater(delay=0.02, reason="inventory busy")

    pool = make_pool(Busy("busy"))
    await memory_backend.add_message(queue_name, {"order": 1}, MessageProperties(message_id="m-3"))

    # When
    with caplog.at_level(logging.INFO):
        await run_until_idle(pool, memory_backend, queue_name, expect_failures=True)

    # Then one INFO line, no WARNING
    [record] = pool_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "message m-3 retries later on attempt 1 in worker busy (inventory busy); retrying in 0.02 s"
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_compact_traceback_names_the_innermost_frames_of_the_application_first() -> None:
    def inner() -> None:
        raise ValueError("bad")

    def outer() -> None:
        inner()

    try:
        outer()
    except ValueError as exc:
        where = compact_traceback(exc)
    assert where.startswith("test_logs.py:")
    assert [part.split(" in ")[1] for part in where.split(" < ")] == [
        "inner",
        "outer",
        "test_a_compact_traceback_names_the_innermost_frames_of_the_application_first",
    ]
    assert compact_traceback(ValueError("never raised")) == ""


# -- the command line's handler ---------------------------------------------------------------


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without the test runner's handlers, as in `foxwork run` (within the
    test: the runner adds its handlers for the test's call)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers.clear()
    try:
        yield root
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_command_line_handler_writes_json_lines_when_nothing_else_is_configured() -> None:
    stream = io.StringIO()
    with bare_root() as root:
        with command_line_logging("INFO", "json", stream):
            logging.getLogger("foxwork.cli").info("pool consuming %s", "orders")
            logging.getLogger("foxwork.cli").debug("not at INFO")
        assert root.handlers == []
    assert [line["message"] for line in parsed(stream)] == ["pool consuming orders"]


def test_an_application_that_configures_logging_gets_every_record_and_no_duplicate() -> None:
    # Given `foxwork run` logging, and an application module that calls basicConfig
    ours, theirs = io.StringIO(), io.StringIO()
    with bare_root(), command_line_logging("INFO", "text", ours):
        logging.basicConfig(stream=theirs, format="APP %(name)s %(message)s")
        # When foxwork and the application log
        logging.getLogger("foxwork.pool").warning("from foxwork")
        app_logger.warning("from the app")

    # Then the application's configuration took effect and wrote both; ours wrote nothing
    assert theirs.getvalue().splitlines() == [
        "APP foxwork.pool from foxwork",
        "APP tests.app from the app",
    ]
    assert ours.getvalue() == ""


def test_a_library_with_a_null_handler_is_still_shown() -> None:
    # Given a library that adds a NullHandler to its logger (as the logging HOWTO advises)
    library = logging.getLogger("tests.library")
    null = logging.NullHandler()
    library.addHandler(null)
    stream = io.StringIO()
    try:
        with bare_root(), command_line_logging("INFO", "text", stream):
            logging.getLogger("foxwork.cli").info("started")
            # When it logs
            library.warning("disk almost full")
    finally:
        library.removeHandler(null)
    # Then its line is written too
    assert "tests.library: disk almost full" in stream.getvalue()


# -- the AMQP client's noise ------------------------------------------------------------------


def test_the_clients_disconnect_noise_is_folded_to_info_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = logging.getLogger("aiormq.connection")
    fold_client_noise()
    try:
        with caplog.at_level(logging.INFO, logger="aiormq.connection"):
            try:
                raise ConnectionResetError("reset by peer")
            except ConnectionResetError as exc:
                client.warning("Cancelling cause reader exited abnormally", exc_info=exc)
            client.error('Unexpected connection close from remote "x"')
    finally:
        unfold_client_noise()
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("INFO", None), ("INFO", None)]
    # And once the last backend closed, the client's lines are as they were
    with caplog.at_level(logging.INFO, logger="aiormq.connection"):
        client.warning("after")
    assert caplog.records[-1].levelname == "WARNING"


def test_folded_noise_is_dropped_when_the_level_is_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fold_client_noise()
    try:
        with caplog.at_level(logging.WARNING, logger="aiormq.connection"):
            logging.getLogger("aiormq.connection").error("Unexpected connection close")
    finally:
        unfold_client_noise()
    assert caplog.records == []
