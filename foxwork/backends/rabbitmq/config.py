"""`RabbitMQConsumerConfig`: everything `RabbitMQBackend` needs, validated up front."""

from __future__ import annotations

import dataclasses
import enum
import ssl
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from yarl import URL

from ... import wire
from ..._redact import redact_url
from ...errors import ConfigurationError
from .._config import BrokerConfig, _explain

__all__ = [
    "QueueNames",
    "QueueSettings",
    "QueueType",
    "RabbitMQConsumerConfig",
    "ResolvedQueueSettings",
    "TopologyMode",
    "UrlOrder",
]

#: AMQP heartbeat in seconds: a dead (blackholed) connection is noticed after about
#: (heartbeat + 1) * 3 seconds.
DEFAULT_HEARTBEAT = 10
#: Seconds one connect attempt may take; without a limit a connect into a blackhole hangs.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds to wait for the broker to confirm a publish.
DEFAULT_PUBLISH_TIMEOUT = 10.0
#: Quorum queues: deliveries before the broker dead-letters a message to `Q-dlq`
#: (a worker process that crashes on a message every time).
DEFAULT_DELIVERY_LIMIT = 10


#: Settings that were removed, and what to use instead.
_REMOVED = {
    "prefetch_count": (
        "the pool sets the prefetch when it consumes; use WorkerPool(prefetch=...) instead"
    ),
}


class QueueType(enum.StrEnum):
    """The kind of RabbitMQ queue foxwork declares."""

    CLASSIC = "classic"
    """A classic durable queue on one node."""
    QUORUM = "quorum"
    """A replicated quorum queue: survives the loss of a minority of cluster nodes, and
    dead-letters crash-looping messages after `delivery_limit` deliveries."""


class TopologyMode(enum.StrEnum):
    """What foxwork does with a queue's main queue when it starts consuming it."""

    DECLARE = "declare"
    """Declare the queue with foxwork's arguments (type, dead-lettering to `Q-dlq`, delivery
    limit) and its bindings. An existing queue declared with other arguments is refused."""
    PASSIVE = "passive"
    """Attach to a queue that must exist already (declared by another application, with
    arguments of its own); a missing queue is refused at start-up. foxwork never declares
    or binds it, and never relies on its dead-letter exchange: what it dead-letters goes to
    `Q-dlq` as a confirmed copy. `Q-dlq`, the retry exchange and the retry queues are
    declared as usual."""


def _check_exchange_type(value: str | None) -> str | None:
    if value is not None and value not in ("direct", "topic", "fanout", "headers"):
        raise ValueError(f"{value!r} is not an exchange type: use direct, topic, fanout or headers")
    return value


class QueueSettings(BaseModel):
    """Settings of one queue that differ from the backend-wide ones
    (`RabbitMQConsumerConfig.queue_settings`). A field left None takes the backend-wide
    value: a queue cannot turn off an exchange or delivery limit set backend-wide, so give
    those to the queues that use them instead.

    Example:
        RabbitMQConsumerConfig(
            url=URL,
            queue=["orders", "events", "legacy"],
            queue_settings={
                "orders": QueueSettings(queue_type=QueueType.QUORUM),
                "events": QueueSettings(exchange="events", binding_keys=["order.*"]),
                "legacy": QueueSettings(topology=TopologyMode.PASSIVE),
            },
        )
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_type: QueueType | None = None
    exchange: str | None = None
    exchange_type: str | None = None
    binding_keys: list[str] | None = None
    delivery_limit: Annotated[int, Field(ge=1)] | None = None
    topology: TopologyMode | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(_explain(type(self).__name__, exc)) from None

    @field_validator("exchange_type")
    @classmethod
    def _check_exchange_type(cls, value: str | None) -> str | None:
        return _check_exchange_type(value)


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedQueueSettings:
    """The settings one queue is declared and consumed with: its `QueueSettings`, the
    backend-wide value wherever it gives none (`RabbitMQConsumerConfig.settings_for`)."""

    queue_type: QueueType
    exchange: str | None
    exchange_type: str
    #: Routing keys binding the queue to `exchange` (the queue name when none was given).
    binding_keys: tuple[str, ...]
    delivery_limit: int | None
    topology: TopologyMode

    @property
    def passive(self) -> bool:
        return self.topology is TopologyMode.PASSIVE


class UrlOrder(enum.StrEnum):
    """How several broker URLs are tried."""

    IN_ORDER = "in_order"
    """The first URL first; the next one when it fails."""
    SHUFFLE = "shuffle"
    """A random order on each connect, spreading clients over the cluster."""


class QueueNames(BaseModel):
    """The names of one queue's topology (see `foxwork.wire`)."""

    model_config = ConfigDict(frozen=True)

    queue: str
    retry_exchange: str
    retry_queue_prefix: str
    dead_letter_queue: str

    def retry_queue(self, delay_ms: int) -> str:
        """The retry queue of one delay tier."""
        return wire.retry_queue_name(self.queue, delay_ms, prefix=self.retry_queue_prefix)


