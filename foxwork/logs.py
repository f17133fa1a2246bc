"""Log records people can use: which pool, queue, message, attempt and worker a line is
about, a compact traceback for a failure, and JSON lines for log shippers.

The pool marks the message it processes in a context variable (`processing()`), set in
the message's own task, so it holds for every layer of the chain and for the thread a
blocking `def process` runs in. `ContextFilter`, added to a handler, copies it onto every
record as the attributes `pool`, `queue`, `message_id`, `attempt` and `worker` (absent
outside of a message), and `process_index` (the `--processes` child, from
`FOXWORK_PROCESS_INDEX`). `JsonFormatter` writes each record as one JSON object with those
fields; like `RedactingFormatter`, it never writes a URL's password.

`foxwork run --log-format json` (or `FOXWORK_LOG_FORMAT=json`) uses both; code running a
pool some other way can add them to its own handler:

    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._redact import RedactingFormatter, redact

if TYPE_CHECKING:
    from .message import Message

__all__ = [
    "ENV_LOG_FORMAT",
    "ENV_PROCESS_INDEX",
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "ContextFilter",
    "JsonFormatter",
    "command_line_logging",
    "compact_traceback",
    "processing",
]

#: Environment variable `foxwork run --processes` sets to each worker process' index.
ENV_PROCESS_INDEX = "FOXWORK_PROCESS_INDEX"
#: What `--log-format` accepts.
LOG_FORMATS = ("text", "json")
#: Environment variable read for the log format when `--log-format` is not given.
ENV_LOG_FORMAT = "FOXWORK_LOG_FORMAT"
#: A text log line: time, level, logger, message (URLs in it redacted).
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Frames a compact traceback shows at most, innermost first.
COMPACT_FRAMES = 3

# The pool name and the message processed in this task (or in the thread it started).
_current: contextvars.ContextVar[tuple[str, Message[Any]] | None] = contextvars.ContextVar(
    "foxwork_log_context", default=None
)

#: The record attributes `ContextFilter` sets, in the order `JsonFormatter` writes them.
CONTEXT_FIELDS = ("pool", "queue", "message_id", "attempt", "worker", "process_index")


def processing(pool: str, message: Message[Any]) -> None:
    """Mark `message`, processed by the pool named `pool`, as the current one of this task.

    Call it at the start of the task that processes the message: the value lives as long
    as the task (and is copied into the threads it starts), so it needs no reset."""
    _current.set((pool, message))


def _process_index() -> int | None:
    raw = os.environ.get(ENV_PROCESS_INDEX, "")
    return int(raw) if raw.isdecimal() else None


class ContextFilter(logging.Filter):
    """Adds `pool`, `queue`, `message_id`, `attempt` and `worker` to records logged while
    a pool processes a message, and `process_index` under `foxwork run --processes`.

    Values a record already has (from `extra=`) are kept; outside of a message the message
    fields are None. Never drops a record. Add it to a handler, not a logger: a logger's
    filters do not see records propagated from child loggers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.process_index = _process_index()

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        current = _current.get()
        if current is None:
            for name in CONTEXT_FIELDS[:-1]:
                fields.setdefault(name, None)
        else:
            pool, message = current
            fields.setdefault("pool", pool)
            fields.setdefault("queue", message.queue)
            fields.setdefault("message_id", message.id)
            fields.setdefault("attempt", message.attempt)
            fields.setdefault("worker", message.worker_id)
        fields.setdefault("process_index", self.process_index)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `timestamp` (ISO 8601, UTC), `level`,
    `logger`, `message`, the `ContextFilter` fields that have a value, `trace_id` and
    `span_id` when `MessageLogFilter` set them, and `traceback` for a record with an
    exception. Every URL's password is masked (message and traceback alike). Standard
    library only."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = record.__dict__
        for name in (*CONTEXT_FIELDS, "trace_id", "span_id"):
            value = fields.get(name)
            if value is not None and value != "-":
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def compact_traceback(exc: BaseException, *, frames: int = COMPACT_FRAMES) -> str:
    """Where `exc` was raised, in one line: up to `frames` frames, innermost first, as
    `file.py:LINE in function`, joined by ` < `; "" without a traceback.

    Frames of foxwork itself and of asyncio are left out when others remain, so the line
    points at the application's code.
    """
    summary = traceback.extract_tb(exc.__traceback__)
    if not summary:
        return ""
    own = [frame for frame in summary if not _is_machinery(frame.filename)]
    chosen = (own or list(summary))[-frames:]
    return " < ".join(
        f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in reversed(chosen)
    )


_MACHINERY = (
    str(Path(__file__).parent) + os.sep,
    str(Path(__file__).resolve().parent) + os.sep,
    os.sep + "asyncio" + os.sep,
    os.sep + "concurrent" + os.sep,
)


def _is_machinery(filename: str) -> bool:
    return any(part in filename for part in _MACHINERY) or filename.endswith(
        os.sep + "threading.py"
    )


# -- the command line's handler ---------------------------------------------------------------


class _FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the records no handler of the application's took.

    It starts as the logging module's handler of last resort, so the root logger stays
    empty while the application's module is imported: a `logging.basicConfig()` or
    `dictConfig()` there takes effect as written. At the first record nothing else
    handled, it joins the root logger (libraries that add a `NullHandler` to their loggers
    are then shown too), and from then on leaves out records a handler of the
    application's already wrote.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        elif _handled_elsewhere(record, self):
            return False
        return bool(super().handle(record))


def _handled_elsewhere(record: logging.LogRecord, ours: logging.Handler) -> bool:
    # Another handler on the record's way up to the root (not a NullHandler) wrote it.
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        for handler in logger.handlers:
            if handler is not ours and not isinstance(handler, logging.NullHandler):
                return True
        logger = logger.parent if logger.propagate else None
    return False


@contextlib.contextmanager
def command_line_logging(level: str, log_format: str, stream: TextIO) -> Iterator[None]:
    """Log to `stream` at `level`, as `text` or `json` lines with the `ContextFilter`
    fields, URLs redacted; unless the application configures logging itself, in which case
    its configuration gets the records (see `_FallbackHandler`). Undone on exit."""
    handler = _FallbackHandler(stream)
    handler.addFilter(ContextFilter())
    formatter = JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    previous = (root.level, logging.lastResort)
    root.setLevel(level)
    logging.lastResort = handler
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous[0])
        logging.lastResort = previous[1]
