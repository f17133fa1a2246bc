"""A pool that records which process handled which message, with metrics:
`foxwork run tests.apps.recorder:pool --queue Q ...`.

Environment:
    FOXWORK_TEST_PROCESSED_FILE: a line "PROCESS_INDEX PID MESSAGE_ID" is appended for
        every message processed.
    FOXWORK_TEST_CRASH_MARKER: the first process that receives the message with id
        "crash" creates this file and dies at once with `os._exit(3)` (no cleanup, no ack),
        like a worker process killed by a bug in native code; once the file exists, "crash"
        is processed like any other message.
"""

from __future__ import annotations

import os
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.middleware import AckNackMiddleware, MetricsMiddleware

from .files import append_line

CRASH_ID = "crash"


class RecordingWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        if message.id == CRASH_ID:
            marker = os.environ.get("FOXWORK_TEST_CRASH_MARKER")
            if marker:
                try:
                    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass  # crashed once already: process it this time
                else:
                    os._exit(3)
        index = os.environ.get("FOXWORK_PROCESS_INDEX", "0")
        append_line(
            os.environ["FOXWORK_TEST_PROCESSED_FILE"], f"{index} {os.getpid()} {message.id}"
        )


def make_pool() -> WorkerPool:
    # MetricsMiddleware reports to the global meter provider, which `foxwork run
    # --http-port` installs before it imports this module.
    return WorkerPool(
        workers=[RecordingWorker("recorder")],
        middleware=[AckNackMiddleware(), MetricsMiddleware()],
        name="recorder",
    )


pool = make_pool()
