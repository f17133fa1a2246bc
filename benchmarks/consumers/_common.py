"""What every candidate shares: the command line, the probe that times the run, the result.

The probe measures every candidate at the same two points, below any framework, in the
AMQP client (aiormq) that all of them use:

- start: the first `basic.deliver` frame the client reads;
- end: the broker has processed the `expected`-th ack. The probe counts the deliveries the
  client's `basic.ack` frames settle (one each, or for `multiple=True` every one up to the
  tag not acked before), then makes one round trip on the channel that sent the last one (a
  passive `queue.declare`): the broker handles a channel's frames in order, so when the reply
  arrives every ack before it has been applied. The reply's message count (messages still
  ready in the queue) is reported as `ready_after` and must be 0.

Hooking the client costs each candidate the same (one extra coroutine call per ack frame),
and the first-delivery hook removes itself. CPU time is the process's own (all threads) between
the two points; peak RSS is the process's high-water mark (`VmHWM`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiormq.channel import Channel

#: Unsettled deliveries the broker hands a consumer; the same for every candidate.
DEFAULT_PREFETCH = 256
#: Seconds a run may take before it is reported as failed.
DEFAULT_TIMEOUT = 600.0

Stop = Callable[[], Awaitable[None]]
Start = Callable[[argparse.Namespace], Awaitable[Stop]]
AddArguments = Callable[[argparse.ArgumentParser], None]


def rss_kib() -> int:
    """Resident set size of this process now, in KiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far, in KiB (`VmHWM`).

    Not `ru_maxrss`: Linux carries that over from the parent across `exec`, so a child
    started by a big parent would report the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Probe:
    """Counts acks in the AMQP client and times the run (see the module docstring)."""

    def __init__(self, expected: int, *, profile: str | None = None) -> None:
        self.expected = expected
        self.acked = 0
        self.done = asyncio.Event()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cpu_start = (0.0, 0.0)
        self.cpu_end = (0.0, 0.0)
        self.rss_start_kib = 0
        self.rss_end_kib = 0
        self.ready_after: int | None = None
        self._last_channel: Channel | None = None
        # Per channel: every tag up to the first number was acked; the set holds single
        # acks above it.
        self._acks_by_channel: dict[int, tuple[int, set[int]]] = {}
        self._profile_path = profile
        self._profiler: Any = None

    def install(self) -> None:
        """Patch aiormq's channel class: count acks, note the first delivery."""
        probe = self
        original_ack = Channel.basic_ack
        original_deliver = Channel._on_deliver_frame

        async def basic_ack(
            channel: Channel, delivery_tag: int, multiple: bool = False, wait: bool = True
        ) -> None:
            await original_ack(channel, delivery_tag, multiple, wait)
            probe.acked += probe._count_acked(channel, delivery_tag, multiple)
            if probe.acked >= probe.expected and not probe.done.is_set():
                probe._last_channel = channel
                probe.done.set()

        async def on_deliver_frame(channel: Channel, frame: Any) -> None:
            Channel._on_deliver_frame = original_deliver  # type: ignore[method-assign]
            probe._mark_start()
            await original_deliver(channel, frame)

        Channel.basic_ack = basic_ack  # type: ignore[method-assign,assignment]
        Channel._on_deliver_frame = on_deliver_frame  # type: ignore[method-assign,assignment]

    def _count_acked(self, channel: Channel, tag: int, multiple: bool) -> int:
        """How many deliveries one `basic.ack` settled. A multiple ack settles every
        delivery of the channel up to `tag` not acked before (the benchmarks never nack).

        Per channel: `floor`, below which every tag was acked, and the single acks above
        it (as many as are acked out of order: at most the prefetch)."""
        key = id(channel)
        floor, singles = self._acks_by_channel.get(key, (0, set()))
        if multiple:
            below = {t for t in singles if t <= tag}
            singles -= below
            count = tag - floor - len(below)
            floor = tag
        else:
            singles.add(tag)
            count = 1
        while floor + 1 in singles:
            floor += 1
            singles.remove(floor)
        self._acks_by_channel[key] = (floor, singles)
        return count

    def _mark_start(self) -> None:
        self.rss_start_kib = rss_kib()
        if self._profile_path:
            from pyinstrument import Profiler

            # The whole thread, event loop included: where the time goes between messages
            # matters as much as inside them.
            self._profiler = Profiler(interval=0.0005, async_mode="disabled")
            self._profiler.start()
        self.cpu_start = _cpu()
        self.started_at = time.perf_counter()

    async def finish(self, queue: str) -> None:
        """Wait for the broker to have applied every ack, then stop the clock."""
        assert self._last_channel is not None
        ok: Any = await self._last_channel.queue_declare(queue, passive=True)
        self.finished_at = time.perf_counter()
        self.cpu_end = _cpu()
        self.rss_end_kib = rss_kib()
        self.ready_after = int(ok.message_count)
        if self._profiler is not None:
            self._profiler.stop()
            self._write_profile()

    def _write_profile(self) -> None:
        path = Path(self._profile_path or "profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._profiler.output_text(unicode=True, color=False))
        self._profiler.last_session.save(str(path.with_suffix(".pyisession")))

    def result(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "expected": self.expected,
            "acked": self.acked,
            "ready_after": self.ready_after,
            "peak_rss_kib": peak_rss_kib(),
            "rss_start_kib": self.rss_start_kib,
            "rss_end_kib": self.rss_end_kib,
            "cpu_total_s": usage.ru_utime + usage.ru_stime,
        }
        if self.started_at is not None and self.finished_at is not None:
            elapsed = self.finished_at - self.started_at
            user = self.cpu_end[0] - self.cpu_start[0]
            system = self.cpu_end[1] - self.cpu_start[1]
            out.update(
                elapsed_s=elapsed,
                msgs_per_s=self.acked / elapsed if elapsed > 0 else None,
                cpu_s=user + system,
                cpu_user_s=user,
                cpu_sys_s=system,
            )
        return out


def build_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.consumers.{name}",
        description=f"Throughput candidate {name}: consume, decode and ack N messages.",
    )
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--queue", required=True, help="the filled queue to drain")
    parser.add_argument("--expected", type=int, required=True, help="messages in the queue")
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument(
        "--profile", metavar="FILE", help="profile the timed window with pyinstrument into FILE"
    )
    return parser


async def _run(name: str, start: Start, args: argparse.Namespace) -> dict[str, Any]:
    probe = Probe(args.expected, profile=args.profile)
    probe.install()
    error = None
    stop = await start(args)
    try:
        await asyncio.wait_for(probe.done.wait(), args.timeout)
        await probe.finish(args.queue)
    except TimeoutError:
        error = f"timed out after {args.timeout:g} s: {probe.acked} of {args.expected} acked"
    finally:
        await stop()
    if error is None and probe.ready_after:
        error = f"{probe.ready_after} message(s) still ready in the queue after the last ack"
    return {"candidate": name, "loop": args.loop, "pid": os.getpid(), "error": error} | (
        probe.result()
    )


def main(name: str, start: Start, add_arguments: AddArguments | None = None) -> int:
    """Parse the command line, run the candidate, write its result file."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = build_parser(name)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    coro = _run(name, start, args)
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0 if result["error"] is None else 1
