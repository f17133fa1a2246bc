"""FastStream's RabbitMQ subscriber, with its defaults except the prefetch.

The prefetch is set the way FastStream documents it, `RabbitBroker(default_channel=
Channel(prefetch_count=...))`; the acknowledgement policy is FastStream's default
(`AckPolicy.REJECT_ON_ERROR`: ack after the handler returns, one ack per message). The
handler takes the body as `dict`, so FastStream decodes the JSON (its content type says so)
and checks the type, as a FastStream user writes it. The queue exists already, so the
subscriber binds to it without declaring (`RabbitQueue(..., declare=False)`).

One default is changed unless `--access-log` is given: FastStream writes two INFO lines to
stdout for every message ("Received", "Processed"), which no other candidate does; the
broker is built with `logger=None`. `--access-log` keeps FastStream's default logger.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

from ._common import Stop, main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="keep FastStream's per-message access log (its default)",
    )


async def start(args: argparse.Namespace) -> Stop:
    options: dict[str, Any] = {} if args.access_log else {"logger": None}
    broker = RabbitBroker(
        args.url, default_channel=Channel(prefetch_count=args.prefetch), **options
    )

    @broker.subscriber(RabbitQueue(args.queue, declare=False))
    async def handle(body: dict[str, Any]) -> None:
        pass  # FastStream decoded the JSON body before the call: that is the work

    await broker.start()

    async def stop() -> None:
        await broker.stop()

    return stop


if __name__ == "__main__":
    sys.exit(main("faststream_sub", start, add_arguments))
