"""The RabbitMQ backend, on aio-pika."""

from .backend import RabbitMQBackend
from .config import QueueType, RabbitMQConsumerConfig, UrlOrder

__all__ = ["QueueType", "RabbitMQBackend", "RabbitMQConsumerConfig", "UrlOrder"]
