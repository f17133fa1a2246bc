"""`foxwork spool status DIR` and `foxwork spool drain DIR`: look at a publisher's spool,
and send what it holds to the broker.

`status` reads the directory without opening the spool, so it works while its publisher
runs. `drain` opens it (refused while another live process owns it), publishes every
message in order, one confirm at a time, and exits 0 once the spool is empty, or 1 when
`--timeout` passed first or a damaged record stopped it (what is left stays in the spool;
`--skip-corrupt` skips damaged records, saying how many bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

from .._redact import redact
from ..errors import BackendError, ConfigurationError
from ..spool import (
    Drainer,
    Spool,
    SpoolConfig,
    SpoolCorrupt,
    SpoolLocked,
    SpoolStatus,
    read_status,
)
from .common import (
    ENV_URL,
    EXIT_OK,
    CommandLineError,
    Subparsers,
    add_log_level,
    non_negative_float,
)

__all__ = ["add_spool_command"]

#: Exit code of `drain` when messages are left (the timeout passed first, or damage).
EXIT_LEFT = 1
#: Default seconds `drain` keeps trying.
DEFAULT_DRAIN_TIMEOUT = 60.0


def add_spool_command(subparsers: Subparsers) -> None:
    """Add `foxwork spool status|drain`."""
    parser = subparsers.add_parser(
        "spool",
        help="look at a publisher's spool, or drain it to the broker",
        description=(
            "A publisher's spool holds the messages it could not hand to the broker. "
            "'status' shows what waits; 'drain' sends it, in order, with confirms."
        ),
    )
    commands = parser.add_subparsers(dest="spool_command", metavar="ACTION", required=True)

    status = commands.add_parser(
        "status",
        help="depth, bytes, segments, oldest message's age and owner of a spool",
        description="Show what a spool directory holds (works while its publisher runs).",
    )
    status.add_argument("directory", metavar="DIR", help="the spool directory")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add_log_level(status, "WARNING")
    status.set_defaults(handler=_status_command)

    drain = commands.add_parser(
        "drain",
        help="publish what a spool holds, in order, and exit",
        description=(
            "Publish every message of the spool, in order, each confirmed by the broker, "
            "then exit: 0 when the spool is empty, 1 when --timeout passed first or a "
            "damaged record stopped it (what is left stays in the spool). Refused while "
            "another live process owns it."
        ),
    )
    drain.add_argument("directory", metavar="DIR", help="the spool directory")
    drain.add_argument("--url", help=f"AMQP URL of the broker (default: ${ENV_URL})")
    drain.add_argument(
        "--timeout",
        type=non_negative_float,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help=f"give up after S seconds (default: {DEFAULT_DRAIN_TIMEOUT:g})",
    )
    drain.add_argument(
        "--skip-corrupt",
        action="store_true",
        help=(
            "skip a damaged record inside the spool, to the next intact one (what it held "
            "is lost; the bytes skipped are reported); without it, drain stops there"
        ),
    )
    add_log_level(drain, "WARNING")
    drain.set_defaults(handler=_drain_command)


def _spool_directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise CommandLineError(f"{text}: no such spool directory")
    return path


def _status_command(args: argparse.Namespace) -> int:
    status = read_status(_spool_directory(args.directory))
    if args.json:
        print(json.dumps(_as_json(status)), flush=True)
    else:
        print(format_status(status), flush=True)
    return EXIT_OK


def _as_json(status: SpoolStatus) -> dict[str, object]:
    return {
        "directory": str(status.directory),
        "depth": status.depth,
        "bytes": status.bytes,
        "segments": status.segments,
        "oldest_age": status.oldest_age,
        "owner_pid": status.owner_pid,
        "owner_alive": status.owner_alive,
        "damaged": [
            {"segment": str(d.path), "offset": d.offset, "bytes": d.size, "reason": d.reason}
            for d in status.damaged
        ],
    }


def format_status(status: SpoolStatus) -> str:
    """`foxwork spool status`'s lines."""
    if status.owner_pid is None:
        owner = "none"
    else:
        owner = f"PID {status.owner_pid} ({'running' if status.owner_alive else 'gone'})"
    oldest = "-" if status.oldest_age is None else f"{status.oldest_age:.1f} s ago"
    lines = [
        f"spool {status.directory}",
        f"  depth     {status.depth} message(s)",
        f"  bytes     {status.bytes}",
        f"  segments  {status.segments}",
        f"  oldest    {oldest}",
        f"  owner     {owner}",
    ]
    lines += [f"  damaged   {damage}" for damage in status.damaged]
    if status.damaged:
        lines.append(
            "  the drainer stops at damage: skip it with "
            f"foxwork spool drain {status.directory} --skip-corrupt"
        )
    return "\n".join(lines)


def _drain_command(args: argparse.Namespace) -> int:
    directory = _spool_directory(args.directory)
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise CommandLineError(f"no broker URL: pass --url amqp://... or set ${ENV_URL}")
    try:
        result = asyncio.run(_drain(directory, url, args.timeout, skip_corrupt=args.skip_corrupt))
    except SpoolLocked as exc:
        raise CommandLineError(str(exc)) from None
    except (BackendError, ConfigurationError) as exc:
        raise CommandLineError(redact(str(exc))) from None
    print(f"sent {result.sent} message(s); {result.left} left in {directory}", flush=True)
    if result.skipped_bytes:
        print(f"skipped {result.skipped_bytes} damaged byte(s)", flush=True)
    if result.corrupt is not None:
        print(f"stopped: {result.corrupt}", file=sys.stderr, flush=True)
        return EXIT_LEFT
    if result.left:
        reason = f": {result.last_error}" if result.last_error else ""
        print(f"gave up after {args.timeout:g} s{reason}", file=sys.stderr, flush=True)
        return EXIT_LEFT
    return EXIT_OK


@dataclasses.dataclass(frozen=True, slots=True)
class _Drained:
    sent: int
    left: int
    last_error: str | None
    skipped_bytes: int
    corrupt: SpoolCorrupt | None


async def _drain(directory: Path, url: str, timeout: float, *, skip_corrupt: bool) -> _Drained:
    """Drain the spool in `directory` to `url`."""
    from ..backends.rabbitmq import RabbitMQBackend  # aio-pika only when used
    from ..backends.resilient import ResilientBackend

    spool = await Spool.open(SpoolConfig(directory=directory, skip_corrupt=skip_corrupt))
    corrupt = None
    try:
        backend = ResilientBackend(RabbitMQBackend(url=url, queue=[]))
        await backend.connect()
        try:
            drainer = Drainer(spool, backend)
            try:
                await asyncio.wait_for(drainer.drain(), timeout)
            except TimeoutError:
                pass  # what is left stays in the spool
            except SpoolCorrupt as exc:
                corrupt = exc
            return _Drained(
                drainer.sent, spool.depth, drainer.last_error, spool.skipped_bytes, corrupt
            )
        finally:
            await backend.close()
    finally:
        await spool.close()
