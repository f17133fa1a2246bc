"""Opening redis-py's asyncio client for a `RedisStreamsConfig`, in one place: a single
server, or a Redis Cluster (`cluster=True`).

- Single server: the URLs are tried in order; the first that answers a PING is used,
  through a blocking pool of `max_connections` (past it a command waits for a free
  connection instead of failing with "Too many connections"). A server that turns out to be
  a Redis Cluster node is refused with a `ConfigurationError` (its keys would answer MOVED).
- Cluster: the URLs are startup nodes, any of which is enough; the client learns the other
  masters from the cluster and sends each command to the master of its key's slot. Every
  key of a queue shares one hash tag (`foxwork:{Q}...`), so a queue lives on one master and
  the settlement scripts, which touch several of its keys, run there atomically.
  Credentials, TLS and the query string options come from the first URL.

Anything else needing a client of the same Redis (the dead-letter tooling) opens it here:

    client = await open_client(config)  # Redis or RedisCluster, answered a PING
    try:
        ...
    finally:
        await close_client(client)  # not client.aclose(): see close_client
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..._redact import redact_url
from ...errors import ConfigurationError, ConnectionLost
from .config import RedisStreamsConfig

__all__ = [
    "CONNECTION_ERRORS",
    "Client",
    "close_client",
    "describe",
    "node_connections",
    "open_client",
]

#: redis-py's client of one server or of a cluster: both have every command foxwork uses.
Client: TypeAlias = Redis | RedisCluster

#: Errors that mean the connection is gone (in a cluster: or the master of a slot is, or
#: the slot is moving): connecting again may help.
CONNECTION_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)

#: Tries of a cluster command (redis-py finds the slot's master again between them) before
#: its error is raised, and the waits between them: a dead master surfaces within about a
#: second, and the reconnect (`ResilientBackend`) takes it from there.
CLUSTER_RETRIES = 3
CLUSTER_BACKOFF = ExponentialBackoff(cap=0.5, base=0.05)

_NOT_A_CLUSTER = "Cluster mode is not enabled"


async def open_client(config: RedisStreamsConfig) -> Client:
    """A client of the Redis that `config` names, which answered a PING.

    Raises:
        ConnectionLost: no URL answered (each one's error, the URL redacted).
        ConfigurationError: the server is not in the mode `config.cluster` says.
    """
    if config.cluster:
        return await _open_cluster(config)
    errors = []
    for url in config.urls:
        try:
            return await _open_server(url, config)
        except (RedisError, OSError, TimeoutError) as exc:
            errors.append(f"{redact_url(url)}: {type(exc).__name__}: {exc}")
    raise ConnectionLost("cannot connect to Redis: " + "; ".join(errors))


async def _open_server(url: str, config: RedisStreamsConfig) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=config.max_connections,
        timeout=config.connect_timeout,
        socket_connect_timeout=config.connect_timeout,
        health_check_interval=config.health_check_interval,
    )
    client = Redis.from_pool(pool)
    try:
        async with asyncio.timeout(config.connect_timeout):
            await client.ping()
            cluster_enabled = await _cluster_enabled(client)
    except BaseException:
        await close_client(client)
        raise
    if cluster_enabled:
        await close_client(client)
        raise ConfigurationError(
            f"{redact_url(url)} is a Redis Cluster node: give RedisStreamsConfig(cluster=True) "
            "(its URLs are then the cluster's startup nodes)"
        )
    return client


async def _cluster_enabled(client: Redis) -> bool:
    try:
        info: Any = await client.info("cluster")
    except RedisError:
        return False  # INFO refused (renamed or not permitted): nothing to tell
    return bool(info.get("cluster_enabled"))


async def _open_cluster(config: RedisStreamsConfig) -> RedisCluster:
    urls = config.urls
    settings: dict[str, Any] = dict(parse_url(urls[0]))
    if settings.pop("connection_class", None) is SSLConnection:
        settings["ssl"] = True
    settings.pop("db", None)  # 0: the config refuses any other
    nodes = [ClusterNode(parsed["host"], parsed["port"]) for parsed in map(parse_url, urls)]
    settings.update(
        host=None,
        startup_nodes=nodes,
        # Per master. Commands of the backend beyond it wait (the backend limits them):
        # redis-py's cluster client would fail them instead.
        max_connections=node_connections(config),
        socket_connect_timeout=config.connect_timeout,
        # As a single server's: a blocking XREADGROUP may wait block_ms for entries.
        socket_timeout=None,
        health_check_interval=config.health_check_interval,
        retry=Retry(CLUSTER_BACKOFF, CLUSTER_RETRIES),
    )
    client = RedisCluster(**settings)
    try:
        async with asyncio.timeout(config.connect_timeout):
            await client.initialize()
            await client.ping()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        await close_client(client)
        shown = ", ".join(redact_url(url) for url in urls)
        if _NOT_A_CLUSTER in str(exc):
            raise ConfigurationError(
                f"{shown}: not a Redis Cluster node (cluster mode is not enabled on it): "
                "leave RedisStreamsConfig(cluster=False) for a single server"
            ) from None
        raise ConnectionLost(
            f"cannot connect to the Redis Cluster at {shown}: {type(exc).__name__}: {exc}"
        ) from exc
    return client


def node_connections(config: RedisStreamsConfig) -> int:
    """Connections to each master of a cluster at most: `max_connections` for the backend's
    settlements and publishes (it makes more wait), and one for each queue's consumer and
    one for its retry mover (each sends one command at a time)."""
    return config.max_connections + 2 * len(config.queues)


async def close_client(client: Client) -> None:
    """Close `client` and every connection it holds; errors are ignored (it is going)."""
    with contextlib.suppress(RedisError, RedisClusterException, OSError):
        await client.aclose()
        if isinstance(client, RedisCluster):
            # `RedisCluster.aclose()` does nothing while the client waits to look the
            # cluster up again (after any connection error): its sockets would be left
            # open. Its nodes are disconnected here either way (again: a no-op).
            await client.nodes_manager.aclose()
            await client.nodes_manager.aclose("startup_nodes")


def describe(client: Client) -> str:
    """Where `client` connects to, without credentials: `redis://host:port/db`, or for a
    cluster `redis-cluster://host:port,...` (its masters, as it knows them)."""
    if isinstance(client, RedisCluster):
        masters = sorted(node.name for node in client.get_primaries())
        return "redis-cluster://" + ",".join(masters)
    settings = client.connection_pool.connection_kwargs
    scheme = "rediss" if client.connection_pool.connection_class is SSLConnection else "redis"
    return f"{scheme}://{settings.get('host')}:{settings.get('port')}/{settings.get('db', 0)}"
