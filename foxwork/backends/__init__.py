"""Backends: where messages come from and where retries and dead letters go."""

from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:
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

#: The module of each name of `__all__`, imported when the name is first used (PEP 562):
#: `foxwork.backends.base` alone does not load the RabbitMQ client.
_LAZY = {
    "Backend": ".base",
    "Consumer": ".base",
    "Intake": ".base",
    "MemoryBackend": ".memory",
    "QueueSettings": ".rabbitmq",
    "QueueType": ".rabbitmq",
    "RabbitMQBackend": ".rabbitmq",
    "RabbitMQConsumerConfig": ".rabbitmq",
    "TopologyMode": ".rabbitmq",
    "UrlOrder": ".rabbitmq",
    "ConnectionState": ".resilient",
    "ReconnectStrategy": ".resilient",
    "ResilientBackend": ".resilient",
}

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

if not TYPE_CHECKING:  # type checkers see the imports above, and no other name
    __getattr__, __dir__ = _lazy.exports(__name__, _LAZY, __all__)
