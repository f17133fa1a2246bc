"""Self-tests of the real-broker harness (tests/harness); independent of the foxwork package."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.harness.pytest_plugin import make_cluster, validate_loopback_url
from tests.harness.rabbitmq import RabbitMQNode

QUEUE = "foxwork-harness-durable"


def _declare_durable_queue(node: RabbitMQNode, name: str) -> None:
    node.ctl(
        "eval",
        f'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"{name}">>), '
        'true, false, [], none, <<"guest">>).',
    )
    assert _queues(node).get(name) == "true"
    # Mnesia writes its transaction log through a buffer: a SIGKILL right after the declare
    # can lose it (the broker's own durability promise covers a clean shutdown). Flush it,
    # so what the test checks is the harness restarting the node on its data.
    node.ctl("eval", "ok = mnesia:sync_log().")


def _queues(node: RabbitMQNode) -> dict[str, str]:
    """Return ``{queue name: durable}`` as listed by rabbitmqctl."""
    out = node.ctl("list_queues", "--quiet", "--no-table-headers", "name", "durable")
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


@pytest.mark.rabbitmq
def test_broker_answers_amqp_protocol_header(rabbitmq_url: str) -> None:
    parts = urlsplit(rabbitmq_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        frame = b""
        while len(frame) < 11:
            chunk = sock.recv(4096)
            assert chunk, "broker closed the connection instead of sending Connection.Start"
            frame += chunk
    assert frame[0] == 1, "expected a method frame"
    assert int.from_bytes(frame[1:3], "big") == 0, "expected channel 0"
    assert frame[7:11] == b"\x00\x0a\x00\x0a", "expected Connection.Start (class 10, method 10)"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.rabbitmq
@pytest.mark.faults
def test_node_survives_kill_and_restart_with_durable_queue(rabbitmq_node: RabbitMQNode) -> None:
    node = rabbitmq_node
    port, beam_pid = node.amqp_port, node.beam_pid
    _declare_durable_queue(node, QUEUE)
    try:
        node.kill()
        assert not node.is_running
        # The kernel closes the listening socket once the killed process is torn down,
        # which can take a moment after SIGKILL: wait for it, with a deadline.
        deadline = time.monotonic() + 10
        while _accepts(port):
            assert time.monotonic() < deadline, f"port {port} still accepts after the kill"
            time.sleep(0.05)

        node.restart()
        assert node.is_running
        assert node.amqp_port == port
        assert node.beam_pid not in (None, beam_pid)
        assert _queues(node).get(QUEUE) == "true"
    finally:
        if not node.is_running:
            node.restart()
        node.ctl("delete_queue", QUEUE)


@pytest.mark.parametrize(
    "url",
    ["amqp://guest:guest@127.0.0.1:5672/", "amqps://localhost/", "amqp://u:p@[::1]:5672/x"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert validate_loopback_url(url) == url


@pytest.mark.parametrize(
    "url", ["amqp://guest:guest@10.0.0.5:5672/", "amqp://rabbit.example.com/", "http://127.0.0.1/"]
)
def test_non_loopback_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        validate_loopback_url(url)


@pytest.mark.rabbitmq
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_make_cluster_joins_all_nodes() -> None:
    with make_cluster(3) as cluster:
        assert len({node.amqp_port for node in cluster}) == 3
        status = json.loads(cluster.nodes[0].ctl("cluster_status", "--formatter", "json"))
        assert sorted(status["running_nodes"]) == sorted(node.name for node in cluster)
        for url in cluster.urls:
            assert urlsplit(url).hostname == "127.0.0.1"
    assert not any(node.is_running for node in cluster)
    assert not cluster.base_dir.exists()
