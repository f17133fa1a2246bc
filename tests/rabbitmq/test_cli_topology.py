"""`foxwork topology plan | apply` as a user runs them: a subprocess against the session
broker, on queues that exist with other arguments, are missing, or are new."""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator

import pytest

from tests.apps.process import foxwork_env, run_foxwork
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import UserFactory
from .support import RabbitProbe


@pytest.fixture
async def cleanup(probe: RabbitProbe, queue_name: str) -> AsyncIterator[None]:
    """Deletes what the commands declared for `queue_name` (and a second queue)."""
    yield None
    for queue in (queue_name, f"{queue_name}-2"):
        await probe.delete_queues(queue, f"{queue}-dlq")
        await probe.delete_exchanges(f"{queue}-retry_exchange", f"{queue_name}-events")


def policy_line(output: str) -> str:
    [line] = [line.strip() for line in output.splitlines() if "rabbitmqctl set_policy" in line]
    return line


async def test_plan_on_an_existing_plain_queue_prints_the_conflict_and_the_set_policy_command(
    rabbitmq_url: str,
    rabbitmq_node: RabbitMQNode,
    probe: RabbitProbe,
    queue_name: str,
    cleanup: None,
) -> None:
    # Given a plain durable queue another application declared, holding a message
    await probe.declare_plain_queue(queue_name, **{"x-max-length": 100})
    await probe.publish(b"{}", routing_key=queue_name, message_id="kept")

    # When foxwork topology plan looks at it
    done = await run_foxwork(
        "topology", "plan", "--queue", queue_name, env=foxwork_env(FOXWORK_URL=rabbitmq_url)
    )

    # Then it exits 1 (apply would be refused) and shows every object and what it knows
    assert done.code == 1, done.output
    out = done.stdout
    assert f"queue    '{queue_name}-dlq' (durable, arguments " in out
    assert f"'{queue_name}-dlq'" in out and "would be declared" in out
    assert f"exchange '{queue_name}-retry_exchange' (direct, durable): would be declared" in out
    assert f"queue    '{queue_name}' (durable, arguments " in out
    assert f"CONFLICT: queue '{queue_name}' already exists with x-" in out
    assert "AMQP cannot read a queue's arguments" in out
    assert "--topology passive" in out
    # and the exact command that gives the queue dead-lettering to Q-dlq
    expected = (
        f"rabbitmqctl set_policy -p / foxwork-{queue_name} '^{queue_name}$' "
        f'\'{{"dead-letter-exchange":"","dead-letter-routing-key":"{queue_name}-dlq"}}\' '
        "--apply-to queues"
    )
    assert policy_line(out) == expected
    # and it declared nothing: the DLQ does not exist, the queue still holds its message
    assert not await probe.exists(f"{queue_name}-dlq")
    assert await probe.ready(queue_name) == 1

    # When the printed policy is applied (with the node's rabbitmqctl), and Q-dlq exists
    rabbitmq_node.ctl(*shlex.split(policy_line(out))[1:])
    await probe.declare_plain_queue(f"{queue_name}-dlq", **{"x-queue-type": "classic"})

    # Then a message the queue rejects reaches Q-dlq, and the queue still holds nothing else
    async with probe.channel() as channel:
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(no_ack=False, timeout=5)
        assert message is not None
        await message.reject(requeue=False)
    await probe.wait_for_ready(f"{queue_name}-dlq", 1)
    [dead] = await probe.take(f"{queue_name}-dlq")
    assert dead.message_id == "kept"


async def test_plan_of_a_passive_queue_reports_a_missing_one_and_an_existing_one(
    rabbitmq_url: str, probe: RabbitProbe, queue_name: str, cleanup: None
) -> None:
    # Given one queue that exists and one that does not
    await probe.declare_plain_queue(queue_name)
    missing = f"{queue_name}-2"

    # When both are planned as passive queues
    done = await run_foxwork(
        "topology",
        "plan",
        "--url",
        rabbitmq_url,
        "--topology",
        "passive",
        "--queue",
        queue_name,
        "--queue",
        missing,
    )

    # Then the existing one is fine, the missing one is reported and refused
    assert done.code == 1, done.output
    assert (
        f"queue    '{queue_name}' (must exist: attached passively, never declared): exists"
        in done.stdout
    )
    assert f"queue    '{missing}' (must exist: attached passively, never declared): MISSING" in (
        done.stdout
    )
    assert "rabbitmqctl set_policy" not in done.stdout
    assert not await probe.exists(missing)


