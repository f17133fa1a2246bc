"""Every exception foxwork raises or understands.

```
FoxworkError
├── ConfigurationError (also ValueError)   bad arguments, caught at construction time
├── PoolStateError (also RuntimeError)     an operation the pool's current state forbids
├── WorkerError                            raised by user code to steer a message
│   ├── RetryLater(delay)                  retry after `delay` seconds; counts as an attempt
│   ├── DeadLetter(reason)                 straight to Q-dlq, no more retries
│   │   └── PoisonMessage(reason)          the message itself is bad (undecodable, invalid)
│   ├── Drop(reason)                       ack and forget, without processing further
│   └── ProcessingTimeout                  `Worker.processing_timeout` elapsed
└── BackendError                           the broker side failed
    ├── ConnectionLost                     not connected, or the connection died
    ├── TopologyConflict                   a queue exists with other arguments
    └── PublishNotConfirmed                the broker did not confirm a publish
```

Errors raised by aio-pika and aiormq never escape `foxwork.backends.rabbitmq`: they are
mapped at that boundary to `BackendError` subclasses, with the original chained.
"""

from __future__ import annotations

import math

__all__ = [
    "AccessRefused",
    "BackendError",
    "ConfigurationError",
    "ConnectionLost",
    "DeadLetter",
    "Drop",
    "FoxworkError",
    "PoisonMessage",
    "PoolStateError",
    "ProcessingTimeout",
    "PublishNotConfirmed",
    "RetryLater",
    "TopologyConflict",
    "WorkerError",
]


class FoxworkError(Exception):
    """Base class of every foxwork exception."""


class ConfigurationError(FoxworkError, ValueError):
    """An argument is invalid; the message names it, the bad value and the fix."""


class PoolStateError(FoxworkError, RuntimeError):
    """The pool cannot do this in its current state (for example `run()` twice)."""


class WorkerError(FoxworkError):
    """Base class of the exceptions a worker raises to steer what happens to a message."""


class RetryLater(WorkerError):
    """Retry this message after `delay` seconds.

    The delay is spent on the broker (a TTL retry queue), not in worker memory, and the
    retry counts as an attempt. With no `RetryMiddleware` in the chain the message is
    requeued at once. A delay longer than `foxwork.wire.MAX_RETRY_DELAY` (about 48 days,
    under RabbitMQ's limit on a TTL) is cut to it.

    Raises:
        ConfigurationError: `delay` is negative, infinite or NaN.

    Example:
        raise RetryLater(delay=30.0, reason="inventory service busy")
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        try:
            seconds = float(delay)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        # `not >=` also refuses NaN, which compares false with everything.
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigurationError(
                f"RetryLater(delay={delay!r}): delay must be a finite number of seconds >= 0"
            )
        self.delay = seconds
        self.reason = reason
        super().__init__(reason or f"retry later after {self.delay:g} s")


class DeadLetter(WorkerError):
    """Send this message to the dead-letter queue now; do not retry it.

    Example:
        raise DeadLetter("unknown SKU 'X-1'")
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PoisonMessage(DeadLetter):
    """The message cannot be processed at all: undecodable body, invalid payload,
    nonsense `x-retry-attempt`, or a body over `max_body_size`. Never retried."""


class Drop(WorkerError):
    """Acknowledge the message and stop processing it; it is not an error."""

    def __init__(self, reason: str = "dropped") -> None:
        self.reason = reason
        super().__init__(reason)


class ProcessingTimeout(WorkerError):
    """`process()` ran longer than the worker's `processing_timeout`; a retryable failure."""

    def __init__(self, worker_id: str, timeout: float) -> None:
        self.worker_id = worker_id
        self.timeout = timeout
        super().__init__(f"worker {worker_id!r} did not finish within {timeout:g} s")


class BackendError(FoxworkError):
    """The broker, or the connection to it, failed."""


class ConnectionLost(BackendError):
    """The backend is not connected, or its connection died during the operation."""


class AccessRefused(ConnectionLost):
    """The broker answered and refused the connection: the login (user name or password)
    or the virtual host (missing, or not permitted to the user). Trying again will not
    help until the URL or the broker's users change; the message says which."""


class TopologyConflict(BackendError):
    """A queue or exchange already exists with arguments other than the ones foxwork needs."""


class PublishNotConfirmed(BackendError):
    """The broker did not confirm a publish (nacked, returned as unroutable, refused, or
    timed out).

    Attributes:
        requeue: whether the original of a copy that was not confirmed goes back to its
            queue (the default: nothing is lost); False when copies of it were refused so
            often that it is rejected instead, for the queue's dead-letter exchange.
    """

    def __init__(self, message: str, *, requeue: bool = True) -> None:
        super().__init__(message)
        self.requeue = requeue
