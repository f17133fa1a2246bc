"""`foxwork run module:app` on the session broker: one process serving an App of three
pools on three queues (quorum, bound to a topic exchange, passive on a queue that exists
already), every setting from `FOXWORK_*` variables; start-up refusals in one line; SIGTERM
drains every pool."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

from tests.apps.files import read_lines
from tests.apps.process import FoxworkProcess, foxwork_env, run_foxwork
from tests.harness.rabbitmq import RabbitMQNode

from .support import RabbitProbe, wait_until
from .test_cli_run import http_get

#: Seconds the App gets to start, and to process what it is given.
TIMEOUT = 30.0
#: Messages waiting in the pre-existing queue before the App starts.
LEGACY_MESSAGES = 500


class Names:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.invoices = f"{prefix}-invoices"
        self.events = f"{prefix}-events"
        self.exchange = f"{prefix}-exchange"
        self.legacy = f"{prefix}-legacy"

    @property
    def queues(self) -> list[str]:
        return [self.invoices, self.events, self.legacy]


@pytest.fixture
async def names(queue_name: str, probe: RabbitProbe) -> AsyncIterator[Names]:
    """The App's queue names; everything it may have declared is deleted at teardown."""
    names = Names(queue_name)
    yield names
    for queue in names.queues:
        for name in (queue, f"{queue}-dlq"):
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await probe.delete_queues(name)
        with contextlib.suppress(aiormq.exceptions.AMQPError):
            await probe.delete_exchanges(f"{queue}-retry_exchange")
    with contextlib.suppress(aiormq.exceptions.AMQPError):
        await probe.delete_exchanges(names.exchange)


def app_env(url: str | None, names: Names, processed: Path, **extra: str) -> dict[str, str]:
    settings = {"FOXWORK_URL": url} if url is not None else {}
    return foxwork_env(
        **settings,
        FOXWORK_TEST_QUEUE_PREFIX=names.prefix,
        FOXWORK_TEST_PROCESSED_FILE=str(processed),
        **extra,
    )


