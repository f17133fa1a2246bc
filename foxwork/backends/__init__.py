"""Backends: where messages come from and where retries and dead letters go."""

from .base import Backend, Consumer, Intake
from .memory import MemoryBackend
from .rabbitmq import (
    QueueSettings,
    QueueType,
    RabbitMQBackend,
    RabbitMQConsumerConfig,
    TopologyMode,
    UrlOrder,
)
from .resilient import ConnectionState, ReconnectStrategy, ResilientBackend

__all__ = [
    "Backend",
    "ConnectionState",
    "Consumer",
    "Intake",
    "MemoryBackend",
    "QueueSettings",
    "QueueType",
    "RabbitMQBackend",
    "RabbitMQConsumerConfig",
    "ReconnectStrategy",
    "ResilientBackend",
    "TopologyMode",
    "UrlOrder",
]
