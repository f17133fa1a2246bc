"""The RabbitMQ backend, on aio-pika."""

from .backend import RabbitMQBackend
from .config import QueueSettings, QueueType, RabbitMQConsumerConfig, TopologyMode, UrlOrder

__all__ = [
    "QueueSettings",
    "QueueType",
    "RabbitMQBackend",
    "RabbitMQConsumerConfig",
    "TopologyMode",
    "UrlOrder",
]
