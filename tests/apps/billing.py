"""An App of three pools on three queues, for `foxwork run tests.apps.billing:app` with its
settings from the environment (tests/rabbitmq/test_app.py):

- pool "invoices" on `PREFIX-invoices`, a quorum queue;
- pool "events" on `PREFIX-events`, bound to the topic exchange `PREFIX-exchange` by
  `order.*`;
- pool "legacy" on a queue that exists already and is attached passively.

Environment:
    FOXWORK_TEST_QUEUE_PREFIX: the prefix of the queue and exchange names.
    FOXWORK_TEST_PASSIVE_QUEUE: the passive queue (default `PREFIX-legacy`).
    FOXWORK_TEST_PROCESSED_FILE: a line "POOL MESSAGE_ID" is appended for every message
        processed.
    FOXWORK_TEST_DELAY: seconds each message takes (default 0).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from foxwork import App, Message, Worker, WorkerPool
from foxwork.middleware import AckNackMiddleware

from .files import append_line

PREFIX = os.environ.get("FOXWORK_TEST_QUEUE_PREFIX", "billing")
INVOICES = f"{PREFIX}-invoices"
EVENTS = f"{PREFIX}-events"
EXCHANGE = f"{PREFIX}-exchange"
LEGACY = os.environ.get("FOXWORK_TEST_PASSIVE_QUEUE", f"{PREFIX}-legacy")
DELAY = float(os.environ.get("FOXWORK_TEST_DELAY", "0"))


class RecordingWorker(Worker[Any]):
    async def process(self, message: Message[Any]) -> None:
        if DELAY:
            await asyncio.sleep(DELAY)
        append_line(os.environ["FOXWORK_TEST_PROCESSED_FILE"], f"{self.id} {message.id}")


def _pool(name: str) -> WorkerPool:
    return WorkerPool(workers=[RecordingWorker(name)], middleware=[AckNackMiddleware()], name=name)


app = App("billing")
app.add(_pool("invoices"), queues=[INVOICES], queue_type="quorum")
app.add(_pool("events"), queues=[EVENTS], exchange=EXCHANGE, binding_keys=["order.*"])
app.add(_pool("legacy"), queues=[LEGACY], topology="passive")
