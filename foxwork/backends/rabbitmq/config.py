"""`RabbitMQConsumerConfig`: everything `RabbitMQBackend` needs, validated up front."""

from __future__ import annotations

import enum
import ssl
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from yarl import URL

from ... import wire
from ..._redact import redact_url
from .._config import BrokerConfig

__all__ = ["QueueNames", "QueueType", "RabbitMQConsumerConfig", "UrlOrder"]

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
        if value not in ("direct", "topic", "fanout", "headers"):
            raise ValueError(
                f"{value!r} is not an exchange type: use direct, topic, fanout or headers"
            )
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
        return self

    # -- derived -----------------------------------------------------------------------

    def names(self, queue: str) -> QueueNames:
        """The topology names of `queue`, overrides applied."""
        return QueueNames(
            queue=queue,
            retry_exchange=self.retry_exchange or wire.retry_exchange_name(queue),
            retry_queue_prefix=self.retry_queue_prefix or wire.retry_queue_prefix(queue),
            dead_letter_queue=self.dead_letter_queue or wire.dead_letter_queue_name(queue),
        )