async def publish_many(
    url: str, messages: list[tuple[str, str, str]], *, exchange: str = ""
) -> None:
    """Publish (routing key, message id, body) triples as a foreign application would."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = (
            await channel.get_exchange(exchange, ensure=False)
            if exchange
            else channel.default_exchange
        )
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(
                        body.encode(), message_id=message_id, content_type="application/json"
                    ),
                    routing_key=key,
                )
                for key, message_id, body in messages
            )
        )
    finally:
        await connection.close()


def processed_ids(path: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(tuple(line.split()) for line in read_lines(path))  # type: ignore[misc]


async def test_one_process_serves_three_pools_from_environment_settings_and_drains_on_sigterm(
    rabbitmq_url: str,
    rabbitmq_node: RabbitMQNode,
    names: Names,
    probe: RabbitProbe,
    tmp_path: Path,
) -> None:
    # Given a plain queue declared by another application, holding 500 messages
    await probe.declare_plain_queue(names.legacy)
    legacy = [f"l{i:03d}" for i in range(LEGACY_MESSAGES)]
    await publish_many(rabbitmq_url, [(names.legacy, i, json.dumps(i)) for i in legacy])
    processed = tmp_path / "processed"
    # When `foxwork run tests.apps.billing:app` starts with settings from the environment
    # only (no flag), logging JSON lines
    env = app_env(
        rabbitmq_url,
        names,
        processed,
        FOXWORK_LOG_FORMAT="json",
        FOXWORK_HEARTBEAT="20",
        FOXWORK_CONNECTION_NAME=f"billing {names.prefix}",
        FOXWORK_HTTP_PORT="0",
        FOXWORK_CONCURRENCY="4",
        FOXWORK_SHUTDOWN_TIMEOUT="10",
        FOXWORK_TEST_DELAY="0.02",
    )
    async with FoxworkProcess("run", "tests.apps.billing:app", env=env) as foxwork:
        [serving] = await foxwork.wait_for(
            r"serving /health, /ready and /metrics on (http://[^\s\"]+)"
        )
        base = serving[1]
        await foxwork.wait_for(r"app 'billing' running 3 pools", timeout=TIMEOUT)
        # Then each pool consumes its own queue, with the concurrency of the environment
        for pool, queue in zip(("invoices", "events", "legacy"), names.queues, strict=True):
            await foxwork.wait_for(
                rf"pool '{pool}' running on .*, consuming {queue} \(concurrency 4,"
            )
        # on one connection, named as the environment says
        connections = await asyncio.to_thread(
            rabbitmq_node.ctl, "list_connections", "client_properties"
        )
        assert connections.count(f"billing {names.prefix}") == 1, connections
        # the invoices queue is a quorum queue, declared by foxwork
        queues = await asyncio.to_thread(rabbitmq_node.ctl, "list_queues", "name", "type")
        types = dict(line.split()[:2] for line in queues.splitlines() if line.count("\t") == 1)
        assert types[names.invoices] == "quorum"
        assert types[names.legacy] == "classic"
        # and it is ready, with every pool listed
        status, body = await http_get(f"{base}/ready")
        assert status == 200, body
        status, body = await http_get(f"{base}/health")
        assert [p["name"] for p in json.loads(body)["app"]["pools"]] == [
            "invoices",
            "events",
            "legacy",
        ]

        # When messages arrive on the quorum queue and on the exchange (bound by order.*)
        invoices = [f"i{i:02d}" for i in range(20)]
        events = [f"e{i:02d}" for i in range(20)]
        await publish_many(rabbitmq_url, [(names.invoices, i, "{}") for i in invoices])
        await publish_many(
            rabbitmq_url, [("order.created", i, "{}") for i in events], exchange=names.exchange
        )
        await publish_many(
            rabbitmq_url, [("invoice.paid", "not-bound", "{}")], exchange=names.exchange
        )

        # Then each pool processes its own, while the legacy backlog drains next to them
        async def others_done() -> bool:
            seen = set(processed_ids(processed))
            return {("invoices", i) for i in invoices} | {("events", i) for i in events} <= seen

        await wait_until(others_done, what="invoices and events processed", timeout=TIMEOUT)
        seen = processed_ids(processed)
        assert {pool for pool, _ in seen} == {"invoices", "events", "legacy"}
        assert ("events", "not-bound") not in seen

        # When SIGTERM arrives while the legacy backlog is still being worked through
        async def some_legacy() -> bool:
            return sum(1 for pool, _ in processed_ids(processed) if pool == "legacy") >= 50

        await wait_until(some_legacy, what="50 legacy messages processed", timeout=TIMEOUT)
        foxwork.send_signal(signal.SIGTERM)

        # Then every pool drains and stops, and the process exits 0
        assert await foxwork.wait(timeout=TIMEOUT) == 0, foxwork.output
    for pool in ("invoices", "events", "legacy"):
        assert re.search(rf"pool '{pool}' stopped: \d+ in-flight", foxwork.output), foxwork.output
    assert "graceful shutdown complete" in foxwork.output
    # and every line of the log is a JSON object with the standard fields
    records = [json.loads(line) for line in foxwork.output.splitlines()]
    assert records, foxwork.output
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
    # and the legacy queue is still the other application's, and no message of it is lost:
    # each was processed, or is back in the queue
    done = {i for pool, i in processed_ids(processed) if pool == "legacy"}
    left = {received.properties.message_id for received in await probe.take(names.legacy)}
    assert done | left == set(legacy)


async def test_a_misspelt_passive_queue_exits_2_with_one_line(
    rabbitmq_url: str, names: Names, probe: RabbitProbe, tmp_path: Path
) -> None:
    # Given an App whose passive queue does not exist (a typo)
    typo = f"{names.prefix}-legasy"
    env = app_env(rabbitmq_url, names, tmp_path / "processed", FOXWORK_TEST_PASSIVE_QUEUE=typo)
    # When it is run
    done = await run_foxwork("run", "tests.apps.billing:app", env=env)
    # Then it exits 2 with one error line naming the pool and the queue, and no traceback
    assert done.code == 2, done.output
    errors = [line for line in done.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.output
    assert errors[0].startswith("foxwork run: error: cannot start pool 'legacy'")
    assert typo in errors[0]
    assert "Traceback" not in done.output
    # and it never created the queue
    assert not await probe.exists(typo)


async def test_without_a_url_it_exits_2_with_one_line(names: Names, tmp_path: Path) -> None:
    done = await run_foxwork(
        "run", "tests.apps.billing:app", env=app_env(None, names, tmp_path / "processed")
    )
    assert done.code == 2, done.output
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "foxwork run: error: no broker URL: pass --url amqp://... or set $FOXWORK_URL, or "
        "pass --memory to run on the in-memory backend"
    ]


async def test_a_pool_attached_with_topology_passive_refuses_a_queue_that_does_not_exist(
    rabbitmq_url: str, names: Names, probe: RabbitProbe
) -> None:
    # Given a single pool run with `--topology passive` on a queue name with a typo
    typo = f"{names.prefix}-ordres"
    env = foxwork_env(FOXWORK_URL=rabbitmq_url, FOXWORK_TOPOLOGY="passive")
    # When it is run
    done = await run_foxwork("run", "tests.cli_app:pool", "--queue", typo, env=env)
    # Then it exits 2 with one error line naming the queue, and creates nothing
    assert done.code == 2, done.output
    errors = [line for line in done.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.output
    assert typo in errors[0] and "Traceback" not in done.output
    assert not await probe.exists(typo)
    assert not await probe.exists(f"{typo}-dlq")
