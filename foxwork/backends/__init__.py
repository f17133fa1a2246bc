"""Backends: where messages come from and where retries and dead letters go."""

from .base import Backend, Consumer, Intake
from .memory import MemoryBackend
from .rabbitmq import QueueType, RabbitMQBackend, RabbitMQConsumerConfig, UrlOrder
from .resilient import ConnectionState, ReconnectStrategy, ResilientBackend

__all__ = [
    "Backend",
    "ConnectionState",
    "Consumer",
    "Intake",
    "MemoryBackend",
    "QueueType",
    "RabbitMQBackend",
    "RabbitMQConsumerConfig",
    "ReconnectStrategy",
    "ResilientBackend",
    "UrlOrder",
]
