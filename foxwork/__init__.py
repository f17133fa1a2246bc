"""foxwork: an asyncio framework for RabbitMQ consumers that never lose a message."""

from typing import TYPE_CHECKING

from . import _lazy
from .errors import (
    AccessRefused,
    BackendError,
    ConfigurationError,
    ConnectionLost,
    DeadLetter,
    Drop,
    FoxworkError,
    PoisonMessage,
    PoolStateError,
    ProcessingTimeout,
    PublishNotConfirmed,
    RetryLater,
    TopologyConflict,
    WorkerError,
)

if TYPE_CHECKING:
    from .app import App
    from .builder import WorkerPoolBuilder
    from .message import Message, MessageProperties, SettleState
    from .pool import PoolState, ShutdownReport, WorkerPool
    from .publisher import OutboundMessage, Publisher, PublishOutcome, PublishReceipt
    from .settings import Settings
    from .spool import SpoolConfig, SpoolFull, SpoolLocked
    from .strategies import LoadBalancingStrategy
    from .worker import Worker

    #: The installed distribution's version: `version` in pyproject.toml is its one source,
    #: read once (in `telemetry.names`, which reports it with the instrumentation scope) and
    #: shown by `foxwork --version`.
    __version__: str

#: The module of each name `__all__` exports from another module than `errors`: imported
#: when the name is first used (PEP 562), so that `import foxwork` costs only what a program
#: uses (`foxwork run` never loads the publisher or the spool unless the pool does).
_LAZY = {
    "__version__": ".telemetry.names:VERSION",
    "App": ".app",
    "WorkerPoolBuilder": ".builder",
    "Message": ".message",
    "MessageProperties": ".message",
    "SettleState": ".message",
    "PoolState": ".pool",
    "ShutdownReport": ".pool",
    "WorkerPool": ".pool",
    "OutboundMessage": ".publisher",
    "Publisher": ".publisher",
    "PublishOutcome": ".publisher",
    "PublishReceipt": ".publisher",
    "Settings": ".settings",
    "SpoolConfig": ".spool",
    "SpoolFull": ".spool",
    "SpoolLocked": ".spool",
    "LoadBalancingStrategy": ".strategies",
    "Worker": ".worker",
}

__all__ = [
    "AccessRefused",
    "App",
    "BackendError",
    "ConfigurationError",
    "ConnectionLost",
    "DeadLetter",
    "Drop",
    "FoxworkError",
    "LoadBalancingStrategy",
    "Message",
    "MessageProperties",
    "OutboundMessage",
    "PoisonMessage",
    "PoolState",
    "PoolStateError",
    "ProcessingTimeout",
    "PublishNotConfirmed",
    "PublishOutcome",
    "PublishReceipt",
    "Publisher",
    "RetryLater",
    "Settings",
    "SettleState",
    "ShutdownReport",
    "SpoolConfig",
    "SpoolFull",
    "SpoolLocked",
    "TopologyConflict",
    "Worker",
    "WorkerError",
    "WorkerPool",
    "WorkerPoolBuilder",
]

if not TYPE_CHECKING:  # type checkers see the imports above, and no other name
    __getattr__, __dir__ = _lazy.exports(__name__, _LAZY, __all__)
