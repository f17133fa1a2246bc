"""While a `ResilientBackend` looks after a connection, the AMQP client's own warnings and
errors about it are logged at INFO (tracebacks at DEBUG).

A dropped connection makes aiormq and aio-pika log several lines of their own (the remote
close, the reader that exited, frames dropped, channels closed), most with a traceback. The
backend already logs one WARNING per disconnect and `ResilientBackend` one per failed
reconnect attempt: the client's lines say the same again, so they are kept, one level down,
for whoever looks at INFO. Counted per backend: the folding ends when the last one closes.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["fold_client_noise", "unfold_client_noise"]

#: The client loggers folded, with the highest level folded for each (a consumer callback
#: that failed, logged by `aiormq.channel` at ERROR, is no connection noise: it stays).
CLIENT_LOGGERS = {
    "aiormq.connection": logging.ERROR,
    "aiormq.connection.marshall": logging.ERROR,
    "aiormq.channel": logging.WARNING,
    "aio_pika.connection": logging.ERROR,
    "aio_pika.channel": logging.ERROR,
    "aio_pika.robust_connection": logging.ERROR,
    "aio_pika.robust_channel": logging.ERROR,
    "aio_pika.message": logging.ERROR,
}


class _Fold(logging.Filter):
    """Logs a record of `logging.WARNING` up to `highest` at INFO instead, without its
    traceback unless the logger is enabled for DEBUG."""

    def __init__(self, logger: logging.Logger, highest: int) -> None:
        super().__init__()
        self.logger = logger
        self.highest = highest

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno <= self.highest:
            return True
        record.levelno = logging.INFO
        record.levelname = logging.getLevelName(logging.INFO)
        if not self.logger.isEnabledFor(logging.DEBUG):
            record.exc_info = None
            record.exc_text = None
        # The record passed the logger's level as a WARNING; as an INFO it must pass again.
        return self.logger.isEnabledFor(logging.INFO)


_lock = threading.Lock()
_users = 0
_filters: list[tuple[logging.Logger, _Fold]] = []


def fold_client_noise() -> None:
    """Start folding (one more backend looks after a connection)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        for name, highest in CLIENT_LOGGERS.items():
            logger = logging.getLogger(name)
            fold = _Fold(logger, highest)
            logger.addFilter(fold)
            _filters.append((logger, fold))


def unfold_client_noise() -> None:
    """Stop folding once no backend needs it any more."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users:
            return
        for logger, fold in _filters:
            logger.removeFilter(fold)
        _filters.clear()
