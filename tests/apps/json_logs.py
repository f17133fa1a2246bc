"""A pool with the standard chain (no `middleware=`) whose worker logs a line and fails
once with a transient error: `foxwork run tests.apps.json_logs:pool --log-format json`."""

from __future__ import annotations

import logging
from typing import Any

from foxwork import Message, Worker, WorkerPool

logger = logging.getLogger("tests.apps.json_logs")


class FlakyWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        logger.info("processing %s", message.id)
        if message.attempt == 1:
            raise ConnectionError("connection reset by peer")


pool = WorkerPool(workers=[FlakyWorker("flaky")], name="json-logs")
