"""`RedisStreamsBackend`: foxwork's promises on Redis Streams, with redis-py's asyncio client.

Each queue is a stream read by one consumer group (keys: `RedisStreamsConfig`; entry
fields: `foxwork.backends.redis.entry`). How each promise is kept:

- Settlements are one atomic script per queue (`settle.py`), on a single server as in a
  Redis Cluster (`cluster=True`: a queue's keys share a hash tag, so its script runs on
  the queue's master; clients: `connection.py`).
- Ack: XACK, then XDEL, in one script, coalesced: the acks made meanwhile go together in
  the next script call per queue, sent by a task of the backend (`flush()` waits for it).
  A settled entry leaves the stream, so the stream holds only what is waiting or in
  flight (and `max_len` trims only those). An entry stays held (never taken over by this
  process) until its settlement went through. A failed settlement is tried again with
  backoff and, when it still fails, logged and counted (`settle_failures`), never
  raised: the entry stays pending and is delivered again.
- Nack with requeue: a copy of the entry, marked `redelivered`, is added at the end of the
  stream and the original acked and deleted, in one script (a pending entry cannot be
  made readable again in place). Nack without requeue: a copy goes to the dead-letter
  stream with RabbitMQ's dead-letter headers (`x-death`, reason `rejected`), in the same
  script as the XACK, written before it.
- Retries: `publish_retry` adds the copy to the queue's retry set, due after exactly its
  delay (no tiers: the set is ordered by due time); a mover puts it back (`retry.py`).
  Then the message acks its original: at-least-once, as on RabbitMQ.
- Dead letters: `publish_dead_letter` XADDs the copy to `foxwork:{Q}:dlq`; confirmed
  when Redis returned its id.
- Crash loops: an entry whose consumer died stays pending; after `claim_idle` another
  consumer (or this one, restarted under the same name) takes it over, and its delivery
  count is `Message.delivery_count`. Past `delivery_limit` deliveries it goes to the
  dead-letter stream with reason `delivery_limit`, in one script with its XACK.
- Close: consumers stop; entries read but not handed to the pool go back (as a nack with
  requeue). Entries still in the pool stay pending in Redis: settled later if the
  connection lives, else taken over after `claim_idle`. Nothing is handed back in bulk.
- A dead connection is reported to the connection-lost callbacks (`ResilientBackend`
  reconnects); a consumer group that vanished (`FLUSHALL`, a deleted key) is created
  again at once, with an error in the log.
- Redis' exceptions never escape this package: they become `BackendError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from ... import wire
from ...errors import (
    BackendError,
    ConfigurationError,
    ConnectionLost,
    PublishNotConfirmed,
    TopologyConflict,
)
from ...message import Message, MessageProperties
from .._backoff import Backoff
from ..base import Backend, Consumer, Intake, copy_properties, retry_properties
from . import entry
from .config import RedisStreamsConfig, StreamKeys
from .connection import CONNECTION_ERRORS, Client, close_client, describe, open_client
from .consumer import QueueState, RedisConsumer
from .retry import RetryMover, now_ms, pack
from .settle import SETTLE, settle_args

__all__ = ["RedisStreamsBackend"]

logger = logging.getLogger("foxwork.backends.redis")

#: Tries of one settlement (a script with its XACK) before it is counted as failed.
SETTLE_ATTEMPTS = 4
#: Seconds `close()` waits for the acks handed over so far.
CLOSE_FLUSH_TIMEOUT = 5.0
#: Waits between those tries.
SETTLE_BACKOFF = Backoff(initial=0.05, max=1.0, multiplier=4.0, jitter=0.1)


class _Delivery:
    """`Message.raw` of a delivery: where it came from, and its fields as stored."""

    __slots__ = ("entry_id", "fields", "state")

    def __init__(self, state: QueueState, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.state = state
        self.entry_id = entry_id
        self.fields = fields


def _death_headers(
    headers: Any, *, queue: str, reason: str, deliveries: int | None = None
) -> dict[str, Any]:
    """The headers RabbitMQ's dead-lettering would add, for a dead letter Redis made."""
    result = dict(headers)
    death = {
        "queue": queue,
        "reason": reason,
        "count": 1,
        "exchange": "",
        "routing-keys": [queue],
        "time": datetime.now(UTC).isoformat(),
    }
    previous = result.get(wire.DEATH_HISTORY)
    result[wire.DEATH_HISTORY] = [death, *(previous if isinstance(previous, list) else [])]
    for end in ("first", "last"):
        if end == "last" or f"x-{end}-death-queue" not in result:
            result[f"x-{end}-death-exchange"] = ""
            result[f"x-{end}-death-queue"] = queue
            result[f"x-{end}-death-reason"] = reason
    if deliveries is not None:
        result[wire.DELIVERY_COUNT] = deliveries
    return result


