"""The Redis Streams backend, on redis-py's asyncio client (`pip install foxwork[redis]`)."""

import importlib.util

if importlib.util.find_spec("redis") is None:  # an extra: say how to get it
    raise ImportError(
        "the Redis Streams backend needs redis-py, which is not installed: "
        "pip install 'foxwork[redis]'",
        name="redis",
    )

from .backend import RedisStreamsBackend
from .config import RedisStreamsConfig

__all__ = ["RedisStreamsBackend", "RedisStreamsConfig"]
