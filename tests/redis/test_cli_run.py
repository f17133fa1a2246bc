"""`foxwork run --url redis://...` against the session Redis server, as a subprocess: it
consumes from Redis Streams, alone or as several worker processes of one consumer group,
and stops gracefully on SIGTERM."""

from __future__ import annotations

import collections
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env

from .support import StreamProbe, numbered_ids, publish_numbered, wait_until

#: Seconds to wait for a worker process to start, or for all entries to be processed.
START_TIMEOUT = 20.0


@pytest.fixture
async def probe(redis_url: str, queue_name: str) -> AsyncIterator[StreamProbe]:
    """The test queue's keys; deleted at teardown."""
    async with StreamProbe(redis_url, queue_name) as stream_probe:
        yield stream_probe


def recorder(url: str, queue: str, tmp_path: Path, *options: str) -> FoxworkProcess:
    """`foxwork run tests.apps.recorder:pool` on `queue` of the Redis server at `url`."""
    env = foxwork_env(FOXWORK_TEST_PROCESSED_FILE=str(tmp_path / "processed"))
    command = ["run", "tests.apps.recorder:pool", "--url", url, "--queue", queue, *options]
    return FoxworkProcess(*command, env=env)


def processed(tmp_path: Path) -> list[tuple[int, str]]:
    """(PID, MESSAGE_ID) of every line `tests.apps.recorder` appended."""
    lines = read_lines(tmp_path / "processed")
    return [(int(pid), message_id) for _, pid, message_id in (line.split() for line in lines)]


async def wait_all_processed(tmp_path: Path, ids: list[str]) -> None:
    await wait_until(
        lambda: set(ids) <= {i for _, i in processed(tmp_path)},
        what=lambda: f"all of {len(ids)} ids processed (now {len(processed(tmp_path))})",
        timeout=START_TIMEOUT,
    )


async def test_run_consumes_from_redis_streams_and_exits_0_on_sigterm(
    redis_url: str, queue_name: str, probe: StreamProbe, tmp_path: Path
) -> None:
    # Given `foxwork run --url redis://...` consuming a queue
    ids = numbered_ids(200)
    async with recorder(redis_url, queue_name, tmp_path, "--concurrency", "8") as foxwork:
        [running] = await foxwork.wait_for(r"pool 'recorder' running on (\S+), consuming (\S+) \(")
        assert running[1] == redis_url
        assert running[2] == queue_name

        # When entries are added to its stream
        await publish_numbered(redis_url, queue_name, ids)

        # Then it processes every one, and acks each (the stream ends empty)
        await wait_all_processed(tmp_path, ids)
        await wait_until(lambda: _empty(probe), what="the stream and its pending list are empty")

        # And SIGTERM stops it gracefully with exit code 0
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait(timeout=START_TIMEOUT) == 0, foxwork.output
    assert "graceful shutdown complete" in foxwork.output
    assert collections.Counter(i for _, i in processed(tmp_path)).keys() == set(ids)
    assert await probe.counts() == {"stream": 0, "pending": 0, "retry": 0, "dlq": 0}


async def test_two_worker_processes_share_the_stream_as_one_consumer_group(
    redis_url: str, queue_name: str, probe: StreamProbe, tmp_path: Path
) -> None:
    # Given `foxwork run --processes 2` on Redis: two consumers (host-pid) in one group
    ids = numbered_ids(120)
    options = ("--processes", "2", "--concurrency", "1", "--prefetch", "2")
    async with recorder(redis_url, queue_name, tmp_path, *options) as foxwork:
        await foxwork.wait_for(r"pool 'recorder' running on", count=2, timeout=START_TIMEOUT)

        # When entries arrive
        await publish_numbered(redis_url, queue_name, ids)

        # Then both worker processes take a share, and each entry is processed
        await wait_all_processed(tmp_path, ids)
        assert {pid for pid, _ in processed(tmp_path)} == set(foxwork.child_pids)
        assert len(foxwork.child_pids) == 2

        # And SIGTERM to the parent stops both gracefully, exit code 0
        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait(timeout=START_TIMEOUT) == 0, foxwork.output
    assert foxwork.output.count("graceful shutdown complete") == 2
    assert await probe.counts() == {"stream": 0, "pending": 0, "retry": 0, "dlq": 0}


async def _empty(probe: StreamProbe) -> bool:
    counts = await probe.counts()
    return counts["stream"] == 0 and counts["pending"] == 0
