"""A pool whose worker takes its time: `foxwork run tests.apps.slow:pool --queue Q ...`.

Environment:
    FOXWORK_TEST_STARTED_FILE: each message id is appended when processing starts.
    FOXWORK_TEST_FINISHED_FILE: each message id is appended when processing finished
        (before the ack).
    FOXWORK_TEST_SLEEP: seconds each message takes (default 2).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from foxwork import Message, Worker, WorkerPool
from foxwork.middleware import AckNackMiddleware

from .files import append_line


class SlowWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        append_line(os.environ["FOXWORK_TEST_STARTED_FILE"], message.id)
        await asyncio.sleep(float(os.environ.get("FOXWORK_TEST_SLEEP", "2")))
        append_line(os.environ["FOXWORK_TEST_FINISHED_FILE"], message.id)


pool = WorkerPool(workers=[SlowWorker("slow")], middleware=[AckNackMiddleware()], name="slow")
