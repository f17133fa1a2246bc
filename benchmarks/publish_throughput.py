"""Publishing throughput on a real broker, side by side in one run: raw aio-pika with 1,000
confirms in flight against `Publisher.publish_many` (max_in_flight=1000), and the spool:
`publish_many` into a spool while the broker cannot be reached (appends with group
commit), then the spool drained to the broker (`Drainer`, as `foxwork spool drain`).

    python -m benchmarks.publish_throughput [-n 50000] [--repeat 5] [--url URL] [--dir PATH]

Each round publishes N persistent 120-byte messages, mandatory, with confirms, to a fresh
durable queue (checked to hold N afterwards, then deleted), once per candidate, in turn;
the ratios are taken within each round. Prints the median of each rate with its range,
and the median ratios: foxwork / raw (target >= 0.9), drain / foxwork live publishing
(target >= 0.8); spool appends per second (target >= 20,000). The spool lives in a
temporary directory on the file system of /tmp (or --dir): measure on the disk it will
live on. Results go to benchmarks/results/publish_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika

from foxwork import OutboundMessage, Publisher, SpoolConfig
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.spool import Drainer, Spool

from . import _support as s

#: Confirms awaited at once, by every candidate.
IN_FLIGHT = 1_000


def _unreachable_url() -> str:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


async def _raw(url: str, queue: str, count: int) -> float:
    """aio-pika alone: a sliding window of IN_FLIGHT publishes awaiting their confirms."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(n: int) -> None:
            try:
                await exchange.publish(
                    aio_pika.Message(
                        s.make_body(n),
                        content_type="application/octet-stream",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=f"raw-{n}",
                    ),
                    routing_key=queue,
                    mandatory=True,
                )
            finally:
                slots.release()

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for n in range(count):
                await slots.acquire()
                group.create_task(one(n))
        return time.perf_counter() - began
    finally:
        await connection.close()


def _items(count: int, queue: str, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(s.make_body(n), queue, message_id=f"{tag}-{n}") for n in range(count)]


async def _foxwork(url: str, queue: str, count: int) -> float:
    """`Publisher.publish_many` with max_in_flight=IN_FLIGHT."""
    items = _items(count, queue, "fox")
    async with await Publisher.connect(url) as publisher:
        began = time.perf_counter()
        outcomes = await publisher.publish_many(items, max_in_flight=IN_FLIGHT)
        elapsed = time.perf_counter() - began
    failed = [o for o in outcomes if not o.confirmed]
    if failed:
        raise RuntimeError(f"{len(failed)} not confirmed, e.g. {failed[0].error!r}")
    return elapsed


async def _spool_append(directory: Path, queue: str, count: int) -> float:
    """`publish_many` into a spool, the broker unreachable: every message is appended
    (IN_FLIGHT at once, so group-committed) and fsynced before its publish returns."""
    items = _items(count, queue, "spool")
    spool = SpoolConfig(directory=directory, max_bytes=1 << 32)
    async with await Publisher.connect(_unreachable_url(), spool=spool) as publisher:
        began = time.perf_counter()
        outcomes = await publisher.publish_many(items, max_in_flight=IN_FLIGHT)
        elapsed = time.perf_counter() - began
    if not all(o.spooled for o in outcomes):
        raise RuntimeError("a message was not spooled")
    return elapsed


async def _drain(url: str, directory: Path, count: int) -> float:
    """The spool drained to the broker by a `Drainer` (as `foxwork spool drain` does)."""
    spool = await Spool.open(SpoolConfig(directory=directory, max_bytes=1 << 32))
    try:
        if spool.depth != count:
            raise RuntimeError(f"the spool holds {spool.depth}, not {count}")
        backend = RabbitMQBackend(url=url, queue=[])
        await backend.connect()
        try:
            began = time.perf_counter()
            sent = await Drainer(spool, backend).drain()
            elapsed = time.perf_counter() - began
        finally:
            await backend.close()
    finally:
        await spool.close()
    if sent != count:
        raise RuntimeError(f"drained {sent}, not {count}")
    return elapsed


