"""The Redis Streams backend, on redis-py's asyncio client (`pip install foxwork[redis]`)."""

from .backend import RedisStreamsBackend
from .config import RedisStreamsConfig

__all__ = ["RedisStreamsBackend", "RedisStreamsConfig"]
