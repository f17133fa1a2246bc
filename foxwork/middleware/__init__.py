"""Middleware: layers of the onion around `Worker.process`, outermost first."""

from .ack import AckNackMiddleware, AckPolicy
from .base import CallNext, Middleware
from .batch import BatchHandler, BatchMiddleware, BatchResult
from .circuit_breaker import CircuitBreakerMiddleware, CircuitState, CircuitTransition
from .dedup import DeduplicationMiddleware, DedupStore, MemoryDedupStore
from .metrics import MetricsMiddleware
from .rate_limit import RateLimitMiddleware
from .retry import RetryMiddleware
from .tracing import TracingMiddleware

__all__ = [
    "AckNackMiddleware",
    "AckPolicy",
    "BatchHandler",
    "BatchMiddleware",
    "BatchResult",
    "CallNext",
    "CircuitBreakerMiddleware",
    "CircuitState",
    "CircuitTransition",
    "DedupStore",
    "DeduplicationMiddleware",
    "MemoryDedupStore",
    "MetricsMiddleware",
    "Middleware",
    "RateLimitMiddleware",
    "RetryMiddleware",
    "TracingMiddleware",
]
