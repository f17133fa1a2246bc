"""`AckNackMiddleware`: the outermost layer, which guarantees every delivery is settled."""

from __future__ import annotations

import enum
import logging
from typing import Any

from ..errors import ConfigurationError, DeadLetter, Drop, RetryLater
from ..message import Message
from .base import CallNext

__all__ = ["AckNackMiddleware", "AckPolicy", "settle_failure"]

logger = logging.getLogger("foxwork.ack")


class AckPolicy(enum.Enum):
    """What happens to a message whose processing failed and that no inner layer settled."""

    DEAD_LETTER = "dead_letter"
    """Publish a copy with the diagnostic headers to `Q-dlq` (confirmed), then ack. Never
    loops, never loses the message. The default."""
    REQUEUE = "requeue"
    """Nack with requeue: the broker delivers it again at once. Only for failures known to be
    transient; on a classic queue a permanent failure loops forever."""
    REJECT = "reject"
    """Nack without requeue: the broker drops it, or dead-letters it through the queue's
    dead-letter exchange (with `x-death`, without foxwork's diagnostic headers)."""


async def settle_failure(message: Message[Any], exc: BaseException, policy: AckPolicy) -> None:
    """Settle a failed, still-unsettled message, honouring what the error asks for."""
    if isinstance(exc, Drop):
        await message.ack()
    elif isinstance(exc, DeadLetter):
        await message.dead_letter(exc)
    elif isinstance(exc, RetryLater) or policy is AckPolicy.REQUEUE:
        await message.nack(requeue=True)
    elif policy is AckPolicy.REJECT:
        await message.reject()
    else:
        await message.dead_letter(exc)


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
        if not isinstance(on_failure, AckPolicy):
            raise ConfigurationError(
                f"AckNackMiddleware(on_failure={on_failure!r}): pass an AckPolicy member, "
                f"one of {', '.join(p.name for p in AckPolicy)}"
            )
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
