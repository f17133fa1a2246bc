"""`RedisStreamsConfig`: everything `RedisStreamsBackend` needs, validated up front.

Key layout for a queue `Q` (one hash tag per queue, so that all of a queue's keys live in
one slot of a Redis Cluster and a MULTI or a script may touch them together):

- `foxwork:{Q}`         the stream (consumer group `foxwork`)
- `foxwork:{Q}:retry`   sorted set of retry copies, scored by their due time (ms)
- `foxwork:{Q}:dlq`     the dead-letter stream
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ... import wire
from ..._redact import redact_url
from .._config import BrokerConfig

__all__ = ["RedisStreamsConfig", "StreamKeys", "default_consumer_name"]

#: Consumer group every foxwork process of a queue joins.
DEFAULT_GROUP = "foxwork"
#: Prefix of every key foxwork writes.
DEFAULT_KEY_PREFIX = "foxwork"
#: Milliseconds one XREADGROUP waits for new entries (also how quickly a stop is noticed).
DEFAULT_BLOCK_MS = 1000
#: Entries one XREADGROUP asks for at most (COUNT), fewer when the prefetch has less room.
DEFAULT_BATCH_SIZE = 64
#: Seconds an entry stays pending, untouched, before another consumer reclaims it (its
#: consumer is taken for dead). Consumers keep their own in-flight entries fresh.
DEFAULT_CLAIM_IDLE = 60.0
#: Deliveries before a crash-looping entry is dead-lettered (as a quorum queue's limit).
DEFAULT_DELIVERY_LIMIT = 10
#: Seconds one connect attempt may take.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds between the client's PINGs on an idle connection.
DEFAULT_HEALTH_CHECK_INTERVAL = 15.0
#: Connections to Redis at most: each consumer's blocking read holds one, settlements and
#: publishes share the rest (waiting for a free one rather than failing).
DEFAULT_MAX_CONNECTIONS = 64


def default_consumer_name() -> str:
    """`host-pid`: unique per process, and the same for a process's every reconnect."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamKeys(BaseModel):
    """The Redis keys of one queue (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    queue: str
    stream: str
    retry: str
    dead_letter: str


class RedisStreamsConfig(BrokerConfig):
    """Connection and stream settings of a `RedisStreamsBackend`.

    Args:
        url: a Redis URL (`redis://:password@host:6379/0`, or `rediss://` for TLS), or a
            list of URLs tried in order on each connect. Held as secrets: never printed.
            With `cluster=True`: the startup nodes of the cluster (any one that answers is
            enough; list several so that one down does not stop a connect).
        queue: the queue to consume, or a list of queues (one stream each).
        cluster: the URLs are nodes of a Redis Cluster (redis-py's `RedisCluster`): each
            queue's keys share one hash tag, so a queue lives on one master, and the
            queues spread over the masters. All URLs then use one scheme and the same
            credentials, and database 0 (a cluster has no other); TLS settings and other
            query string options come from the first URL. Not inferred from several URLs
            (those are a single server's fallbacks when False) nor from the URL: a single
            server that is a cluster node, or a cluster URL that is not, is refused when
            connecting (`ConfigurationError`).
        key_prefix: prefix of every key (`foxwork:{Q}`, `foxwork:{Q}:dlq`, ...).
        group: the consumer group.
        consumer: this process's name in the group (default `host-pid`). Two live processes
            must not share one: each reclaims its own pending entries on start.
        block_ms: milliseconds one XREADGROUP waits for new entries.
        batch_size: entries one XREADGROUP asks for at most (COUNT).
        claim_idle: seconds an entry may sit pending, untouched, before another consumer
            takes it over (its consumer is taken for dead).
        delivery_limit: deliveries before an entry is dead-lettered with reason
            `delivery_limit` (a worker process that dies on it every time). None: no limit.
        max_len: approximate cap of each stream (XADD MAXLEN ~); None keeps everything.
            Trimming drops the oldest entries, pending ones included: size it well above
            what can be in flight.
        connect_timeout: seconds one connect attempt may take.
        health_check_interval: seconds between PINGs of an idle connection (0 disables).
        max_connections: connections to Redis at most; a command waits (up to
            `connect_timeout`) for a free one. Give each consumed queue one, plus room for
            the settlements of the pool's concurrency. In a cluster: the settlements and
            publishes at once (more wait), and per master at most this plus two for each
            queue (its consumer's read and its retry mover).
        max_body_size: bodies larger than this (bytes) are dead-lettered unread.

    The prefetch (unsettled entries per queue) is not a setting here: the pool asks for it
    when it consumes, `WorkerPool(prefetch=...)`.

    Example:
        config = RedisStreamsConfig(url="redis://127.0.0.1:6379/0", queue="orders")
        cluster = RedisStreamsConfig(
            url=["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
            cluster=True,
            queue=["orders", "refunds"],
        )
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr | list[SecretStr]
    queue: str | list[str]
    cluster: bool = False
    key_prefix: str = DEFAULT_KEY_PREFIX
    group: str = DEFAULT_GROUP
    consumer: str = Field(default_factory=default_consumer_name)
    block_ms: Annotated[int, Field(ge=1, le=60_000)] = DEFAULT_BLOCK_MS
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = DEFAULT_BATCH_SIZE
    claim_idle: Annotated[float, Field(gt=0)] = DEFAULT_CLAIM_IDLE
    delivery_limit: Annotated[int, Field(ge=1)] | None = DEFAULT_DELIVERY_LIMIT
    max_len: Annotated[int, Field(ge=1)] | None = None
    connect_timeout: Annotated[float, Field(gt=0)] = DEFAULT_CONNECT_TIMEOUT
    health_check_interval: Annotated[float, Field(ge=0)] = DEFAULT_HEALTH_CHECK_INTERVAL
    max_connections: Annotated[int, Field(ge=2)] = DEFAULT_MAX_CONNECTIONS
    max_body_size: Annotated[int, Field(ge=1)] = wire.DEFAULT_MAX_BODY_SIZE

    def __init__(self, **data: Any) -> None:  # keyword arguments, validated by the base
        super().__init__(**data)

    @field_validator("url")
    @classmethod
    def _check_urls(cls, value: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        urls = value if isinstance(value, list) else [value]
        if not urls:
            raise ValueError("give at least one URL")
        for url in urls:
            text = url.get_secret_value()
            if not text.startswith(("redis://", "rediss://")):
                raise ValueError(
                    f"{redact_url(text)!r} is not a Redis URL: use "
                    "redis://:password@host:6379/0 (or rediss:// for TLS)"
                )
        return value

    @model_validator(mode="after")
    def _check_cluster_urls(self) -> Self:
        if not self.cluster:
            return self
        schemes, credentials = set(), set()
        for url in self.urls:
            parts = urlsplit(url)
            schemes.add(parts.scheme)
            credentials.add((parts.username, parts.password))
            database = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
            if database != "0":
                raise ValueError(
                    f"{redact_url(url)!r} selects database {database!r}: a Redis Cluster "
                    "has only database 0 (end the URL with /0 or nothing)"
                )
        if len(schemes) > 1:
            raise ValueError(
                "cluster URLs mix redis:// and rediss://: one cluster speaks one of them"
            )
        if len(credentials) > 1:
            raise ValueError(
                "cluster URLs carry different credentials: the client logs in to every "
                "node with the first URL's, so give them all the same"
            )
        return self

    @field_validator("queue")
    @classmethod
    def _check_queues(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("give at least one queue name")
        for name in names:
            if not name or any(c in name for c in "{}"):
                raise ValueError(
                    f"queue name {name!r} must be non-empty and without braces (the queue "
                    "name is the hash tag of its keys: foxwork:{queue})"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"queue names must be unique; got {names}")
        return value

    @field_validator("key_prefix", "group", "consumer")
    @classmethod
    def _check_names(cls, value: str) -> str:
        if not value or any(c in value for c in "{} "):
            raise ValueError("must be non-empty, without braces or spaces")
        return value

    # -- derived -----------------------------------------------------------------------

    def keys(self, queue: str) -> StreamKeys:
        """The keys of `queue`."""
        stream = f"{self.key_prefix}:{{{queue}}}"
        return StreamKeys(
            queue=queue, stream=stream, retry=f"{stream}:retry", dead_letter=f"{stream}:dlq"
        )
