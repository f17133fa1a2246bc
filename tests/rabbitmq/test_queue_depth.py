"""Queue depth on the session broker: `RabbitMQBackend.queue_depth` (ready messages, by a
passive declare), and `foxwork run --http-port` reporting it on /metrics."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.telemetry import QUEUE_DEPTH_INTERVAL
from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env

from .support import wait_until
from .test_cli_run import http_get, publish, publisher  # noqa: F401  (publisher: a fixture)


async def test_depth_counts_ready_messages_and_a_missing_queue_has_none(
    backend: RabbitMQBackend, queue_name: str
) -> None:
    # Given a queue holding three messages and no consumer
    await backend.declare(queue_name)
    assert await backend.queue_depth(queue_name) == 0
    await publish(backend, queue_name, ["a", "b", "c"])

    # Then its depth is 3
    assert await backend.queue_depth(queue_name) == 3
    # and a queue that does not exist has none (the broker closes the channel asked on)
    assert await backend.queue_depth(f"{queue_name}-missing") is None
    # which does not keep the next sample from succeeding
    assert await backend.queue_depth(queue_name) == 3
    # while the backend stays usable
    await publish(backend, queue_name, ["d"])
    assert await backend.queue_depth(queue_name) == 4


async def test_foxwork_run_http_port_reports_the_depth_of_its_queue(
    rabbitmq_url: str,
    queue_name: str,
    publisher: RabbitMQBackend,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    # Given five messages waiting, and a pool that holds the one it takes (prefetch 1)
    await publish(publisher, queue_name, ["m1", "m2", "m3", "m4", "m5"])
    started = tmp_path / "started"
    async with FoxworkProcess(
        "run",
        "tests.apps.slow:pool",
        "--url",
        rabbitmq_url,
        "--queue",
        queue_name,
        "--concurrency",
        "1",
        "--prefetch",
        "1",
        "--shutdown-timeout",
        "1",
        "--http-port",
        "0",
        env=foxwork_env(
            FOXWORK_TEST_STARTED_FILE=str(started),
            FOXWORK_TEST_FINISHED_FILE=str(tmp_path / "finished"),
            FOXWORK_TEST_SLEEP="600",
        ),
    ) as foxwork:
        [serving] = await foxwork.wait_for(r"serving /health, /ready and /metrics on (\S+)")
        base = serving[1]
        await wait_until(lambda: len(read_lines(started)) == 1, what="one message taken")

        # Then /metrics reports the four still waiting (a sample is taken as the pool
        # starts; the wait covers one more round, in case it saw the queue before the
        # first delivery)
        wanted = f'foxwork_queue_depth{{messaging_destination_name="{queue_name}"}} 4'

        async def reported() -> bool:
            status, metrics = await http_get(f"{base}/metrics")
            return status == 200 and wanted in metrics.splitlines()

        await wait_until(
            reported, what=f"/metrics shows {wanted!r}", timeout=QUEUE_DEPTH_INTERVAL + 10
        )
        _, metrics = await http_get(f"{base}/metrics")
        assert len(re.findall(r"^foxwork_queue_depth\{", metrics, re.M)) == 1, metrics

        foxwork.send_signal(signal.SIGTERM)
        assert await foxwork.wait() == 0, foxwork.output