class RabbitMQConsumerConfig(BrokerConfig):
    """Connection and topology settings of a `RabbitMQBackend`.

    Args:
        url: an AMQP URL (`amqp://user:password@host:5672/vhost`, or `amqps://` for TLS), or
            a list of URLs of cluster nodes to fail over between. Held as secrets: never
            printed.
        queue: the queue to consume, or a list of queues (all with these settings); an
            empty list for a backend that only publishes.
        consumer_tag: prefix of the consumer tags (RabbitMQ generates one when None).
        queue_type: classic or quorum.
        exchange: an exchange to bind the queue(s) to (declared as `exchange_type`,
            durable); None consumes what is published to the queue directly.
        exchange_type: direct, topic, fanout or headers.
        binding_keys: routing keys binding the queue(s) to `exchange` (default: the queue name).
        enable_delayed_retry: retries wait in TTL retry queues; when False a retried copy
            goes straight back to the queue.
        retry_exchange, retry_queue_prefix, dead_letter_queue: name overrides (one queue
            only); defaults `Q-retry_exchange`, `Q-retry`, `Q-dlq`.
        delivery_limit: quorum queues only; deliveries before the broker dead-letters a
            message (a crash loop). None disables it.
        heartbeat: AMQP heartbeat, seconds (0 disables; not recommended).
        connect_timeout: seconds one connect attempt may take.
        publish_timeout: seconds to wait for a publish confirm.
        url_order: try URLs in order or shuffled.
        ssl_context: TLS settings for `amqps://` URLs (default: system CA store).
        max_body_size: bodies larger than this (bytes) are dead-lettered unread.
        connection_name: shown by `rabbitmqctl list_connections` and the management UI.
        topology: declare the queue(s) (default), or attach passively to queues that
            must exist (`TopologyMode`).
        queue_settings: per queue, the settings that differ from the ones above
            (`QueueSettings`: queue type, exchange and bindings, delivery limit, topology);
            keys are queues of `queue`.

    The prefetch (unsettled deliveries per queue) is not a setting here: the pool asks for
    it when it consumes, `WorkerPool(prefetch=...)`.

    Example:
        config = RabbitMQConsumerConfig(url="amqp://guest:guest@127.0.0.1/", queue="orders")
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    url: SecretStr | list[SecretStr]
    queue: str | list[str]
    consumer_tag: str | None = None
    queue_type: QueueType = QueueType.CLASSIC
    exchange: str | None = None
    exchange_type: str = "topic"
    binding_keys: list[str] = Field(default_factory=list)
    enable_delayed_retry: bool = True
    retry_exchange: str | None = None
    retry_queue_prefix: str | None = None
    dead_letter_queue: str | None = None
    delivery_limit: Annotated[int, Field(ge=1)] | None = DEFAULT_DELIVERY_LIMIT
    heartbeat: Annotated[int, Field(ge=0, le=3600)] = DEFAULT_HEARTBEAT
    connect_timeout: Annotated[float, Field(gt=0)] = DEFAULT_CONNECT_TIMEOUT
    publish_timeout: Annotated[float, Field(gt=0)] = DEFAULT_PUBLISH_TIMEOUT
    url_order: UrlOrder = UrlOrder.IN_ORDER
    ssl_context: ssl.SSLContext | None = None
    max_body_size: Annotated[int, Field(ge=1)] = wire.DEFAULT_MAX_BODY_SIZE
    connection_name: str | None = None
    topology: TopologyMode = TopologyMode.DECLARE
    queue_settings: dict[str, QueueSettings] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:  # keyword arguments, validated by the base
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed_settings(cls, data: Any) -> Any:
        # Named before pydantic's "Extra inputs are not permitted", which says no more.
        removed = sorted(_REMOVED.keys() & data.keys()) if isinstance(data, dict) else []
        if removed:
            raise ValueError(
                "; ".join(
                    f"{name}={data[name]!r} is not a setting any more: {_REMOVED[name]}"
                    for name in removed
                )
            )
        return data

    @field_validator("url")
    @classmethod
    def _check_urls(cls, value: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        urls = value if isinstance(value, list) else [value]
        if not urls:
            raise ValueError("give at least one URL")
        for url in urls:
            text = url.get_secret_value()
            if not text.startswith(("amqp://", "amqps://")):
                raise ValueError(
                    f"{redact_url(text)!r} is not an AMQP URL: use "
                    "amqp://user:password@host:5672/vhost (or amqps:// for TLS)"
                )
            try:
                parsed = URL(text)
                parsed.port  # noqa: B018 - parsing the port is the check
            except ValueError:
                # The parser's own message is not shown: it may quote the "port" it could not
                # read, which is the start of a password holding an unencoded "?" or "/".
                raise ValueError(
                    f"{redact_url(text)!r} cannot be parsed: check the host and port, and "
                    "percent-encode special characters in the user name and password "
                    "(/ ? # @ : as %2F %3F %23 %40 %3A)"
                ) from None
            if not parsed.host:
                raise ValueError(
                    f"{redact_url(text)!r} names no host: use amqp://user:password@host:5672/"
                )
        return value

    @field_validator("queue")
    @classmethod
    def _check_queues(cls, value: str | list[str]) -> str | list[str]:
        # An empty list declares and consumes nothing: a backend that only publishes
        # (`Publisher.connect()`); a pool refuses to run on it without queues of its own.
        names = [value] if isinstance(value, str) else value
        for name in names:
            if not name or len(name.encode()) > 200:
                raise ValueError(
                    f"queue name {name!r} must be 1 to 200 bytes long (RabbitMQ allows 255, "
                    "and foxwork appends suffixes such as '-retry_exchange')"
                )
            if name.startswith("amq."):
                raise ValueError(f"queue name {name!r}: names starting with 'amq.' are reserved")
        if len(set(names)) != len(names):
            raise ValueError(f"queue names must be unique; got {names}")
        return value

    @field_validator("exchange_type")
    @classmethod
    def _check_exchange_type(cls, value: str) -> str:
        _check_exchange_type(value)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> RabbitMQConsumerConfig:
        overrides = [self.retry_exchange, self.retry_queue_prefix, self.dead_letter_queue]
        if any(overrides) and len(self.queues) > 1:
            raise ValueError(
                "retry_exchange, retry_queue_prefix and dead_letter_queue name one queue's "
                "topology: with several queues, use one RabbitMQConsumerConfig per queue "
                "or keep the default names"
            )
        if self.binding_keys and self.exchange is None:
            raise ValueError("binding_keys need an exchange: set exchange='...' as well")
        unknown = sorted(self.queue_settings.keys() - set(self.queues))
        if unknown:
            raise ValueError(
                f"queue_settings name {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not among the queues "
                f"{list(self.queues)}: add {'it' if len(unknown) == 1 else 'them'} to queue, "
                "or fix the name"
            )
        for queue in self.queues:
            own = self.queue_settings.get(queue)
            resolved = self.settings_for(queue)
            if own is not None and own.binding_keys and resolved.exchange is None:
                raise ValueError(
                    f"queue_settings[{queue!r}]: binding_keys need an exchange: set "
                    "exchange='...' as well"
                )
            if resolved.passive and resolved.exchange is not None:
                raise ValueError(
                    f"queue {queue!r} is passive (topology='passive'): foxwork neither "
                    f"declares nor binds it, so it cannot bind it to exchange "
                    f"{resolved.exchange!r}; bind it where it is declared, and give the "
                    "exchange and binding_keys only to the queues foxwork declares "
                    "(queue_settings), or use topology='declare'"
                )
        return self

    # -- derived -----------------------------------------------------------------------

    def settings_for(self, queue: str) -> ResolvedQueueSettings:
        """The settings `queue` is declared and consumed with: its `queue_settings`, the
        backend-wide value wherever those give none (a queue not in `queue`: the
        backend-wide values)."""
        own = self.queue_settings.get(queue) or QueueSettings()
        binding_keys = self.binding_keys if own.binding_keys is None else own.binding_keys
        return ResolvedQueueSettings(
            queue_type=self.queue_type if own.queue_type is None else own.queue_type,
            exchange=self.exchange if own.exchange is None else own.exchange,
            exchange_type=self.exchange_type if own.exchange_type is None else own.exchange_type,
            binding_keys=tuple(binding_keys or [queue]),
            delivery_limit=(
                self.delivery_limit if own.delivery_limit is None else own.delivery_limit
            ),
            topology=self.topology if own.topology is None else own.topology,
        )

    def names(self, queue: str) -> QueueNames:
        """The topology names of `queue`, overrides applied."""
        return QueueNames(
            queue=queue,
            retry_exchange=self.retry_exchange or wire.retry_exchange_name(queue),
            retry_queue_prefix=self.retry_queue_prefix or wire.retry_queue_prefix(queue),
            dead_letter_queue=self.dead_letter_queue or wire.dead_letter_queue_name(queue),
        )