async def test_apply_declares_the_topology_and_plan_then_finds_it_all(
    rabbitmq_url: str, probe: RabbitProbe, queue_name: str, cleanup: None
) -> None:
    # Given a new quorum queue bound to a topic exchange
    exchange = f"{queue_name}-events"
    flags = [
        "--url",
        rabbitmq_url,
        "--queue",
        queue_name,
        "--queue-type",
        "quorum",
        "--delivery-limit",
        "4",
        "--exchange",
        exchange,
        "--binding-key",
        "order.*",
    ]

    # When it is applied
    applied = await run_foxwork("topology", "apply", *flags)

    # Then every object was declared, and a message published to the exchange is routed
    assert applied.code == 0, applied.output
    arguments = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue_name}-dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-delivery-limit": 4,
        "x-overflow": "reject-publish",
        "x-queue-type": "quorum",
    }
    assert (
        f"queue    '{queue_name}' (durable, arguments {json.dumps(arguments, sort_keys=True)})"
        ": declared" in applied.stdout
    )
    assert f"exchange '{exchange}' (topic, durable): declared" in applied.stdout
    assert "routing key 'order.*': bound" in applied.stdout
    await probe.publish(b"{}", routing_key="order.created", exchange=exchange, message_id="x")
    await probe.wait_for_ready(queue_name, 1)

    # And a plan now finds everything as foxwork declares it
    planned = await run_foxwork("topology", "plan", *flags)
    assert planned.code == 0, planned.output
    assert "CONFLICT" not in planned.stdout and "would be declared" not in planned.stdout
    assert planned.stdout.count(": exists") == 4  # Q-dlq, Q, the exchange, the retry exchange


async def test_apply_on_a_conflicting_queue_exits_2_and_keeps_the_queue(
    rabbitmq_url: str, probe: RabbitProbe, queue_name: str, cleanup: None
) -> None:
    await probe.declare_plain_queue(queue_name)
    await probe.publish(b"{}", routing_key=queue_name, message_id="kept")

    done = await run_foxwork("topology", "apply", "--url", rabbitmq_url, "--queue", queue_name)

    assert done.code == 2, done.output
    assert "REFUSED" in done.stdout
    assert "rabbitmqctl set_policy" in done.stdout
    assert f"foxwork topology: error: the broker refused the topology of '{queue_name}'" in (
        done.stderr
    )
    assert await probe.ready(queue_name) == 1


async def test_plan_without_a_url_is_a_usage_error() -> None:
    done = await run_foxwork("topology", "plan", "--queue", "orders", env=foxwork_env())

    assert done.code == 2
    assert "no broker URL" in done.stderr


async def test_plan_refuses_a_passive_queue_with_an_exchange(rabbitmq_url: str) -> None:
    done = await run_foxwork(
        "topology",
        "plan",
        "--url",
        rabbitmq_url,
        "--queue",
        "orders",
        "--topology",
        "passive",
        "--exchange",
        "shop",
    )

    assert done.code == 2
    assert "queue 'orders' is passive" in done.stderr


async def test_plan_as_a_user_who_may_not_declare_says_what_it_cannot_check(
    make_user: UserFactory, probe: RabbitProbe, queue_name: str, cleanup: None
) -> None:
    # Given an existing queue, and a user without the configure permission
    await probe.declare_plain_queue(queue_name)
    _, url = make_user(configure="^$")

    # When that user plans it
    done = await run_foxwork("topology", "plan", "--url", url, "--queue", queue_name)

    # Then the queue is reported as not checkable, without a policy for a conflict it
    # could not see
    assert done.code == 1, done.output
    assert "CANNOT CHECK" in done.stdout and "ACCESS_REFUSED" in done.stdout
    assert "rabbitmqctl set_policy" not in done.stdout
