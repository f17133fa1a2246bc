"""foxwork: an asyncio framework for RabbitMQ consumers that never lose a message."""

from .app import App
from .builder import WorkerPoolBuilder
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
from .message import Message, MessageProperties, SettleState
from .pool import PoolState, ShutdownReport, WorkerPool
from .publisher import OutboundMessage, Publisher, PublishOutcome, PublishReceipt
from .settings import Settings
from .spool import SpoolConfig, SpoolFull, SpoolLocked
from .strategies import LoadBalancingStrategy
from .telemetry import names as _telemetry_names
from .worker import Worker

#: The installed distribution's version: `version` in pyproject.toml is its one source, read
#: once (in `telemetry.names`, which reports it with the instrumentation scope) and shown by
#: `foxwork --version`.
__version__: str = _telemetry_names.VERSION

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
