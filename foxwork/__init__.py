"""foxwork: an asyncio framework for RabbitMQ consumers that never lose a message."""

from .builder import WorkerPoolBuilder
from .errors import (
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
from .strategies import LoadBalancingStrategy
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ConfigurationError",
    "ConnectionLost",
    "DeadLetter",
    "Drop",
    "FoxworkError",
    "LoadBalancingStrategy",
    "Message",
    "MessageProperties",
    "PoisonMessage",
    "PoolState",
    "PoolStateError",
    "ProcessingTimeout",
    "PublishNotConfirmed",
    "RetryLater",
    "SettleState",
    "ShutdownReport",
    "TopologyConflict",
    "Worker",
    "WorkerError",
    "WorkerPool",
    "WorkerPoolBuilder",
]
