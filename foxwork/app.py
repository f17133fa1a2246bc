"""`App`: several pools in one process, each on its own queues with its own workers,
middleware and topology settings, sharing one broker connection and one HTTP server.

`foxwork run module:app` serves an App as it serves a single `WorkerPool`; `await app.run()`
runs one in your own program (signals are yours to handle there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._redact import redact_url
from .backends.base import Backend
from .backends.rabbitmq import RabbitMQBackend, RabbitMQConsumerConfig
from .backends.rabbitmq.config import QueueSettings, QueueType, TopologyMode
from .backends.resilient import ResilientBackend
from .errors import ConfigurationError, PoolStateError
from .pool import DEFAULT_SHUTDOWN_TIMEOUT, PoolState, ShutdownReport, WorkerPool
from .settings import Settings, resolve_settings

# Binding, make_backend, URL_SCHEMES and SUPPORTED_SCHEMES are used as foxwork.app.<name>.
__all__ = ["App"]

logger = logging.getLogger("foxwork.app")

#: Settings that are `RabbitMQConsumerConfig` fields of the same name.
_RABBITMQ_FIELDS = (
    "queue_type",
    "topology",
    "exchange",
    "exchange_type",
    "binding_keys",
    "heartbeat",
    "connection_name",
)
#: Settings that mean something to RabbitMQ only (refused on a Redis URL).
_RABBITMQ_ONLY = (*_RABBITMQ_FIELDS, "tls_ca", "tls_cert", "tls_key")
#: Settings that mean something to Redis Streams only (refused on a RabbitMQ URL).
_REDIS_ONLY = ("redis_cluster",)


@dataclasses.dataclass(frozen=True)
class Binding:
    """One pool of an `App`, the queues it consumes, and how those queues are declared
    (fields left None take the App-wide settings)."""

    pool: WorkerPool
    queues: tuple[str, ...]
    queue_settings: QueueSettings


class App:
    """Pools served together: one connection to the broker (per process), one HTTP server,
    one shutdown. Each pool keeps its own concurrency slots, middleware and circuit, so a
    pool that is stuck or whose circuit is open does not hold up another.

    Args:
        name: shown in logs and health output.
        settings: broker and serving settings (`foxwork.Settings`); or give them as keyword
            arguments instead (`App("billing", url=..., heartbeat=30)`). `$FOXWORK_*`
            variables and `foxwork run` flags override them.

    Example:
        app = App("billing", queue_type="quorum")
        app.add(invoices, queues=["invoices"])
        app.add(events, queues=["billing-events"], exchange="events", binding_keys=["order.*"])
        app.add(legacy, queues=["legacy-payments"], topology="passive")
        # foxwork run billing:app, or in your own program: await app.run()
    """

    def __init__(
        self, name: str = "foxwork", *, settings: Settings | None = None, **values: Any
    ) -> None:
        if settings is not None and values:
            raise ConfigurationError(
                f"App({name!r}) got settings= and {', '.join(sorted(values))}=: give the "
                "settings one way, in Settings(...) or as keyword arguments"
            )
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigurationError(f"App(settings={settings!r}): pass a foxwork.Settings")
        self.name = name
        self.settings = settings if settings is not None else Settings(**values)
        self._bindings: list[Binding] = []
        self._state = PoolState.CREATED
        self._backend: Backend | None = None
        self._stopped: asyncio.Event | None = None
        #: The pool whose start failed, when `start()` raised while starting one.
        self.failed_pool: WorkerPool | None = None

    def __repr__(self) -> str:
        pools = ", ".join(repr(b.pool.name) for b in self._bindings)
        return f"<App name={self.name!r} state={self._state.value} pools=[{pools}]>"

    @classmethod
    def of(cls, pool: WorkerPool, *, queues: Sequence[str] = ()) -> App:
        """An App of one pool (what `foxwork run` serves for a `WorkerPool`)."""
        app = cls(pool.name, settings=Settings.model_construct())
        app.add(pool, queues=queues or None)
        return app

    # -- building --------------------------------------------------------------------------

    def add(
        self,
        pool: WorkerPool,
        *,
        queues: Sequence[str] | None = None,
        queue_type: QueueType | str | None = None,
        exchange: str | None = None,
        exchange_type: str | None = None,
        binding_keys: Sequence[str] | None = None,
        delivery_limit: int | None = None,
        topology: TopologyMode | str | None = None,
    ) -> WorkerPool:
        """Serve `pool` on `queues` (default: the pool's own), declared with these settings
        (None: the App-wide one). Returns the pool.

        Raises:
            ConfigurationError: the pool or a queue is already in the App, no queue is
                named, a setting is invalid, or the App is running.
        """
        if self._state is not PoolState.CREATED:
            raise PoolStateError(f"App {self.name!r} is {self._state.value}: add pools before")
        if not isinstance(pool, WorkerPool):
            raise ConfigurationError(f"App.add({pool!r}): pass a foxwork.WorkerPool")
        if any(b.pool is pool for b in self._bindings):
            raise ConfigurationError(f"pool {pool.name!r} is in App {self.name!r} already")
        names = tuple(queues or pool.queues)
        if not names:
            raise ConfigurationError(
                f"App.add(pool {pool.name!r}): name its queues, queues=[...] here or on the pool"
            )
        for queue in names:
            if not isinstance(queue, str) or not queue:
                raise ConfigurationError(f"queues must be non-empty strings; got {queue!r}")
            owner = self._owner(queue)
            if owner is not None:
                raise ConfigurationError(
                    f"queue {queue!r} is consumed by pool {owner.name!r} already: a queue "
                    "belongs to one pool of an App (add workers to that pool instead)"
                )
        try:
            own = QueueSettings(
                queue_type=queue_type,
                exchange=exchange,
                exchange_type=exchange_type,
                binding_keys=list(binding_keys) if binding_keys is not None else None,
                delivery_limit=delivery_limit,
                topology=topology,
            )
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigurationError(f"App.add(pool {pool.name!r}): {exc}") from None
        self._bindings.append(Binding(pool, names, own))
        return pool

    def _owner(self, queue: str) -> WorkerPool | None:
        return next((b.pool for b in self._bindings if queue in b.queues), None)

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return tuple(self._bindings)

    @property
    def pools(self) -> tuple[WorkerPool, ...]:
        return tuple(b.pool for b in self._bindings)

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue of every pool, in the order they were added."""
        return tuple(queue for b in self._bindings for queue in b.queues)

    def queue_settings(self) -> dict[str, QueueSettings]:
        """Per queue, the settings given to `add()` (only queues that were given some)."""
        empty = QueueSettings()
        return {
            queue: b.queue_settings
            for b in self._bindings
            if b.queue_settings != empty
            for queue in b.queues
        }

    def apply_limits(self, *, concurrency: int | None, prefetch: int | None) -> None:
        """Replace every pool's concurrency and prefetch where given (`foxwork run
        --concurrency/--prefetch`, `$FOXWORK_CONCURRENCY/PREFETCH`): each pool is replaced
        by a new one with the same workers and middleware; the old pool is not changed.

        Raises:
            PoolStateError: the App has started.
        """
        if concurrency is None and prefetch is None:
            return
        if self._state is not PoolState.CREATED:
            raise PoolStateError(f"App {self.name!r} is {self._state.value}: limits are set before")
        self._bindings = [
            dataclasses.replace(
                b, pool=_with_limits(b.pool, concurrency=concurrency, prefetch=prefetch)
            )
            for b in self._bindings
        ]

    # -- the backend -----------------------------------------------------------------------

    def make_backend(self, settings: Settings, *, wait_for_broker: bool = False) -> Backend:
        """The backend these settings name for this App's queues (see `make_backend`)."""
        return make_backend(
            settings, self.queues, self.queue_settings(), wait_for_broker=wait_for_broker
        )

    # -- running ---------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    @property
    def backend(self) -> Backend | None:
        """The backend the App runs on, once started."""
        return self._backend

    async def start(self, backend: Backend) -> None:
        """Connect (if needed) and start every pool on its queues; returns at once. When a
        pool cannot start, the ones started before it are shut down and the error raised.

        Raises:
            PoolStateError: the App has started before.
            ConfigurationError: the App has no pool.
        """
        if self._state is not PoolState.CREATED:
            raise PoolStateError(f"App {self.name!r} is {self._state.value}: an App runs once")
        if not self._bindings:
            raise ConfigurationError(f"App {self.name!r} has no pool: call app.add(pool) first")
        self._state = PoolState.RUNNING
        self.failed_pool = None
        self._backend = backend
        self._stopped = asyncio.Event()
        try:
            if not backend.is_connected:
                await backend.connect()
            for b in self._bindings:
                self.failed_pool = b.pool
                await b.pool.start(backend, queues=b.queues)
            self.failed_pool = None
        except BaseException:
            # The pools started stop now; the others (never started) will not start. The
            # one that failed has stopped itself.
            stopping = [b.pool for b in self._bindings if b.pool.state is not PoolState.STOPPED]
            await asyncio.gather(*(pool.shutdown(0) for pool in stopping))
            self._state = PoolState.STOPPED
            self._stopped.set()
            raise

    async def shutdown(self, timeout: float | None = DEFAULT_SHUTDOWN_TIMEOUT) -> ShutdownReport:
        """Shut every pool down at once (see `WorkerPool.shutdown`); the report adds them
        up. Safe to call more than once; a shorter `timeout` brings the deadline forward."""
        if self._state is PoolState.RUNNING:
            self._state = PoolState.DRAINING
        # Each pool's shutdown is idempotent and brings its own deadline forward.
        reports = await asyncio.gather(*(b.pool.shutdown(timeout) for b in self._bindings))
        self._state = PoolState.STOPPED
        if self._stopped is not None:
            self._stopped.set()
        return ShutdownReport(
            finished=sum(r.finished for r in reports), requeued=sum(r.requeued for r in reports)
        )

    async def run(self, backend: Backend | None = None, *, wait_for_broker: bool = False) -> None:
        """Consume until `shutdown()` (or until cancelled, which shuts down with the default
        deadline). Without a backend, one is made from `self.settings` with `$FOXWORK_*`
        on top (`make_backend`), and closed at the end.
        """
        own = backend is None
        if backend is None:
            settings = resolve_settings(self.settings)
            backend = self.make_backend(settings, wait_for_broker=wait_for_broker)
            self.apply_limits(concurrency=settings.concurrency, prefetch=settings.prefetch)
        try:
            await self.start(backend)
            assert self._stopped is not None
            try:
                await self._stopped.wait()
            except asyncio.CancelledError:
                await asyncio.shield(self.shutdown())
                raise
        finally:
            if own:
                await backend.close()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: the App's state, its backend, and every pool's
        `WorkerPool.health()`."""
        return {
            "name": self.name,
            "state": self._state.value,
            "running": self._state is PoolState.RUNNING,
            "backend": self._backend.health() if self._backend is not None else None,
            "pools": [b.pool.health() for b in self._bindings],
        }

    def readiness(self) -> list[str]:
        """Why the App is not ready (empty when it is): ready means running, connected, and
        every pool consuming every one of its queues."""
        reasons = []
        if self._state is not PoolState.RUNNING:
            reasons.append(f"app is {self._state.value}, not running")
        backend = self._backend
        if backend is None or not backend.is_connected:
            reasons.append("backend is not connected")
        for b in self._bindings:
            health = b.pool.health()
            if not health["running"]:
                reasons.append(f"pool {b.pool.name!r} is {health['state']}, not running")
            consuming = set(health["consuming"])
            idle = [queue for queue in b.queues if queue not in consuming]
            if idle:
                reasons.append(f"pool {b.pool.name!r}: no active consumer on {', '.join(idle)}")
        return reasons


def make_backend(
    settings: Settings,
    queues: Sequence[str],
    queue_settings: Mapping[str, QueueSettings] | None = None,
    *,
    wait_for_broker: bool = False,
) -> Backend:
    """The backend `settings` name for `queues`: RabbitMQ or Redis Streams by the URL's
    scheme, reconnected forever once connected (`ResilientBackend`), or the in-memory
    backend with `memory=True`.

    Args:
        settings: the effective settings (`resolve_settings`).
        queues: every queue to consume.
        queue_settings: per queue, the settings of its own (RabbitMQ only).
        wait_for_broker: the first connect keeps retrying instead of failing fast.

    Raises:
        ConfigurationError: no URL (and not `memory`), an unknown scheme, or settings the
            backend cannot take.
    """
    if settings.memory:
        from .backends.memory import MemoryBackend  # imported on use: `foxwork run` needs no other

        return MemoryBackend(queues=list(queues))
    urls = settings.urls
    if not urls:
        raise ConfigurationError(
            "no broker URL: pass --url amqp://... (or set $FOXWORK_URL), or --memory to run "
            "on the in-memory backend"
        )
    schemes = sorted({_scheme(url) for url in urls})
    if len(schemes) > 1:
        raise ConfigurationError(
            f"the URLs mix schemes ({', '.join(schemes)}): give the nodes of one broker"
        )
    build = URL_SCHEMES.get(schemes[0])
    if build is None:
        shown = f"URL scheme {schemes[0]!r}" if schemes[0] else "a URL without a scheme"
        raise ConfigurationError(f"{shown} is not supported: use {SUPPORTED_SCHEMES}")
    backend = build(settings, list(queues), dict(queue_settings or {}))
    return ResilientBackend(backend, fail_fast=not wait_for_broker)


def _with_limits(pool: WorkerPool, *, concurrency: int | None, prefetch: int | None) -> WorkerPool:
    # A new pool with the same workers and middleware, validated by the constructor; the
    # pool itself is never changed. `concurrency` alone sets the prefetch too, as it does
    # for a pool built with only a concurrency limit.
    if concurrency is None and prefetch is None:
        return pool
    return WorkerPool(
        workers=pool.workers,
        middleware=pool.middleware,
        strategy=pool.strategy,
        concurrency_limit=concurrency or pool.concurrency_limit,
        queues=pool.queues,
        prefetch=prefetch or concurrency or pool.prefetch,
        name=pool.name,
        on_unsettled_failure=pool.on_unsettled_failure,
    )


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    return scheme if separator else ""


def _given(settings: Settings, names: Sequence[str]) -> dict[str, Any]:
    # Only what was set somewhere (code, environment or flag): a default left alone lets a
    # value in the URL (?heartbeat=30) stand.
    return {name: getattr(settings, name) for name in names if name in settings.model_fields_set}


def _rabbitmq(
    settings: Settings, queues: list[str], queue_settings: dict[str, QueueSettings]
) -> Backend:
    redis_only = sorted(_given(settings, _REDIS_ONLY))
    if redis_only:
        raise ConfigurationError(
            f"{', '.join(redis_only)} apply to Redis Streams only: unset them for RabbitMQ"
        )
    given = _given(settings, (*_RABBITMQ_FIELDS, "connect_timeout"))
    urls = settings.urls
    config = RabbitMQConsumerConfig(
        url=urls[0] if len(urls) == 1 else urls,
        queue=queues,
        ssl_context=settings.ssl_context(),
        queue_settings=queue_settings,
        **given,
    )
    return RabbitMQBackend(config)


def _redis_streams(
    settings: Settings, queues: list[str], queue_settings: dict[str, QueueSettings]
) -> Backend:
    try:
        # Imported on use: redis-py is an optional extra.
        from .backends.redis import RedisStreamsBackend, RedisStreamsConfig
    except ImportError as exc:
        raise ConfigurationError(
            f"redis:// needs redis-py, which is not installed ({exc}): pip install 'foxwork[redis]'"
        ) from None
    rabbitmq_only = sorted(_given(settings, _RABBITMQ_ONLY))
    if rabbitmq_only:
        raise ConfigurationError(
            f"{', '.join(rabbitmq_only)} apply to RabbitMQ only: unset them for Redis Streams"
        )
    for queue, own in queue_settings.items():
        raise ConfigurationError(
            f"queue {queue!r} has settings of its own "
            f"({', '.join(sorted(own.model_dump(exclude_none=True)))}), which apply to "
            "RabbitMQ only: drop them from app.add(...) to run it on Redis Streams"
        )
    urls = settings.urls
    config = RedisStreamsConfig(
        url=urls[0] if len(urls) == 1 else urls,
        queue=queues,
        cluster=settings.redis_cluster,
        **_given(settings, ("connect_timeout",)),
    )
    return RedisStreamsBackend(config)


#: The URL schemes `foxwork run --url` understands, and the backend each one picks.
URL_SCHEMES: dict[str, Callable[[Settings, list[str], dict[str, QueueSettings]], Backend]] = {
    "amqp": _rabbitmq,
    "amqps": _rabbitmq,
    "redis": _redis_streams,
    "rediss": _redis_streams,
}
SUPPORTED_SCHEMES = "amqp:// or amqps:// (RabbitMQ), redis:// or rediss:// (Redis Streams)"


def describe_broker(settings: Settings) -> str:
    """How logs name the broker of these settings: the URLs, redacted."""
    if settings.memory:
        return "the in-memory backend"
    return ", ".join(redact_url(url) for url in settings.urls) or "no broker"
