"""Shared by the benchmark scripts: the broker, filling queues, running candidates, output.

Everything talks to 127.0.0.1 only: a throwaway node started with the project's test
harness (`tests/harness/rabbitmq.py`), or a broker given with `--url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aio_pika

from foxwork.backends.rabbitmq import RabbitMQConsumerConfig
from foxwork.backends.rabbitmq.topology import Topology

#: The repository root: children run from here so that `benchmarks` is importable.
ROOT = Path(__file__).resolve().parent.parent
#: JSON results (git-ignored).
RESULTS = ROOT / "benchmarks" / "results"
#: Charts embedded in the documentation (committed).
CHARTS = ROOT / "docs" / "benchmarks"
#: Messages published per batch of gathered confirms.
PUBLISH_BATCH = 1_000
#: Size of each message body, in bytes (JSON).
BODY_SIZE = 120
#: Publishing progress is logged every this many messages (when asked for).
PROGRESS_EVERY = 100_000


@dataclass
class Broker:
    """The broker under test: its URL and, when the harness started it, its Erlang VM pid
    (so the broker's own CPU time can be reported)."""

    url: str
    beam_pid: int | None = None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the broker has used so far, if known."""
        if self.beam_pid is None:
            return None
        try:
            import psutil  # type: ignore[import-untyped]

            times = psutil.Process(self.beam_pid).cpu_times()
        except Exception:
            return None
        return float(times.user + times.system)


@contextlib.contextmanager
def broker(url: str | None) -> Iterator[Broker]:
    """Use the broker at `url`, or start a throwaway node on 127.0.0.1 for the duration."""
    if url:
        yield Broker(url)
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.harness.rabbitmq import RabbitMQHarnessError, RabbitMQNode

    node = RabbitMQNode("fwbench")
    began = time.monotonic()
    try:
        node.start()
    except RabbitMQHarnessError as exc:
        raise SystemExit(f"cannot start a RabbitMQ node for the benchmark: {exc}") from None
    log(f"started a throwaway RabbitMQ node in {time.monotonic() - began:.1f} s ({node.url})")
    try:
        yield Broker(node.url, node.beam_pid)
    finally:
        node.stop()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- queues ------------------------------------------------------------------------------


def unique_queue(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def main_queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments foxwork declares the queue with, so that every candidate (foxwork
    included, which re-declares it) consumes the very same kind of queue."""
    # The arguments depend on the queue settings only; the URL is a placeholder.
    config = RabbitMQConsumerConfig(url="amqp://127.0.0.1/", queue=queue)
    return Topology(config).main_queue_arguments(config.names(queue))


def make_body(n: int, size: int = BODY_SIZE) -> bytes:
    """A JSON object of exactly `size` bytes (an order, padded with a note)."""
    head = f'{{"order_id":{n},"sku":"SKU-{n % 100_000:06d}","qty":{1 + n % 9},'
    head += f'"price_cents":{1999 + n % 50_000},"customer":"customer-{n % 1_000_000:07d}",'
    head += '"note":"'
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode()


@contextlib.asynccontextmanager
async def amqp(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A connection with a confirming channel, for filling, checking and deleting queues."""
    connection = await aio_pika.connect(url, timeout=30)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def server_version(url: str) -> str:
    connection = await aio_pika.connect(url, timeout=30)
    try:
        transport: Any = connection.transport
        version = transport.connection.server_properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


async def fill_queue(
    channel: aio_pika.abc.AbstractChannel,
    queue: str,
    count: int,
    *,
    tag: str = "",
    first_id: int = 0,
    check: bool = True,
    progress: bool = False,
) -> float:
    """Declare `queue` as foxwork would and publish `count` persistent JSON messages to it,
    with publisher confirms, in gathered batches; their ids are `tag` + `first_id`, ... With
    `check`, the queue must then hold exactly `count` messages (nobody consumes it yet).
    Returns the seconds it took."""
    await channel.declare_queue(queue, durable=True, arguments=main_queue_arguments(queue))
    began = time.perf_counter()
    exchange = channel.default_exchange
    for first in range(0, count, PUBLISH_BATCH):
        if progress and first and first % PROGRESS_EVERY == 0:
            log(f"  published {first:,} of {count:,}")
        batch = range(first_id + first, first_id + min(first + PUBLISH_BATCH, count))
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        make_body(n),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=f"{tag}{n}",
                    ),
                    routing_key=queue,
                )
                for n in batch
            )
        )
    elapsed = time.perf_counter() - began
    ready = await ready_count(channel, queue) if check else count
    if ready != count:
        raise RuntimeError(f"queue {queue} holds {ready} messages after publishing {count}")
    return elapsed


async def ready_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """Messages ready in `queue` (not counting delivered-but-unacked ones)."""
    declared = await channel.declare_queue(queue, passive=True)
    result: Any = declared.declaration_result
    return int(result.message_count)


async def delete_queues(channel: aio_pika.abc.AbstractChannel, queues: Sequence[str]) -> None:
    """Delete `queues` and foxwork's companions of each (DLQ, retry exchange)."""
    for queue in queues:
        for name in (queue, f"{queue}-dlq"):
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.exchange_delete(f"{queue}-retry_exchange")


# -- candidate processes -----------------------------------------------------------------


def _clear(result_path: Path) -> None:
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)


def _candidate_command(
    module: str,
    *,
    url: str,
    queue: str,
    expected: int,
    prefetch: int,
    result_path: Path,
    extra: Sequence[str],
    timeout: float,
) -> list[str]:
    """`python -m benchmarks.consumers.<module> ...`, its previous result file removed."""
    _clear(result_path)
    return [
        sys.executable,
        "-m",
        f"benchmarks.consumers.{module}",
        *("--url", url, "--queue", queue, "--expected", str(expected)),
        *("--prefetch", str(prefetch), "--result", str(result_path)),
        *("--timeout", str(timeout), *extra),
    ]


async def run_candidate(
    module: str,
    *,
    url: str,
    queue: str,
    expected: int,
    prefetch: int,
    result_path: Path,
    extra: Sequence[str] = (),
    loop: str = "asyncio",
    timeout: float = 600.0,
    profile: Path | None = None,
    py_spy: Path | None = None,
) -> tuple[dict[str, Any], asyncio.subprocess.Process]:
    """Run `python -m benchmarks.consumers.<module>` until it has drained the queue, and
    return its result (its own measurements, see `consumers/_common.py`).

    `profile` profiles the timed window in the process with pyinstrument; `py_spy` runs the
    process under `py-spy record` (sampling from outside, 500 Hz, on-CPU samples only) and
    writes its collapsed stacks there (see `benchmarks/hotspots.py`)."""
    command = _candidate_command(
        module,
        url=url,
        queue=queue,
        expected=expected,
        prefetch=prefetch,
        result_path=result_path,
        extra=[
            *("--loop", loop),
            *(["--profile", str(profile)] if profile else []),
            *extra,
        ],
        timeout=timeout,
    )
    if py_spy is not None:
        spy = Path(sys.executable).with_name("py-spy")
        command = [
            *(str(spy), "record", "--rate", "500", "--format", "raw", "--full-filenames"),
            *("--output", str(py_spy), "--", *command),
        ]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    return await _collect(process, result_path, timeout), process


async def start_candidate(
    module: str,
    *,
    url: str,
    queue: str,
    expected: int,
    prefetch: int,
    result_path: Path,
    extra: Sequence[str] = (),
    timeout: float = 3600.0,
) -> asyncio.subprocess.Process:
    """Start a candidate without waiting for it (the caller samples it while it runs)."""
    command = _candidate_command(
        module,
        url=url,
        queue=queue,
        expected=expected,
        prefetch=prefetch,
        result_path=result_path,
        extra=extra,
        timeout=timeout,
    )
    return await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


async def _collect(
    process: asyncio.subprocess.Process, result_path: Path, timeout: float
) -> dict[str, Any]:
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout + 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"error": f"the candidate process hung and was killed after {timeout + 60:g} s"}
    return read_result(process, result_path, stderr)


def read_result(
    process: asyncio.subprocess.Process, result_path: Path, stderr: bytes | None
) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(result_path.read_text())
    except (OSError, ValueError):
        tail = (stderr or b"").decode(errors="replace").strip().splitlines()[-15:]
        return {
            "error": f"exit status {process.returncode}, no result; stderr:\n" + "\n".join(tail)
        }
    return result


# -- reporting ---------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    found = {"python": platform.python_version()}
    for package in (
        "foxwork",
        "aio-pika",
        "aiormq",
        "pamqp",
        "faststream",
        "opentelemetry-sdk",
        "uvloop",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(
    name: str,
    data: dict[str, Any],
    path: Path | None,
    *,
    chart: Callable[[Path], Path] | None = None,
) -> Path:
    """Write the results (see `write_json`) and say where; then draw `chart` from them,
    unless it is None (`--no-plot`) or matplotlib is missing."""
    path = write_json(name, data, path)
    print(f"\nresults: {path}")
    if chart is not None:
        try:
            print(f"chart: {chart(path)}")
        except ImportError as exc:
            log(f"no chart ({exc}): pip install -e '.[bench]'")
    return path


def write_json(name: str, data: dict[str, Any], path: Path | None = None) -> Path:
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
