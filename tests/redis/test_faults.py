"""Faults on Redis: the server SIGKILLed and restarted from its append-only file, every
client connection killed every 2 s, and a consumer process SIGKILLed holding entries.

Each scenario counts numbered entries in a `Ledger` and prints its figures (`pytest -s`
shows them): entries lost, duplicates, how long a takeover took. Duplicates are expected
under faults (at-least-once) and are counted, never asserted away.

What a restart may lose is what Redis documents for `appendfsync everysec`: Redis writes
each command to the append-only file before it answers, and fsyncs once a second, so a
killed process loses nothing the kernel already has, and an operating-system crash loses
at most the last second or two of writes (two when an fsync is slow). The bound asserted
here is that one: an entry Redis acknowledged more than `AOF_BOUND` seconds before the
kill is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from foxwork import BackendError
from foxwork.backends.redis import RedisStreamsBackend
from tests.apps.files import read_lines
from tests.apps.process import ROOT
from tests.harness.redis import RedisServer, execute

from .support import (
    Ledger,
    LedgerWorker,
    RedisRun,
    StreamProbe,
    numbered_ids,
    numbered_properties,
    publish_numbered,
    report,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

#: Seconds before a kill after which Redis, under `appendfsync everysec`, may lose an
#: acknowledged write (one second between fsyncs, two when an fsync is slow).
AOF_BOUND = 2.0
#: Seconds the pool may take to reconnect after a fault.
RECONNECT_TIMEOUT = 30.0
#: Seconds the scenarios may take to process everything after the fault.
COMPLETE_TIMEOUT = 60.0


def _now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture
def fault_queue() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def probe(redis_url: str, fault_queue: str) -> AsyncIterator[StreamProbe]:
    """The test queue's keys; deleted at teardown."""
    async with StreamProbe(redis_url, fault_queue) as stream_probe:
        yield stream_probe


#: `await start_run(url=..., queue=..., workers=[...], ...)`: a started `RedisRun`.
StartRun = Callable[..., Awaitable[RedisRun]]


@pytest.fixture
async def start_run() -> AsyncIterator[StartRun]:
    """Starts `RedisRun`s; every one is stopped at teardown."""
    started: list[RedisRun] = []

    async def start(**options: Any) -> RedisRun:
        run = RedisRun(**options)
        started.append(run)
        await run.start()
        return run

    yield start
    for run in started:
        with contextlib.suppress(Exception):
            await run.stop()


class Producer:
    """XADDs numbered entries one at a time at `rate` per second, and records when Redis
    acknowledged each one. A failed XADD (the server died under it) is set aside as
    unacknowledged: Redis may or may not hold it. Then the producer waits for `resume`,
    connects again and goes on with the next id."""

    def __init__(self, url: str, queue: str, ids: list[str], rate: float) -> None:
        self.url, self.queue, self.ids, self.rate = url, queue, ids, rate
        self.acked: dict[str, float] = {}
        self.unacked: list[str] = []
        self.resume = asyncio.Event()

    async def run(self) -> None:
        began, sent = _now(), 0
        backend = await self._connect()
        try:
            for message_id in self.ids:
                # The fault's pacing: a steady stream of writes across the kill.
                await asyncio.sleep(max(0.0, began + sent / self.rate - _now()))
                sent += 1
                try:
                    await backend.publish(self.queue, *numbered_properties(message_id))
                except BackendError:
                    self.unacked.append(message_id)
                    await backend.close()
                    await self.resume.wait()
                    backend = await self._connect()
                    began, sent = _now(), 0
                    continue
                self.acked[message_id] = _now()
        finally:
            await backend.close()

    async def _connect(self) -> RedisStreamsBackend:
        backend = RedisStreamsBackend(url=self.url, queue=self.queue, consumer="producer")
        await backend.connect()
        return backend