class RedisStreamsBackend(Backend):
    """A backend on Redis Streams (see the module docstring for what it promises).

    Args:
        config: the settings; or give them as keyword arguments (`url=..., queue=...`).

    Example:
        backend = RedisStreamsBackend(url="redis://127.0.0.1:6379/0", queue="orders")
        await pool.run(backend)
    """

    def __init__(self, config: RedisStreamsConfig | None = None, **settings: Any) -> None:
        if config is not None and settings:
            raise ConfigurationError(
                "give either config=RedisStreamsConfig(...) or keyword settings, not both"
            )
        self.config = config if config is not None else RedisStreamsConfig(**settings)
        self.queues = self.config.queues
        self._client: Client | None = None
        self._settle_script: AsyncScript | None = None
        self._retired: list[Client] = []
        # In a cluster, redis-py fails a command past max_connections instead of waiting
        # for a free connection as a single server's blocking pool does: the backend's own
        # commands (settlements, publishes) wait here instead.
        self._slots = asyncio.Semaphore(self.config.max_connections)
        self._url = ""
        self._connected = False
        self._states: dict[str, QueueState] = {}
        self._consumers: list[RedisConsumer] = []
        self._movers: dict[str, RetryMover] = {}
        self._acks: list[_Delivery] = []
        self._ack_task: asyncio.Task[None] | None = None
        #: Settlements that failed after every try (the entry is delivered again).
        self.settle_failures = 0

    def __repr__(self) -> str:
        return f"<RedisStreamsBackend url={self._url!r} connected={self._connected}>"

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def client(self) -> Client:
        """The live client (a `RedisCluster` with `cluster=True`). Raises `ConnectionLost`
        when there is none."""
        if self._client is None:
            raise ConnectionLost("RedisStreamsBackend is not connected: call connect() first")
        return self._client

    async def connect(self) -> None:
        if self._connected:
            return
        await self._drop_client()
        client = await open_client(self.config)
        self._settle_script = client.register_script(SETTLE)
        self._client, self._url, self._connected = client, describe(client), True

    def lost(self, exc: BaseException) -> None:
        """Report a dead connection (once) to the connection-lost callbacks."""
        if self._connected:
            self._connected = False
            self._notify_connection_lost(ConnectionLost(f"connection to Redis lost: {exc}"))

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        for mover in self._movers.values():
            await mover.stop()
        self._movers.clear()
        await self.flush(CLOSE_FLUSH_TIMEOUT)
        self._connected = False
        await self._drop_client()

    async def _drop_client(self) -> None:
        # A command under way on a client being dropped (a consumer's read; in a cluster,
        # redis-py trying it again) can open a connection after the client was closed:
        # so a dropped client is closed once more at the next connect or close.
        client, self._client = self._client, None
        retired, self._retired = self._retired, []
        for old in retired:
            await close_client(old)
        if client is not None:
            await close_client(client)
            self._retired.append(client)

    def _require_connection(self) -> Client:
        if not self._connected:
            raise ConnectionLost("RedisStreamsBackend is not connected: call connect() first")
        return self.client

    @contextlib.asynccontextmanager
    async def _mapped(self, what: str) -> AsyncIterator[None]:
        """Redis' errors → `BackendError`s (a dead connection → `ConnectionLost`)."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"{what}: connection to Redis lost: {exc}") from exc
        except RedisError as exc:
            raise BackendError(f"{what}: {exc}") from exc

    def _state(self, queue: str) -> QueueState:
        state = self._states.get(queue)
        if state is None:
            state = self._states[queue] = QueueState(self.config.keys(queue))
        return state

    # -- topology ------------------------------------------------------------------------

    async def declare(self, queue: str) -> None:
        client = self._require_connection()
        keys = self._state(queue).keys
        async with self._mapped(f"declaring queue {queue!r}"):
            for key, kind in ((keys.stream, b"stream"), (keys.retry, b"zset")):
                found = await client.type(key)
                if found not in (b"none", kind, kind.decode()):
                    raise _wrong_type(key, kind.decode(), found)
            await self._create_group(client, keys)

    async def _create_group(self, client: Client, keys: StreamKeys) -> None:
        # From "0", not "$": entries added before the group existed are delivered too.
        try:
            await client.xgroup_create(keys.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return
            if str(exc).startswith("WRONGTYPE"):
                raise _wrong_type(keys.stream, "stream", "another type") from exc
            raise

    async def recreate_group(self, keys: StreamKeys) -> None:
        logger.error(
            "consumer group %r of stream %r is gone (FLUSHALL, or the key was deleted): "
            "creating it again; entries it had delivered and not settled are no longer "
            "known to Redis",
            self.config.group,
            keys.stream,
        )
        await self._create_group(self.client, keys)

    # -- consuming -----------------------------------------------------------------------

    async def consume(self, queue: str, intake: Intake, *, prefetch: int) -> Consumer:
        self._require_connection()
        state = self._state(queue)
        mover = self._movers.get(queue)
        if mover is None or not mover.active:
            self._movers[queue] = RetryMover(lambda: self.client, state.keys, self.config.max_len)
        consumer = RedisConsumer(self, state, intake, prefetch)
        self._consumers = [c for c in self._consumers if c.active]
        self._consumers.append(consumer)
        return consumer

    def message_of(
        self, state: QueueState, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> Message[Any]:
        decoded = entry.decode(fields)
        message: Message[Any] = Message(
            decoded.body,
            settler=self,
            properties=decoded.properties,
            queue=state.keys.queue,
            redelivered=deliveries > 0 or decoded.redelivered,
            came_back_unsettled=deliveries > 0,
            delivery_count=max(0, deliveries - 1),
            max_body_size=self.config.max_body_size,
        )
        if decoded.poison is not None:
            message.poison = "; ".join(p for p in (decoded.poison, message.poison) if p)
            logger.warning(
                "entry %s of %r cannot be read as a message: %s",
                entry_id.decode(),
                state.keys.stream,
                decoded.poison,
            )
        message.raw = _Delivery(state, entry_id, fields)
        return message

    async def dead_letter_crash_loop(
        self, state: QueueState, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        decoded = entry.decode(fields)
        headers = _death_headers(
            decoded.properties.headers,
            queue=state.keys.queue,
            reason="delivery_limit",
            deliveries=deliveries - 1,
        )
        logger.error(
            "entry %s of %r was delivered %d times without being settled "
            "(delivery_limit=%s): its worker process probably dies on it; dead-lettering it",
            entry_id.decode(),
            state.keys.stream,
            deliveries - 1,
            self.config.delivery_limit,
        )
        copy = entry.encode(decoded.body, decoded.properties.with_headers(headers))
        await self._settle(
            f"dead-lettering entry {entry_id.decode()}",
            state.keys,
            [entry_id],
            copy=copy,
            target=state.keys.dead_letter,
        )

    # -- settlement ----------------------------------------------------------------------

    def _held(self, message: Message[Any]) -> _Delivery | None:
        delivery = message.raw
        if not isinstance(delivery, _Delivery) or delivery.entry_id not in delivery.state.in_flight:
            logger.info("message %s is not held by this backend; not settled", message.id)
            return None
        return delivery

    async def _settle(
        self,
        what: str,
        keys: StreamKeys,
        ids: list[bytes],
        *held: _Delivery,
        copy: Mapping[bytes, bytes] | None = None,
        target: str | None = None,
    ) -> bool:
        """Ack and delete `ids` of one queue, after adding `copy` to `target` (a stream of
        the queue), in one script (`settle.py`), tried again with backoff; False (logged,
        counted) if it failed.

        The entries `held` stay held by this process until then (so that this process does
        not take them over as abandoned while a reconnect is under way), and are released
        either way: when the settlement failed, they are delivered again.
        """
        error: BaseException | None = None
        try:
            for attempt in range(1, SETTLE_ATTEMPTS + 1):
                try:
                    # `self.client` raises ConnectionLost while a reconnect is under way.
                    client, script = self.client, self._settle_script
                    assert script is not None  # set with the client
                    async with self._slots:
                        await script(
                            keys=[keys.stream, target or keys.stream],
                            args=settle_args(self.config.group, self.config.max_len, ids, copy),
                            client=client,
                        )
                    return True
                except (*CONNECTION_ERRORS, ConnectionLost) as exc:
                    error = exc
                    if attempt < SETTLE_ATTEMPTS:
                        await asyncio.sleep(SETTLE_BACKOFF.delay(attempt))
                except RedisError as exc:
                    error = exc
                    break
        finally:
            for delivery in held:
                delivery.state.release(delivery.entry_id)
        self.settle_failures += 1
        logger.warning(
            "%s failed (%s: %s); the entry stays pending and is delivered again",
            what,
            type(error).__name__,
            error,
        )
        return False

    async def ack_message(self, message: Message[Any]) -> None:
        # Coalesced: acks made in the same loop turns go in one script call per queue (XACK
        # and XDEL of all their ids); `flush()` waits for them.
        delivery = self._held(message)
        if delivery is None:
            return
        self._acks.append(delivery)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._send_acks(), name="foxwork-redis-acks")

    async def _send_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            by_queue: dict[StreamKeys, list[_Delivery]] = {}
            for delivery in batch:
                by_queue.setdefault(delivery.state.keys, []).append(delivery)
            await asyncio.gather(*(self._ack_all(keys, held) for keys, held in by_queue.items()))

    async def _ack_all(self, keys: StreamKeys, held: list[_Delivery]) -> None:
        ids = [delivery.entry_id for delivery in held]
        await self._settle(f"acking {len(ids)} message(s) of {keys.queue!r}", keys, ids, *held)

    async def flush(self, timeout: float | None = None) -> bool:
        task = self._ack_task
        if task is None or task.done():
            return True
        await asyncio.wait([task], timeout=timeout)
        return task.done()

    async def nack_message(self, message: Message[Any], *, requeue: bool) -> None:
        delivery = self._held(message)
        if delivery is None:
            return
        keys, entry_id = delivery.state.keys, delivery.entry_id
        if requeue:
            target = keys.stream
            copy = {**delivery.fields, entry.REDELIVERED: b"1"}
        else:
            target = keys.dead_letter
            headers = _death_headers(message.headers, queue=keys.queue, reason="rejected")
            copy = entry.encode(message.body, message.properties.with_headers(headers))
        await self._settle(
            f"nacking message {message.id}", keys, [entry_id], delivery, copy=copy, target=target
        )

    # -- publishing ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _publishing(self, key: str, what: str) -> AsyncIterator[Client]:
        """The client, for writing `what` to `key`: refused → `PublishNotConfirmed`."""
        client = self._require_connection()
        async with self._slots, self._mapped(f"writing {what} to {key!r}"):
            try:
                yield client
            except ResponseError as exc:
                raise PublishNotConfirmed(f"{key!r} refused {what}: {exc}") from exc

    async def _append(
        self, key: str, fields: dict[bytes, bytes], what: str, *, nomkstream: bool = False
    ) -> Any:
        """XADD (trimmed to `max_len`); the new entry's id, or None (no such stream)."""
        async with self._publishing(key, what) as client:
            return await client.xadd(
                key,
                fields,  # type: ignore[arg-type]
                maxlen=self.config.max_len,
                approximate=True,
                nomkstream=nomkstream,
            )

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        properties: MessageProperties | None = None,
        *,
        exchange: str = "",
    ) -> None:
        self._require_connection()
        if exchange:
            raise PublishNotConfirmed(
                f"Redis has no exchanges: publish to queue {routing_key!r} with exchange='' "
                f"(got exchange={exchange!r})"
            )
        stream = self._state(routing_key).keys.stream
        fields = entry.encode(body, properties or MessageProperties())
        if await self._append(stream, fields, "an entry", nomkstream=True) is None:
            # As a mandatory publish to a queue that does not exist: not confirmed.
            raise PublishNotConfirmed(
                f"unroutable: stream {stream!r} does not exist; declare queue {routing_key!r} first"
            )

    async def publish_retry(self, message: Message[Any], *, delay: float) -> None:
        key = self._state(message.queue).keys.retry
        fields = entry.encode(message.body, retry_properties(message))
        due = now_ms() + wire.seconds_to_ms(min(delay, wire.MAX_RETRY_DELAY))
        async with self._publishing(key, f"the retry copy of message {message.id}") as client:
            added = await client.zadd(key, {pack(fields): due})
        if added != 1:
            raise PublishNotConfirmed(f"{key!r} did not take the retry copy of {message.id}")
        mover = self._movers.get(message.queue)
        if mover is not None:
            mover.wake()

    async def publish_dead_letter(self, message: Message[Any], headers: dict[str, Any]) -> None:
        key = self._state(message.queue).keys.dead_letter
        fields = entry.encode(message.body, copy_properties(message, headers))
        if not await self._append(key, fields, f"the dead letter of message {message.id}"):
            raise PublishNotConfirmed(f"{key!r} did not take the dead letter of {message.id}")

    # -- reporting -----------------------------------------------------------------------

    async def queue_depth(self, queue: str) -> int | None:
        """The entries of `queue` waiting to be delivered to the consumer group: the group's
        `lag` (XINFO GROUPS, Redis 7+), at most the stream's length (Redis 7.0 still counts
        entries `max_len` trimmed away). When Redis cannot tell the lag (an entry not yet
        delivered was deleted, or Redis 6), the stream's length minus the group's pending
        entries: settled entries are deleted, so the stream holds only waiting and pending
        ones (exact while no pending entry was trimmed). In-flight entries and retries in
        the retry set are not counted. None when the stream or its group does not exist.
        """
        client = self._require_connection()
        stream = self.config.keys(queue).stream
        async with self._slots, self._mapped(f"asking for the depth of {queue!r}"):
            try:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xinfo_groups(stream)
                    pipe.xlen(stream)
                    groups, length = await pipe.execute()
            except ResponseError as exc:
                if "no such key" in str(exc):
                    return None
                raise
        group = self.config.group.encode()
        for info in groups:
            if info["name"] in (group, self.config.group):
                lag = info.get("lag")
                if lag is None:
                    return max(int(length) - int(info["pending"]), 0)
                return min(int(lag), int(length))
        return None

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "url": self._url,
            "cluster": self.config.cluster,
            "group": self.config.group,
            "consumer": self.config.consumer,
            "consumers": {c.queue: c.active for c in self._consumers},
            "in_flight": {q: len(s.in_flight) for q, s in self._states.items()},
            "settle_failures": self.settle_failures,
        }


def _wrong_type(key: str, expected: str, found: Any) -> BackendError:
    shown = found.decode() if isinstance(found, bytes) else str(found)
    return TopologyConflict(
        f"Redis key {key!r} is a {shown}, not a {expected}: delete it, or give the backend "
        "another key_prefix"
    )
