"""Middleware: layers of the onion around `Worker.process`, outermost first."""

from .ack import AckNackMiddleware, AckPolicy
from .base import CallNext, Middleware
from .retry import RetryMiddleware

__all__ = [
    "AckNackMiddleware",
    "AckPolicy",
    "CallNext",
    "Middleware",
    "RetryMiddleware",
]
