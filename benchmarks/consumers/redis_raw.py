"""Raw redis-py asyncio: the floor. XREADGROUP COUNT 256, decode each body, XACK the batch.

One loop: read up to `--prefetch` new entries of the stream (`XREADGROUP ... COUNT 256
BLOCK 1000 STREAMS key >`), `json.loads` each entry's `body` field, then acknowledge the
whole batch with one `XACK key group id...`. No framework code at all. With `--xdel` the
batch is also deleted (`XDEL`, in one MULTI with the XACK), as foxwork does with every
settled entry.

The stream, its group and its entries are foxwork's (`foxwork:{Q}`, group `foxwork`; see
`foxwork.backends.redis.entry`), so that this loop and foxwork drain the very same data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import redis
from redis.asyncio import Redis

from foxwork.backends.redis import RedisStreamsConfig
from foxwork.backends.redis.entry import encode
from foxwork.message import MessageProperties

from . import redis_common
from .redis_common import Probe, Stopper

NAME = "redis_raw"
GROUP = "foxwork"
#: Entries added per pipeline when filling.
FILL_BATCH = 1_000


def stream_of(queue: str) -> str:
    return RedisStreamsConfig(url="redis://127.0.0.1/", queue=queue).keys(queue).stream


def fill(url: str, queue: str, count: int) -> None:
    """foxwork's entries (a JSON body, its content type and message id), as
    `RedisStreamsBackend.publish` writes them; the group is created first, from id 0."""
    from .._support import make_body

    client = redis.Redis.from_url(url)
    stream = stream_of(queue)
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise
    for first in range(0, count, FILL_BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + FILL_BATCH, count)):
            properties = MessageProperties(content_type="application/json", message_id=str(n))
            pipe.xadd(stream, encode(make_body(n), properties))  # type: ignore[arg-type]
        pipe.execute()
    if client.xlen(stream) != count:
        raise RuntimeError(f"{stream} holds {client.xlen(stream)} entries, not {count}")
    client.close()


def settled(client: redis.Redis, queue: str) -> bool:
    pending: Any = client.xpending(stream_of(queue), GROUP)
    return int(pending["pending"]) == 0


async def consume(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    stopper.action = lambda: loop.call_soon_threadsafe(done.set)
    client = Redis.from_url(args.url)
    stream = stream_of(args.queue)
    streams: dict[Any, Any] = {stream: ">"}
    seen = probe.seen
    loads = json.loads
    try:
        while not done.is_set() and not stopper.requested.is_set():
            reply: Any = await client.xreadgroup(
                GROUP, "raw", streams, count=args.prefetch, block=1000
            )
            if not reply:
                continue
            ids = []
            for entry_id, fields in reply[0][1]:
                loads(fields[b"body"])
                seen()
                ids.append(entry_id)
            if args.xdel:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xack(stream, GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    await pipe.execute()
            else:
                await client.xack(stream, GROUP, *ids)
    finally:
        await client.aclose()


def run(args: argparse.Namespace, probe: Probe, stopper: Stopper) -> None:
    asyncio.run(consume(args, probe, stopper))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--xdel", action="store_true", help="XDEL each batch with its XACK")


if __name__ == "__main__":
    sys.exit(redis_common.main(sys.modules[__name__], add_arguments))
