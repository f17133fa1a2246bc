"""The deployment recipes in deploy/: valid, consistent with each other, and what they run
works.

No image is built here (there is no Docker daemon to build with); instead:
- the Dockerfile passes hadolint, the compose file the Compose Specification's schema, and
  the Kubernetes manifest the API schemas (strict: no unknown fields);
- the three agree: the same `foxwork run` arguments, probes on the port foxwork serves,
  a grace period longer than the drain, the same non-root user;
- the command line they give, run against the test broker, becomes ready, processes and
  dead-letters orders, and drains and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from tests.apps.process import FoxworkProcess, foxwork_env
from tests.rabbitmq.test_cli_run import http_get
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent

_CMD = re.compile(r"^CMD (\[.*\])$", re.MULTILINE)
_ENTRYPOINT = re.compile(r"^ENTRYPOINT (\[.*\])$", re.MULTILINE)
_USER = re.compile(r"^USER (\d+)$", re.MULTILINE)


def _tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _manifest() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())
    return {document["kind"]: document for document in documents}


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _container() -> dict[str, Any]:
    pod = _manifest()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


# -- valid ---------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    done = _tool("hadolint", "--failure-threshold", "style", DEPLOY / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = _tool(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml"
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_kubernetes_manifest_passes_the_api_schemas_strictly() -> None:
    done = _tool("kubernetes-validate", "--strict", DEPLOY / "kubernetes.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == 2, done.stdout


# -- consistent ----------------------------------------------------------------------------


def test_the_three_recipes_run_the_same_command() -> None:
    entrypoint = json.loads(_ENTRYPOINT.search(_dockerfile())[1])  # type: ignore[index]
    image_args = json.loads(_CMD.search(_dockerfile())[1])  # type: ignore[index]
    compose_args = _compose()["services"]["orders"]["command"]
    kubernetes_args = _container()["args"]
    assert entrypoint == ["foxwork", "run"]
    # compose and Kubernetes start before the broker may be up: they wait for it
    assert compose_args == kubernetes_args == [*image_args, "--wait-for-broker"]


def test_the_probes_and_ports_match_what_foxwork_serves() -> None:
    container = _container()
    port = int(_option(container["args"], "--http-port"))
    assert _option(container["args"], "--http-host") == "0.0.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert f"EXPOSE {port}" in _dockerfile()
    assert f"http://127.0.0.1:{port}/health" in _dockerfile()
    assert _compose()["services"]["orders"]["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_every_recipe_waits_longer_than_the_drain_before_killing() -> None:
    container = _container()
    drain = float(_option(container["args"], "--shutdown-timeout"))
    pod = _manifest()["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain
    grace = _compose()["services"]["orders"]["stop_grace_period"]
    assert float(grace.removesuffix("s")) > drain


def test_the_container_runs_as_the_images_non_root_user() -> None:
    uid = int(_USER.search(_dockerfile())[1])  # type: ignore[index]
    assert f"--uid {uid} " in _dockerfile()
    security = _manifest()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security == {"runAsNonRoot": True, "runAsUser": uid}
    assert uid != 0


def test_the_broker_url_comes_from_a_secret_not_the_manifest_args() -> None:
    container = _container()
    (env,) = container["env"]
    assert env["name"] == "FOXWORK_URL"
    assert env["valueFrom"]["secretKeyRef"]["name"] == _manifest()["Secret"]["metadata"]["name"]
    assert not any("amqp" in arg for arg in container["args"])


# -- what they run works -------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_the_recipes_command_serves_orders_and_drains_on_sigterm(
    rabbitmq_url: str, queue_name: str
) -> None:
    # Given the recipes' command line, with the port and interface made test-safe and the
    # test's own queue, run as the image runs it (the app module on the path, the URL from
    # the environment)
    args = list(_container()["args"])
    args[args.index("--http-port") + 1] = "0"
    args[args.index("--http-host") + 1] = "127.0.0.1"
    env = foxwork_env(FOXWORK_URL=rabbitmq_url, PYTHONPATH=str(DEPLOY))
    async with FoxworkProcess("run", *args, "--queue", queue_name, env=env) as foxwork:
        [serving] = await foxwork.wait_for(r"on (http://127\.0\.0\.1:\d+)")
        await foxwork.wait_for(r"pool .* running on")
        status, body = await http_get(f"{serving[1]}/ready")
        assert status == 200, body

        # When two orders arrive, one of them invalid
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            channel = await connection.channel()
            for order in (
                {"order_id": 1, "sku": "AB-1"},
                {"order_id": 2, "sku": "X", "quantity": 0},
            ):
                message = aio_pika.Message(
                    json.dumps(order).encode(), content_type="application/json"
                )
                await channel.default_exchange.publish(message, routing_key=queue_name)

            # Then the valid one is processed and the invalid one dead-lettered
            await foxwork.wait_for(r"order 1: reserved 1 x AB-1")
            dlq = await channel.declare_queue(f"{queue_name}-dlq", passive=True)
            dead: list[aio_pika.abc.AbstractIncomingMessage] = []

            async def dead_lettered() -> bool:
                got = await dlq.get(fail=False)
                if got is not None:
                    dead.append(got)
                return bool(dead)

            await wait_until(dead_lettered, what="a dead letter in the DLQ", timeout=20)
            [dead_letter] = dead
            await dead_letter.ack()
            assert json.loads(dead_letter.body)["order_id"] == 2
            assert dead_letter.headers["x-exception-type"] == "foxwork.errors.DeadLetter"

            # And SIGTERM drains and exits 0
            foxwork.send_signal(signal.SIGTERM)
            assert await foxwork.wait() == 0, foxwork.output
        finally:
            for name in (queue_name, f"{queue_name}-dlq"):
                channel = await connection.channel()
                await channel.queue_delete(name)
            await connection.close()
