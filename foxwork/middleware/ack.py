"""`AckNackMiddleware`: the outermost layer, which guarantees every delivery is settled."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import Drop
from ..message import Message
from ..settlement import AckPolicy, check_policy, settle_failure
from .base import CallNext

# `AckPolicy` and `settle_failure` are defined in the core (`foxwork.settlement`), because the
# pool settles by the same rule; they are re-exported here for code importing them from here.
__all__ = ["AckNackMiddleware", "AckPolicy", "settle_failure"]

logger = logging.getLogger("foxwork.ack")


class AckNackMiddleware:
    """Ack on success; on failure settle by `on_failure`, and re-raise so the pool counts it.

    Errors that say what they want are honoured whatever the policy: `Drop` acks (and is not
    re-raised: it is not a failure), `DeadLetter` dead-letters, `RetryLater` requeues when no
    `RetryMiddleware` settled the message first. `asyncio.CancelledError` passes through
    untouched: shutdown and timeouts rely on it, and the pool nacks such messages back.

    Args:
        on_failure: the `AckPolicy` for other failures.

    Example:
        pool = WorkerPool(workers=[w], middleware=[AckNackMiddleware(), RetryMiddleware()])
    """

    def __init__(self, *, on_failure: AckPolicy = AckPolicy.DEAD_LETTER) -> None:
        check_policy(on_failure, owner="AckNackMiddleware", setting="on_failure")
        self.on_failure = on_failure

    def __repr__(self) -> str:
        return f"AckNackMiddleware(on_failure=AckPolicy.{self.on_failure.name})"

    async def __call__(self, message: Message[Any], call_next: CallNext) -> None:
        try:
            await call_next(message)
        except Drop as exc:
            if not message.settled:
                logger.debug("message %s dropped: %s", message.id, exc.reason)
                await message.ack()
            return
        except Exception as exc:
            if not message.settled:
                await settle_failure(message, exc, self.on_failure)
            raise
        if not message.settled:
            await message.ack()
