"""Backends: where messages come from and where retries and dead letters go."""

from .base import Backend, Consumer
from .memory import MemoryBackend

__all__ = ["Backend", "Consumer", "MemoryBackend"]