async def _in_fresh_queue(
    url: str, count: int, run: Callable[[str], Awaitable[float]], *, expect: bool = True
) -> float:
    """Declare a fresh durable queue, `run(queue)`, check it holds `count`, delete it."""
    queue = s.unique_queue("publish")
    async with s.amqp(url) as channel:
        await channel.declare_queue(queue, durable=True)
        try:
            elapsed = await run(queue)
            if expect and (held := await s.ready_count(channel, queue)) != count:
                raise RuntimeError(f"{queue} holds {held} messages, not {count}")
        finally:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
    return elapsed


async def _round(url: str, count: int, directory: Path | None) -> dict[str, float]:
    """One round: every candidate once, in turn; rates in messages per second."""
    rates: dict[str, float] = {}
    rates["raw"] = count / await _in_fresh_queue(url, count, lambda q: _raw(url, q, count))
    rates["foxwork"] = count / await _in_fresh_queue(url, count, lambda q: _foxwork(url, q, count))
    with tempfile.TemporaryDirectory(dir=directory) as temporary:
        spool = Path(temporary) / "spool"

        async def spool_then_drain(queue: str) -> float:
            rates["spool_append"] = count / await _spool_append(spool, queue, count)
            return await _drain(url, spool, count)

        rates["drain"] = count / await _in_fresh_queue(url, count, spool_then_drain)
    rates["foxwork_vs_raw"] = rates["foxwork"] / rates["raw"]
    rates["drain_vs_live"] = rates["drain"] / rates["foxwork"]
    return rates


async def bench(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    count = args.messages
    rounds: list[dict[str, float]] = []
    for number in range(1, args.repeat + 1):
        rates = await _round(broker.url, count, args.dir)
        s.log(
            f"round {number}: raw {rates['raw']:,.0f}/s, publish_many {rates['foxwork']:,.0f}/s "
            f"({rates['foxwork_vs_raw']:.2f}x), spool append {rates['spool_append']:,.0f}/s, "
            f"drain {rates['drain']:,.0f}/s ({rates['drain_vs_live']:.2f}x live)"
        )
        rounds.append(rates)
    return {
        "meta": {
            "messages": count,
            "body_bytes": s.BODY_SIZE,
            "in_flight": IN_FLIGHT,
            "repeat": args.repeat,
            "rabbitmq": await s.server_version(broker.url),
            "versions": s.versions(),
            "machine": s.machine(),
        },
        "rounds": rounds,
    }


ROWS = [
    ("raw aio-pika, 1,000 in flight", "raw", "msg/s"),
    ("Publisher.publish_many", "foxwork", "msg/s"),
    ("publish_many / raw", "foxwork_vs_raw", "x"),
    ("spool append (publish_many, broker down)", "spool_append", "msg/s"),
    ("spool drain to the broker", "drain", "msg/s"),
    ("drain / publish_many", "drain_vs_live", "x"),
]


def summary(data: dict[str, Any]) -> str:
    rounds = data["rounds"]
    rows = []
    for label, key, unit in ROWS:
        values = [r[key] for r in rounds]
        fmt = "{:.2f}" if unit == "x" else "{:,.0f}"
        rows.append(
            [
                label,
                fmt.format(s.median(values)),
                f"{fmt.format(min(values))} - {fmt.format(max(values))}",
                unit,
            ]
        )
    return s.table(["", "median", f"range ({len(rounds)} rounds)", ""], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    parser.add_argument("--dir", type=Path, help="where to put the spool (default: /tmp)")
    parser.add_argument("--output", type=Path, help="the JSON results' path")
    args = parser.parse_args()
    with s.broker(args.url) as broker:
        data = asyncio.run(bench(args, broker))
    print(
        f"\n{args.messages:,} persistent {s.BODY_SIZE} B messages, confirms, mandatory; "
        f"RabbitMQ {data['meta']['rabbitmq']}, {data['meta']['machine']['cpus']} CPUs, "
        f"load {data['meta']['machine']['load_average']}\n"
    )
    print(summary(data))
    s.save("publish_throughput", data, args.output)


if __name__ == "__main__":
    main()
