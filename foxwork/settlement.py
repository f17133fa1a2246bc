"""How a failed delivery is settled: `AckPolicy`, and `settle_failure()` that applies it.

Both the outermost middleware (`AckNackMiddleware`) and the pool, the last safety net for a
failed message no layer settled, settle failures by the same rule: an error that says what
it wants (`Drop`, `DeadLetter`, `RetryLater`) is honoured, any other follows the policy.
"""

from __future__ import annotations

import enum
from typing import Any

from .errors import ConfigurationError, DeadLetter, Drop, RetryLater
from .message import Message

__all__ = ["AckPolicy", "check_policy", "settle_failure"]


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


def check_policy(policy: object, *, owner: str, setting: str) -> None:
    """Raise `ConfigurationError` unless `policy` is an `AckPolicy` member; the message
    names `owner(setting=...)` and the choices."""
    if not isinstance(policy, AckPolicy):
        raise ConfigurationError(
            f"{owner}({setting}={policy!r}): pass an AckPolicy member, "
            f"one of {', '.join(p.name for p in AckPolicy)}"
        )


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
