"""Dead-letter tooling at scale: `foxwork dlq replay` of 50,000 dead letters and
`foxwork dlq list` of a 1,000,000-message DLQ, as subprocesses on a real broker.

The queue and its DLQ are declared as foxwork declares them; the DLQ is filled fast with
persistent messages published straight to `Q-dlq` in batches of `FILL_BATCH` (one write
each, as a replay publishes its copies), `FILL_IN_FLIGHT` batches with confirms
outstanding, carrying the headers of a foxwork dead letter
(`foxwork.wire.dead_letter_headers`: original routing key, exchange and queue, reason,
exception type, final attempt, failed at).

- replay: `foxwork dlq replay Q --url URL --all`: wall time from spawn to exit (start-up
  included), msgs/s, the peak RSS of the process; afterwards the main queue must hold every
  message and the DLQ none.
- list: `foxwork dlq list Q --url URL` (stdout to a file, its lines counted): wall time,
  msgs/s, and the RSS growth: peak RSS minus the peak RSS of `foxwork dlq list Q --limit 1`
  on the same DLQ (start-up and one dead letter). Streaming keeps the growth flat; a list
  built in memory grows with the DLQ. A list that takes longer than `--list-timeout` is
  stopped (SIGTERM, then SIGKILL) and reported with the RSS reached and the trend.

RSS is sampled every 0.1 s with psutil, together with the kernel's high-water mark
(`VmHWM`), so the peak is exact even between samples.

Usage:
    python -m benchmarks.dlq_tools [--replay 50000] [--list 1000000] [--rounds 3]
        [--only replay,list] [--list-timeout 900] [--url URL] [--quick]

Results: `benchmarks/results/dlq_tools.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiormq

from foxwork import wire
from foxwork.backends.rabbitmq import RabbitMQConsumerConfig
from foxwork.backends.rabbitmq._batch import publish_batch
from foxwork.backends.rabbitmq.topology import Topology

from . import _support as s

DEFAULT_REPLAY = 50_000
DEFAULT_LIST = 1_000_000
DEFAULT_ROUNDS = 3
DEFAULT_LIST_TIMEOUT = 900.0
QUICK = {"replay": 2_000, "list": 20_000, "rounds": 1}
SAMPLE_EVERY = 0.1
TARGET_REPLAY_RATE = 5_000.0
TARGET_LIST_GROWTH_MIB = 50.0
#: Dead letters published in one write when filling a DLQ.
FILL_BATCH = 500
#: Batches with confirms outstanding while filling (FILL_BATCH times this messages).
FILL_IN_FLIGHT = 10
#: The failure every dead letter reports.
REASON = "ValueError: unknown SKU"


async def declare(channel: aio_pika.abc.AbstractChannel, url: str, queue: str) -> None:
    """Declare `queue` with its DLQ and retry exchange, exactly as foxwork does."""
    topology = Topology(RabbitMQConsumerConfig(url=url, queue=queue))
    await topology.declare(await channel.get_underlay_channel(), queue)


async def fill_dlq(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> float:
    """Publish `count` dead letters of `queue` to its DLQ; returns the seconds it took."""
    dlq = wire.dead_letter_queue_name(queue)
    headers = wire.dead_letter_headers(
        {}, routing_key=queue, exchange="", queue=queue, reason=REASON, final_attempt=5
    )
    headers[wire.EXCEPTION_TYPE] = "builtins.ValueError"
    publishing = await channel.get_underlay_channel()
    in_flight: collections.deque[list[asyncio.Future[Any]]] = collections.deque()
    began = time.perf_counter()
    for first in range(0, count, FILL_BATCH):
        if first and first % s.PROGRESS_EVERY == 0:
            s.log(f"  dead letters published: {first:,} of {count:,}")
        batch = [
            (
                dlq,
                s.make_body(n),
                aiormq.spec.Basic.Properties(
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
                    message_id=f"dead-{n}",
                    headers=headers,
                ),
            )
            for n in range(first, min(first + FILL_BATCH, count))
        ]
        in_flight.append(await publish_batch(publishing, batch))
        if len(in_flight) >= FILL_IN_FLIGHT:
            await asyncio.gather(*in_flight.popleft())
    while in_flight:
        await asyncio.gather(*in_flight.popleft())
    elapsed = time.perf_counter() - began
    ready = await s.ready_count(channel, dlq)
    if ready != count:
        raise RuntimeError(f"{dlq} holds {ready} messages after publishing {count}")
    return elapsed


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def run_cli(
    arguments: Sequence[str], *, timeout: float, stdout: Path | None = None
) -> dict[str, Any]:
    """Run `foxwork ARGUMENTS` and sample its RSS until it exits (or `timeout` passes)."""
    import psutil  # type: ignore[import-untyped]

    foxwork = Path(sys.executable).with_name("foxwork")
    # Opened once per run, before the clock starts: blocking here costs nothing measured.
    out = open(stdout, "wb") if stdout else None  # noqa: SIM115, ASYNC230  (closed below)
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(foxwork),
        *arguments,
        stdout=out or asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    watched = psutil.Process(process.pid)
    samples: list[tuple[float, float]] = []  # (seconds since spawn, RSS MiB)
    peak_kib = 0
    stderr_task = asyncio.ensure_future(process.stderr.read() if process.stderr else _empty())
    timed_out = False
    try:
        while process.returncode is None:
            with contextlib.suppress(psutil.Error):
                samples.append((time.perf_counter() - began, watched.memory_info().rss / 2**20))
            peak_kib = max(peak_kib, _hwm_kib(process.pid) or 0)
            if time.perf_counter() - began > timeout:
                timed_out = True
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), SAMPLE_EVERY)
        await process.wait()
    finally:
        if out:
            out.close()
    elapsed = time.perf_counter() - began
    stderr = await stderr_task
    peak_mib = max(peak_kib / 1024, max((r for _, r in samples), default=0.0))
    return {
        "command": ["foxwork", *arguments],
        "exit_status": process.returncode,
        "timed_out": timed_out,
        "elapsed_s": elapsed,
        "peak_rss_mib": peak_mib,
        "samples": samples,
        "stderr_tail": stderr.decode(errors="replace").strip().splitlines()[-5:],
    }


async def _empty() -> bytes:
    return b""


def redact(arguments: Sequence[str]) -> list[str]:
    return ["URL" if a.startswith("amqp") else a for a in arguments]


async def replay_run(broker: s.Broker, count: int, round_: int) -> dict[str, Any]:
    queue = s.unique_queue("dlq-replay")
    async with s.amqp(broker.url) as channel:
        try:
            await declare(channel, broker.url, queue)
            fill_s = await fill_dlq(channel, queue, count)
            arguments = ["dlq", "replay", queue, "--url", broker.url, "--all"]
            result = await run_cli(arguments, timeout=max(600.0, count / 50))
            result["command"] = ["foxwork", *redact(arguments)]
            back = await s.ready_count(channel, queue)
            left = await s.ready_count(channel, wire.dead_letter_queue_name(queue))
        finally:
            await s.delete_queues(channel, [queue])
    result.update(
        tool="replay",
        round=round_,
        messages=count,
        fill_s=fill_s,
        replayed_in_queue=back,
        left_in_dlq=left,
        msgs_per_s=count / result["elapsed_s"],
    )
    if result["exit_status"] != 0 or back != count or left:
        result["error"] = (
            f"exit status {result['exit_status']}, {back} of {count} in the queue, "
            f"{left} left in the DLQ: {result['stderr_tail']}"
        )
    return result


async def list_runs(
    broker: s.Broker, count: int, rounds: int, timeout: float
) -> list[dict[str, Any]]:
    """Fill one DLQ of `count` once, then list it `rounds` times (listing does not consume)."""
    queue = s.unique_queue("dlq-list")
    out = s.RESULTS / f".{queue}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    async with s.amqp(broker.url) as channel:
        try:
            await declare(channel, broker.url, queue)
            s.log(f"list: publishing {count:,} dead letters")
            fill_s = await fill_dlq(channel, queue, count)
            s.log(f"list: published in {fill_s:.0f} s ({count / fill_s:,.0f}/s)")
            base = ["dlq", "list", queue, "--url", broker.url]
            for round_ in range(1, rounds + 1):
                baseline = await run_cli([*base, "--limit", "1"], timeout=120, stdout=out)
                result = await run_cli(base, timeout=timeout, stdout=out)
                lines = sum(1 for _ in out.open("rb"))
                left = await s.ready_count(channel, wire.dead_letter_queue_name(queue))
                result.update(
                    tool="list",
                    round=round_,
                    messages=count,
                    fill_s=fill_s,
                    command=["foxwork", *redact(base)],
                    output_lines=lines,
                    left_in_dlq=left,
                    baseline_peak_rss_mib=baseline["peak_rss_mib"],
                    rss_growth_mib=result["peak_rss_mib"] - baseline["peak_rss_mib"],
                    msgs_per_s=count / result["elapsed_s"],
                )
                if result["timed_out"]:
                    result["error"] = f"stopped after {timeout:g} s"
                elif result["exit_status"] != 0 or lines < count:
                    result["error"] = (
                        f"exit status {result['exit_status']}, {lines} lines for {count} "
                        f"dead letters: {result['stderr_tail']}"
                    )
                runs.append(result)
                log_run(result)
                if result["timed_out"]:
                    break  # the next round would time out too
        finally:
            out.unlink(missing_ok=True)
            await s.delete_queues(channel, [queue])
    return runs


def log_run(result: dict[str, Any]) -> None:
    state = f"FAILED ({result['error']})" if result.get("error") else "ok"
    s.log(
        f"{result['tool']} round {result['round']}: {result['messages']:,} in "
        f"{result['elapsed_s']:.1f} s = {result['msgs_per_s']:,.0f} msgs/s, peak RSS "
        f"{result['peak_rss_mib']:.1f} MiB, {state}"
    )


def rss_trend_mib_per_100k(result: dict[str, Any]) -> float | None:
    """MiB of RSS gained per 100,000 dead letters, from the samples (a straight line
    through RSS over time, converted at the run's mean rate)."""
    samples: list[tuple[float, float]] = [(t, r) for t, r in result["samples"] if t > 1.0]
    if len(samples) < 3 or not result["elapsed_s"]:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if not var:
        return None
    slope = sum((t - mean_t) * (r - mean_r) for t, r in samples) / var  # MiB per second
    per_second = float(result["messages"]) / float(result["elapsed_s"])
    return slope / per_second * 100_000


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("replay", "list"):
        mine = [r for r in runs if r["tool"] == tool]
        if not mine:
            continue
        good = [r for r in mine if not r.get("error")]
        rates = [r["msgs_per_s"] for r in good]
        out[tool] = {
            "runs": len(good),
            "failed_runs": len(mine) - len(good),
            "messages": mine[0]["messages"],
            "msgs_per_s": {
                "median": s.median(rates),
                "min": min(rates, default=None),
                "max": max(rates, default=None),
            },
            "elapsed_s_median": s.median([r["elapsed_s"] for r in mine]),
            "peak_rss_mib_median": s.median([r["peak_rss_mib"] for r in mine]),
            "rss_growth_mib": [r.get("rss_growth_mib") for r in mine],
            "rss_trend_mib_per_100k": [rss_trend_mib_per_100k(r) for r in mine],
        }
    return out


def render(summary: dict[str, Any]) -> str:
    rows = []
    for tool, item in summary.items():
        rate = item["msgs_per_s"]
        growth = [g for g in item["rss_growth_mib"] if g is not None]
        trend = [t for t in item["rss_trend_mib_per_100k"] if t is not None]
        rows.append(
            [
                f"{tool} {item['messages']:,}",
                f"{item['runs']}/{item['runs'] + item['failed_runs']}",
                "" if rate["min"] is None else f"{rate['median']:,.0f}",
                "" if rate["min"] is None else f"{rate['min']:,.0f}-{rate['max']:,.0f}",
                f"{item['elapsed_s_median']:.1f}",
                f"{item['peak_rss_mib_median']:.1f}",
                ", ".join(f"{g:.1f}" for g in growth) or "-",
                ", ".join(f"{t:.2f}" for t in trend) or "-",
            ]
        )
    headers = [
        "tool",
        "ok runs",
        "msgs/s",
        "min-max",
        "wall s",
        "peak RSS MiB",
        "RSS growth MiB",
        "MiB/100k msgs",
    ]
    return s.table(headers, rows)


async def bench(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    meta = {
        "benchmark": "dlq_tools",
        "replay_messages": args.replay,
        "list_messages": args.list,
        "rounds": args.rounds,
        "rabbitmq": await s.server_version(broker.url),
        "versions": s.versions(),
        "machine_before": s.machine(),
    }
    runs: list[dict[str, Any]] = []
    if "replay" in args.only:
        for round_ in range(1, args.rounds + 1):
            result = await replay_run(broker, args.replay, round_)
            runs.append(result)
            log_run(result)
    if "list" in args.only:
        runs += await list_runs(broker, args.list, args.rounds, args.list_timeout)
    meta["machine_after"] = s.machine()
    return {"meta": meta, "summary": summarise(runs), "runs": runs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dlq_tools", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--replay", type=int, default=DEFAULT_REPLAY, metavar="N")
    parser.add_argument("--list", type=int, default=DEFAULT_LIST, metavar="N")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--only", default="replay,list", help="replay, list or both")
    parser.add_argument("--list-timeout", type=float, default=DEFAULT_LIST_TIMEOUT)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--output", type=Path, default=s.RESULTS / "dlq_tools.json")
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not args.only or args.only - {"replay", "list"}:
        parser.error("--only: replay, list or replay,list")
    if min(args.replay, args.list, args.rounds) < 1:
        parser.error("--replay, --list and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    with s.broker(args.url) as broker:
        data = asyncio.run(bench(args, broker))
    before, after = data["meta"]["machine_before"], data["meta"]["machine_after"]
    print(
        f"\nDead-letter tools, RabbitMQ {data['meta']['rabbitmq']} on {before['cpus']} CPUs, "
        f"load {before['load_average']} → {after['load_average']}"
    )
    print(render(data["summary"]))
    print(
        f"targets: replay ≥ {TARGET_REPLAY_RATE:,.0f} msgs/s; list of 1,000,000 with RSS "
        f"growth < {TARGET_LIST_GROWTH_MIB:g} MiB"
    )
    s.save("dlq_tools", data, args.output)
    return 0 if all(not r.get("error") for r in data["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