@pytest.mark.timeout(180)
async def test_redis_sigkilled_and_restarted_from_its_aof_loses_nothing_older_than_the_fsync(
    redis_server: RedisServer, fault_queue: str, probe: StreamProbe, start_run: StartRun
) -> None:
    """SIGKILL of redis-server (AOF, everysec) while entries are added and consumed, then a
    restart: every entry Redis holds afterwards is processed, and an entry is lost only if
    Redis acknowledged it less than `AOF_BOUND` s before the kill."""
    assert redis_server.appendonly
    n, backlog = 2_000, 1_000
    began = time.monotonic()
    ids = numbered_ids(n)
    ledger = Ledger(ids)
    await publish_numbered(redis_server.url, fault_queue, ids[:backlog])
    producer = Producer(redis_server.url, fault_queue, ids[backlog:], rate=500)
    producer.acked.update(dict.fromkeys(ids[:backlog], float("-inf")))
    # At most 1,000 entries/s: the kill lands while the pool works through the backlog.
    run = await start_run(
        url=redis_server.url, queue=fault_queue, workers=[LedgerWorker(ledger, delay=0.01)]
    )
    producing = asyncio.create_task(producer.run())
    await wait_until(
        lambda: len(producer.acked) >= backlog + 500,
        what=lambda: f"500 entries added while consuming (now {len(producer.acked) - backlog})",
    )

    killed_at = _now()
    await asyncio.to_thread(redis_server.kill)
    acked_at_kill, processed_at_kill = len(producer.acked), ledger.processed
    assert processed_at_kill < acked_at_kill, "the pool caught up before the kill: pace it"
    await asyncio.to_thread(redis_server.restart)
    restart_s = _now() - killed_at
    # What Redis holds after the restart (the pool may be taking entries already).
    held = await probe.message_ids()
    after_restart = await probe.counts()
    producer.resume.set()

    await run.wait_consuming(timeout=RECONNECT_TIMEOUT)
    run.assert_running()
    await asyncio.wait_for(producing, timeout=COMPLETE_TIMEOUT)
    await wait_until(
        lambda: held <= ledger.counts.keys(),
        what=lambda: (
            f"every entry held after the restart is processed, not {held - ledger.counts.keys()}"
        ),
        timeout=COMPLETE_TIMEOUT,
    )
    final = await run.drain(probe, timeout=COMPLETE_TIMEOUT)
    run.assert_running()
    await run.stop()

    # Lost: acknowledged by XADD, never processed, and gone from Redis.
    lost = {m: killed_at - at for m, at in producer.acked.items() if m not in ledger.counts}
    report(
        "redis-server SIGKILL + restart (AOF everysec)",
        n,
        ledger,
        began,
        acked_before_kill=acked_at_kill,
        processed_before_kill=processed_at_kill,
        unacked_xadds=len(producer.unacked),
        stream_after_restart=after_restart["stream"],
        pending_after_restart=after_restart["pending"],
        lost=len(lost),
        newest_lost_age_s=round(min(lost.values()), 3) if lost else None,
        restart_s=round(restart_s, 2),
        backend_reconnects=run.backend.reconnects,
        settle_failures=run.redis.settle_failures,
    )
    too_old = {m: round(age, 2) for m, age in lost.items() if age > AOF_BOUND}
    assert not too_old, f"entries acknowledged over {AOF_BOUND} s before the kill lost: {too_old}"
    assert not ledger.unexpected, ledger.unexpected[:10]
    assert final == {"stream": 0, "pending": 0, "retry": 0, "dlq": 0}


@pytest.mark.timeout(180)
async def test_every_client_connection_killed_every_two_seconds_loses_nothing(
    redis_server: RedisServer, fault_queue: str, probe: StreamProbe, start_run: StartRun
) -> None:
    """`CLIENT KILL TYPE normal` every 2 s, five times, while consuming: every entry is
    processed, the queue ends empty, duplicates are counted."""
    n, kills, interval = 3_000, 5, 2.0
    began = time.monotonic()
    ids = numbered_ids(n)
    ledger = Ledger(ids)
    await publish_numbered(redis_server.url, fault_queue, ids)
    # At most 200 entries/s: 15 s of work, so all five kills (about 10 s) land mid-stream.
    run = await start_run(
        url=redis_server.url, queue=fault_queue, workers=[LedgerWorker(ledger, delay=0.05)]
    )

    killed_clients = []
    connections_before = await asyncio.to_thread(_connections_received, redis_server.port)
    last_kill = _now()
    for _ in range(kills):
        await run.wait_consuming(timeout=RECONNECT_TIMEOUT)
        await asyncio.sleep(max(0.0, last_kill + interval - _now()))  # the fault's pacing
        assert ledger.processed < n, "the stream ended before the last kill: pace it slower"
        last_kill = _now()
        killed = await asyncio.to_thread(
            execute, redis_server.port, "CLIENT", "KILL", "TYPE", "normal"
        )
        assert isinstance(killed, int) and killed >= 1, killed
        killed_clients.append(killed)
        run.assert_running()

    await ledger.wait_complete(timeout=COMPLETE_TIMEOUT)
    final = await run.drain(probe, timeout=COMPLETE_TIMEOUT)
    run.assert_running()
    reconnected = await asyncio.to_thread(_connections_received, redis_server.port)
    await run.stop()
    ledger.assert_complete()
    assert final == {"stream": 0, "pending": 0, "retry": 0, "dlq": 0}
    report(
        "CLIENT KILL TYPE normal every 2 s",
        n,
        ledger,
        began,
        kills=kills,
        clients_killed=killed_clients,
        connections_opened=reconnected - connections_before,
        backend_reconnects=run.backend.reconnects,
        settle_failures=run.redis.settle_failures,
    )


