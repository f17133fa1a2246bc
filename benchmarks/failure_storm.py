"""Failure storm: every message fails once (`RetryLater(0.2)`), then succeeds.

Four consumers, each its own process, on a fresh queue per run:

- `foxwork_full`: foxwork's production chain (`consumers/foxwork_full.py`: AckNack →
  Tracing → Metrics → CircuitBreaker → RateLimit → Retry, on a `ResilientBackend`, the
  same OpenTelemetry set-up), whose worker raises `RetryLater(0.2)` on the first attempt.
  The circuit breaker is told that `RetryLater` says nothing about a dependency
  (`is_failure`): with the default it opens after 5 failures and holds the storm for 30 s,
  which is what it is for, but not what this measures.
- `handwritten`: aio-pika as a team would write it without foxwork: a TTL queue
  (`x-message-ttl` 200 ms, dead-lettering back to the main queue through the default
  exchange); a failed message is republished there (persistent, mandatory, with
  `x-retry-attempt: 1`) on the consuming channel, which has publisher confirms, and
  acked once its confirm arrives. aio-pika runs each delivery in its own task, so the
  confirms are pipelined (up to the prefetch at once), not serialised.
- `foxwork_retry`: foxwork doing the hand-written consumer's work and no more: AckNack →
  Retry, no telemetry, on the same `ResilientBackend`.
- `handwritten_otel`: the hand-written consumer plus the telemetry
  `consumers/raw_aiopika_otel.py` writes by hand per delivery (the W3C context extracted
  from the headers, one CONSUMER span with the attributes `TracingMiddleware` sets, one
  record of a duration histogram, the same SDK set-up); a failure adds a span event, and
  the retry copy carries the span's `traceparent`, as foxwork's does.

The ratios compare like with like: foxwork_retry / handwritten (the retry path alone),
foxwork_full / handwritten_otel (the same telemetry) and foxwork_full / handwritten.

All decode the JSON body on the second attempt and ack. Each run is timed by the probe of
the throughput candidates (`consumers/_common.py`): from the first delivery to the broker
having applied the ack of every delivery (2 per message). It must end with the main queue
and the retry queue empty; throughput is messages (not deliveries) per second.

Two modes:

- `backlog` (default): the queue is filled with N messages first. This measures throughput;
  the retried copies come back behind the rest of the backlog, so their delay error is
  queueing, reported but not a measure of the retry mechanism.
- `paced`: once the consumer is up, the messages are published at `--rate` per second (a
  rate both keep up with). This measures the retry delay error: redelivery time (start of
  the second attempt) minus due time (the failure + 0.2 s).

Usage:
    python -m benchmarks.failure_storm [-n 50000] [--rounds 3] [--mode backlog|paced|both]
        [--rate 100] [--paced-messages 5000] [--url URL] [--quick]
        [--candidates foxwork_full,handwritten,...] [--py-spy DIR]

Results: `benchmarks/results/failure_storm.json` and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s

DELAY = 0.2
#: The hand-written consumer's TTL queue, after its main queue.
TTL_SUFFIX = "-ttl200"
CANDIDATES = ("foxwork_full", "foxwork_retry", "handwritten", "handwritten_otel")
#: The ratios reported: (candidate, the one it is compared with).
RATIOS = (
    ("foxwork_retry", "handwritten"),
    ("foxwork_full", "handwritten_otel"),
    ("foxwork_full", "handwritten"),
)
DEFAULT_MESSAGES = 50_000
DEFAULT_ROUNDS = 3
DEFAULT_RATE = 100.0
DEFAULT_PACED = 5_000
DEFAULT_PREFETCH = 256
QUICK = {"messages": 3_000, "rounds": 1, "paced_messages": 300}
TARGET_RATIO = 1.2
TARGET_P99_MS = 250.0


# -- the consumers (run in a child process) -----------------------------------------------


class Timings:
    """When each message failed and when it came back, by its number."""

    def __init__(self) -> None:
        self.failed_at: dict[int, float] = {}
        self.back_at: dict[int, float] = {}

    def errors_ms(self) -> list[float]:
        return [
            (back - self.failed_at[n] - DELAY) * 1000
            for n, back in self.back_at.items()
            if n in self.failed_at
        ]


def number(message_id: str | None) -> int:
    """The message's number: fill_queue's ids are `{tag}{n}`."""
    text = message_id or ""
    digits = len(text) - len(text.rstrip("0123456789"))
    return int(text[-digits:]) if digits else -1


async def start_foxwork(args: argparse.Namespace, timings: Timings) -> Any:
    from foxwork import DeadLetter, Drop, Message, RetryLater, Worker, WorkerPool
    from foxwork.backends import RabbitMQBackend, ResilientBackend
    from foxwork.cli.heap import freeze_startup_heap
    from foxwork.middleware import AckNackMiddleware, CircuitBreakerMiddleware, RetryMiddleware

    from .consumers.foxwork_full import full_chain, telemetry

    class FailOnce(Worker[Any]):
        async def process(self, message: Message[Any]) -> None:
            n = number(message.id)
            if message.attempt == 1:
                timings.failed_at[n] = time.monotonic()
                raise RetryLater(DELAY)
            timings.back_at.setdefault(n, time.monotonic())
            message.payload  # noqa: B018  (decoding is the work)

    def is_failure(exc: BaseException) -> bool:
        return not isinstance(exc, Drop | DeadLetter | RetryLater)

    providers: tuple[Any, ...] = ()
    if args.child == "foxwork_retry":
        chain: list[Any] = [AckNackMiddleware(), RetryMiddleware()]
    else:
        tracer_provider, meter_provider = providers = telemetry()
        chain = [
            CircuitBreakerMiddleware(is_failure=is_failure)
            if isinstance(layer, CircuitBreakerMiddleware)
            else layer
            for layer in full_chain(tracer_provider, meter_provider)
        ]
    backend = ResilientBackend(RabbitMQBackend(url=args.url, queue=args.queue))
    pool = WorkerPool(
        workers=[FailOnce()],
        middleware=chain,
        concurrency_limit=args.prefetch,
        prefetch=args.prefetch,
        queues=[args.queue],
    )
    await backend.connect()
    await pool.start(backend)
    freeze_startup_heap()

    async def stop() -> None:
        await pool.shutdown(timeout=10)
        await backend.close()
        for provider in providers:
            provider.shutdown()

    return stop


class HandTelemetry:
    """What `handwritten_otel` records per delivery, written by hand as in
    `consumers/raw_aiopika_otel.py`: a CONSUMER span and a histogram record."""

    def __init__(self, queue: str) -> None:
        from foxwork.telemetry import DURATION_BUCKETS  # the same buckets, not re-typed

        from .consumers.foxwork_full import telemetry
        from .consumers.raw_aiopika_otel import WORKER_ID

        self.providers = telemetry()
        tracer_provider, meter_provider = self.providers
        self.tracer = tracer_provider.get_tracer("orders-consumer")
        self.duration = meter_provider.get_meter("orders-consumer").create_histogram(
            "messages.duration",
            unit="s",
            description="Time a delivery spent being processed",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.queue = queue
        self.worker_id = WORKER_ID
        self.span_name = f"{queue} process"
        self.metric_attributes = {"queue": queue, "worker": WORKER_ID}
        #: The attributes every span of the queue has, as `TracingMiddleware` sets them.
        self.constant_attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": queue,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "foxwork.worker.id": WORKER_ID,
        }

    def span_attributes(self, message: Any, attempt: int) -> dict[str, Any]:
        attributes = {
            **self.constant_attributes,
            "messaging.message.id": message.message_id or "",
            "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
            "messaging.message.body.size": len(message.body),
            "foxwork.message.attempt": attempt,
        }
        if message.delivery_tag:
            attributes["messaging.rabbitmq.message.delivery_tag"] = message.delivery_tag
        if message.correlation_id:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        return attributes

    def shutdown(self) -> None:
        for provider in self.providers:
            provider.shutdown()


async def start_handwritten(args: argparse.Namespace, timings: Timings) -> Any:
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    otel = HandTelemetry(args.queue) if args.child == "handwritten_otel" else None
    connection = await aio_pika.connect(args.url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=args.prefetch)
    ttl_queue = args.queue + TTL_SUFFIX
    await channel.declare_queue(
        ttl_queue,
        durable=True,
        arguments={
            "x-message-ttl": round(DELAY * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": args.queue,
        },
    )
    queue = await channel.declare_queue(args.queue, passive=True)
    exchange = channel.default_exchange

    async def handle(message: AbstractIncomingMessage, headers: dict[str, Any]) -> None:
        n = number(message.message_id)
        if "x-retry-attempt" not in headers:
            timings.failed_at[n] = time.monotonic()
            headers["x-retry-attempt"] = 1
            if otel is not None:
                span = trace.get_current_span()
                span.add_event("retry_later", {"retry.delay": DELAY})
                propagate.inject(headers)  # the copy continues the trace
            copy = aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(copy, routing_key=ttl_queue, mandatory=True)  # confirmed
            await message.ack()
            return
        timings.back_at.setdefault(n, time.monotonic())
        json.loads(message.body)
        await message.ack()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handle(message, dict(message.headers or {}))

    async def on_message_otel(message: AbstractIncomingMessage) -> None:
        assert otel is not None
        began = time.perf_counter()
        headers = dict(message.headers or {})
        parent = propagate.extract(headers)
        failed = headers.get("x-retry-attempt")
        attempt = (failed if isinstance(failed, int) else 0) + 1
        with otel.tracer.start_as_current_span(
            otel.span_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=otel.span_attributes(message, attempt),
        ):
            await handle(message, headers)
        otel.duration.record(time.perf_counter() - began, otel.metric_attributes)

    await queue.consume(on_message if otel is None else on_message_otel)

    async def stop() -> None:
        await connection.close()
        if otel is not None:
            otel.shutdown()

    return stop


STARTERS = {
    "foxwork_full": start_foxwork,
    "foxwork_retry": start_foxwork,
    "handwritten": start_handwritten,
    "handwritten_otel": start_handwritten,
}


def retry_queue_of(candidate: str, queue: str) -> str:
    if candidate.startswith("handwritten"):
        return queue + TTL_SUFFIX
    from foxwork import wire

    return wire.retry_queue_name(queue, wire.delay_tier_ms(DELAY))


async def child(args: argparse.Namespace) -> dict[str, Any]:
    from .consumers._common import Probe

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    timings = Timings()
    probe = Probe(2 * args.expected)
    probe.install()
    stop = await STARTERS[args.child](args, timings)
    error = None
    try:
        await asyncio.wait_for(probe.done.wait(), args.timeout)
        await probe.finish(args.queue)
    except TimeoutError:
        error = (
            f"timed out after {args.timeout:g} s: {probe.acked} of {2 * args.expected} "
            f"deliveries acked, {len(timings.back_at)} of {args.expected} messages back"
        )
    finally:
        await stop()
    errors = timings.errors_ms()
    if error is None and len(errors) != args.expected:
        error = f"{len(errors)} of {args.expected} messages came back"
    result = probe.result()
    result.update(
        candidate=args.child,
        error=error,
        messages=args.expected,
        delay_error_ms={
            "p50": s.percentile(errors, 50),
            "p99": s.percentile(errors, 99),
            "max": max(errors, default=float("nan")),
            "min": min(errors, default=float("nan")),
        },
    )
    if "elapsed_s" in result:
        result["msgs_per_s"] = args.expected / result["elapsed_s"]
    return result


# -- the driver ---------------------------------------------------------------------------


async def publish_paced(channel: Any, queue: str, count: int, rate: float, tag: str) -> None:
    """Publish `count` messages at `rate` per second, in small confirmed bursts."""
    import aio_pika

    burst = max(1, round(rate / 50))
    began = time.monotonic()
    for first in range(0, count, burst):
        due = began + first / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        s.make_body(n),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=f"{tag}{n}",
                    ),
                    routing_key=queue,
                )
                for n in range(first, min(first + burst, count))
            )
        )


async def wait_for_consumer(
    channel: Any, queue: str, process: asyncio.subprocess.Process, timeout: float = 120.0
) -> None:
    """Return once `queue` has a consumer (or the process has exited, or `timeout`)."""
    deadline = time.monotonic() + timeout
    while process.returncode is None and time.monotonic() < deadline:
        declared = await channel.declare_queue(queue, passive=True)
        if declared.declaration_result.consumer_count:
            return
        await asyncio.sleep(0.05)


async def one_run(
    channel: Any,
    broker: s.Broker,
    candidate: str,
    *,
    mode: str,
    messages: int,
    rate: float,
    prefetch: int,
    tag: str,
    py_spy: Path | None,
) -> dict[str, Any]:
    queue = s.unique_queue(f"storm-{candidate}")
    result_path = s.RESULTS / f".{queue}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    # Generous: a loaded machine can go below 50 messages a second in a storm.
    timeout = max(300.0, messages / 20) + (messages / rate if mode == "paced" else 0)
    try:
        if mode == "backlog":
            await s.fill_queue(channel, queue, messages, tag=tag)
        else:
            await channel.declare_queue(
                queue, durable=True, arguments=s.main_queue_arguments(queue)
            )
        command = [
            *(sys.executable, "-m", "benchmarks.failure_storm", "--child", candidate),
            *("--url", broker.url, "--queue", queue, "--expected", str(messages)),
            *("--prefetch", str(prefetch), "--result", str(result_path)),
            *("--timeout", str(timeout)),
        ]
        if py_spy is not None:
            spy = Path(sys.executable).with_name("py-spy")
            command = [
                *(str(spy), "record", "--rate", "500", "--format", "raw", "--full-filenames"),
                *("--output", str(py_spy), "--", *command),
            ]
        process = await asyncio.create_subprocess_exec(
            *command, cwd=s.ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        if mode == "paced":
            # Publishing before the consumer is up would start it behind a backlog.
            await wait_for_consumer(channel, queue, process)
            await publish_paced(channel, queue, messages, rate, tag)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout + 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            stderr = b"(killed: hung)"
        result = s.read_result(process, result_path, stderr)
        left = await s.ready_count(channel, queue)
        left_retry = await left_in(broker.url, retry_queue_of(candidate, queue))
        result.update(mode=mode, queue=queue, left_in_queue=left, left_in_retry_queue=left_retry)
        if (left or left_retry) and not result.get("error"):
            result["error"] = f"{left} + {left_retry} message(s) left in the queues"
    finally:
        await s.delete_queues(channel, [queue])
        for extra in (queue + TTL_SUFFIX, retry_queue_of("foxwork_full", queue)):
            with contextlib.suppress(Exception):
                await channel.queue_delete(extra)
        result_path.unlink(missing_ok=True)
    return result


async def left_in(url: str, queue: str) -> int | None:
    """Messages ready in `queue`, on a channel of its own (None: there is no such queue)."""
    try:
        async with s.amqp(url) as channel:
            return await s.ready_count(channel, queue)
    except Exception:
        return None


def ratios(runs: Sequence[dict[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
    """Each of `RATIOS` in `mode`: the msgs/s of a candidate over those of the one it is
    compared with in the same round (median, min, max over the rounds both completed)."""
    rate = {
        (r["round"], r["candidate"]): r["msgs_per_s"]
        for r in runs
        if r["mode"] == mode and not r.get("error")
    }
    out: dict[str, dict[str, Any]] = {}
    for name, base in RATIOS:
        values = [
            rate[(round_, name)] / rate[(round_, base)]
            for round_, candidate in rate
            if candidate == name and (round_, base) in rate
        ]
        if values:
            out[f"{name} / {base}"] = {
                "median": s.median(values),
                "min": min(values),
                "max": max(values),
                "rounds": len(values),
            }
    return out


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        for name in dict.fromkeys(r["candidate"] for r in runs if r["mode"] == mode):
            good = [
                r
                for r in runs
                if r["mode"] == mode and r["candidate"] == name and not r.get("error")
            ]
            rates = [r["msgs_per_s"] for r in good]
            out[f"{mode}/{name}"] = {
                "runs": len(good),
                "failed_runs": sum(1 for r in runs if r["mode"] == mode and r["candidate"] == name)
                - len(good),
                "msgs_per_s": {
                    "median": s.median(rates),
                    "min": min(rates, default=None),
                    "max": max(rates, default=None),
                },
                "cpu_us_per_msg_median": s.median([r["cpu_s"] / r["messages"] * 1e6 for r in good]),
                "delay_error_p50_ms_median": s.median([r["delay_error_ms"]["p50"] for r in good]),
                "delay_error_p99_ms": {
                    "median": s.median([r["delay_error_ms"]["p99"] for r in good]),
                    "max": max((r["delay_error_ms"]["p99"] for r in good), default=None),
                },
                "peak_rss_mib_median": s.median([r["peak_rss_kib"] / 1024 for r in good]),
            }
    return out


def render(summary: dict[str, Any], ratio_table: dict[str, dict[str, Any]]) -> str:
    rows = []
    for key, item in summary.items():
        if not item["runs"]:
            rows.append([key, "failed", *[""] * 5])
            continue
        rate = item["msgs_per_s"]
        rows.append(
            [
                key,
                f"{rate['median']:,.0f}",
                f"{rate['min']:,.0f}-{rate['max']:,.0f}",
                f"{item['cpu_us_per_msg_median']:.0f}",
                f"{item['delay_error_p50_ms_median']:.1f}",
                f"{item['delay_error_p99_ms']['median']:.1f}",
                f"{item['delay_error_p99_ms']['max']:.1f}",
            ]
        )
    headers = ["mode/candidate", "msgs/s", "min-max", "CPU µs/msg", "err p50 ms", "err p99 ms"]
    text = s.table([*headers, "p99 max"], rows)
    ratio_rows = [
        [f"{mode}: {key}", f"{item['median']:.2f}", f"{item['min']:.2f}-{item['max']:.2f}"]
        for mode, by_key in ratio_table.items()
        for key, item in by_key.items()
    ]
    if ratio_rows:
        text += "\n\n" + s.table(["ratio (msgs/s, same round)", "median", "min-max"], ratio_rows)
    return text


def round_order(candidates: Sequence[str], round_: int) -> list[str]:
    """The candidates in the order round `round_` runs them: reversed every other round."""
    return list(candidates) if round_ % 2 else list(reversed(candidates))


async def bench(args: argparse.Namespace, broker: s.Broker) -> dict[str, Any]:
    modes = ["backlog", "paced"] if args.mode == "both" else [args.mode]
    meta = {
        "benchmark": "failure_storm",
        "delay_s": DELAY,
        "messages": args.messages,
        "paced_messages": args.paced_messages,
        "rate": args.rate,
        "rounds": args.rounds,
        "prefetch": args.prefetch,
        "candidates": args.candidates,
        "rabbitmq": await s.server_version(broker.url),
        "versions": s.versions(),
        "machine_before": s.machine(),
    }
    runs: list[dict[str, Any]] = []
    async with s.amqp(broker.url) as channel:
        for mode in modes:
            count = args.messages if mode == "backlog" else args.paced_messages
            for number_ in range(1, args.rounds + 1):
                for name in round_order(args.candidates, number_):
                    spy = (
                        args.py_spy / f"storm-{mode}-{name}-r{number_}.raw" if args.py_spy else None
                    )
                    result = await one_run(
                        channel,
                        broker,
                        name,
                        mode=mode,
                        messages=count,
                        rate=args.rate,
                        prefetch=args.prefetch,
                        tag=f"r{number_}-",
                        py_spy=spy,
                    )
                    result.update(round=number_, candidate=name, mode=mode)
                    runs.append(result)
                    if result.get("error"):
                        s.log(f"{mode} round {number_} {name:>12}: FAILED: {result['error']}")
                    else:
                        err = result["delay_error_ms"]
                        s.log(
                            f"{mode} round {number_} {name:>12}: {result['msgs_per_s']:7,.0f} "
                            f"msgs/s, delay error p50 {err['p50']:.1f} ms p99 {err['p99']:.1f} ms"
                        )
    meta["machine_after"] = s.machine()
    return {
        "meta": meta,
        "summary": summarise(runs),
        # Paced runs go at the publisher's rate: their msgs/s compare nothing.
        "ratios": {mode: ratios(runs, mode) for mode in modes if mode == "backlog"},
        "runs": runs,
    }


def candidate_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown candidate(s) {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(CANDIDATES)
        )
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.failure_storm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", "--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--mode", choices=("backlog", "paced", "both"), default="both")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="paced: msgs/s")
    parser.add_argument("--paced-messages", type=int, default=DEFAULT_PACED)
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument(
        "--candidates",
        type=candidate_list,
        default=list(CANDIDATES),
        help=f"comma-separated, of {', '.join(CANDIDATES)} (default: all)",
    )
    parser.add_argument("--py-spy", type=Path, metavar="DIR")
    parser.add_argument("--output", type=Path, default=s.RESULTS / "failure_storm.json")
    parser.add_argument("--url", help="AMQP URL of a broker on 127.0.0.1 (default: start one)")
    # In the child process only:
    parser.add_argument("--child", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.messages, args.rounds, args.paced_messages, args.prefetch) < 1 or args.rate <= 0:
        parser.error("sizes, --rounds, --prefetch and --rate must be positive")
    if args.child and not (args.url and args.queue and args.expected and args.result):
        parser.error("--child needs --url, --queue, --expected and --result")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        result = asyncio.run(child(args))
        result["pid"] = os.getpid()
        args.result.write_text(json.dumps(result, indent=2))
        return 0 if result["error"] is None else 1
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    with s.broker(args.url) as broker:
        data = asyncio.run(bench(args, broker))
    load = (data["meta"]["machine_before"]["load_average"], data["meta"]["machine_after"])
    print(
        f"\nFailure storm: every message fails once (RetryLater({DELAY:g})) then succeeds; "
        f"backlog {args.messages:,}, paced {args.paced_messages:,} at {args.rate:g}/s, "
        f"{args.rounds} round(s), load {load[0]} → {load[1]['load_average']}"
    )
    print(render(data["summary"], data["ratios"]))
    print(
        f"targets: foxwork ≥ {TARGET_RATIO}x its hand-written equivalent (backlog); delay "
        f"error p99 < {TARGET_P99_MS:g} ms (paced; in backlog mode it is queueing behind the "
        "backlog)"
    )
    s.save("failure_storm", data, args.output)
    return 0 if all(not r.get("error") for r in data["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