def _connections_received(port: int) -> int:
    """Connections the server accepted since it started (INFO stats)."""
    info = execute(port, "INFO", "stats")
    assert isinstance(info, bytes)
    line = next(ln for ln in info.splitlines() if ln.startswith(b"total_connections_received:"))
    return int(line.partition(b":")[2])


@pytest.mark.timeout(120)
async def test_a_sigkilled_consumers_pending_entries_are_taken_over_by_another(
    redis_url: str, fault_queue: str, probe: StreamProbe, start_run: StartRun, tmp_path: Path
) -> None:
    """A consumer process holding `prefetch` entries is SIGKILLed: another consumer (its
    own name, claim time 1 s) takes them over after the claim time and processes every
    one; nothing stays pending."""
    n, prefetch, claim_idle = 200, 20, 1.0
    began = time.monotonic()
    ids = numbered_ids(n)
    ledger = Ledger(ids)
    held_file = tmp_path / "held"
    await publish_numbered(redis_url, fault_queue, ids)
    crasher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.redis.crash_worker",
        redis_url,
        fault_queue,
        str(held_file),
        "crasher",
        str(claim_idle),
        str(prefetch),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # Given a consumer process holding `prefetch` entries, unsettled
        await wait_until(
            lambda: len(read_lines(held_file)) >= prefetch,
            what=lambda: f"the crash worker holds {prefetch} entries ({read_lines(held_file)})",
            timeout=30,
        )
        assert await probe.pending_of("crasher") == prefetch
        held = set(read_lines(held_file))
        # and another consumer working through the rest, while it lives
        run = await start_run(
            url=redis_url,
            queue=fault_queue,
            workers=[LedgerWorker(ledger)],
            consumer="rescuer",
            claim_idle=claim_idle,
        )
        await wait_until(
            lambda: ledger.processed >= n - prefetch,
            what=lambda: f"the other {n - prefetch} entries processed (now {ledger.processed})",
        )
        assert not held & ledger.counts.keys(), "entries of a live consumer were taken over"

        # When the consumer process is SIGKILLed
        killed_at = _now()
        os.kill(crasher.pid, signal.SIGKILL)
        assert await crasher.wait() == -signal.SIGKILL
    finally:
        if crasher.returncode is None:
            os.kill(crasher.pid, signal.SIGKILL)
            await crasher.wait()

    # Then the other consumer takes its entries over and processes every one
    await ledger.wait_complete(timeout=claim_idle + 30)
    reclaim_s = _now() - killed_at
    final = await run.drain(probe, timeout=30)
    await run.stop()
    ledger.assert_complete()
    assert ledger.duplicates == 0, ledger.summary()
    assert final == {"stream": 0, "pending": 0, "retry": 0, "dlq": 0}
    # The last keep-alive of the killed consumer was at most claim_idle / 3 before the kill.
    assert reclaim_s >= claim_idle / 2, f"taken over {reclaim_s:.2f} s after the kill: too early"
    report(
        "consumer process SIGKILLed with entries pending",
        n,
        ledger,
        began,
        held_by_killed=len(held),
        claim_idle_s=claim_idle,
        reclaim_s=round(reclaim_s, 2),
    )
