"""`App`: several pools on one backend, built and checked up front; `foxwork run` loading
an App or a pool, with clear errors for what is neither."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foxwork import App, Message, PoolState, Settings, Worker, WorkerPool, cli
from foxwork.backends import MemoryBackend
from foxwork.backends.rabbitmq import RabbitMQBackend
from foxwork.backends.rabbitmq.config import QueueSettings, QueueType, TopologyMode
from foxwork.backends.resilient import ResilientBackend
from foxwork.cli.run import load_target
from foxwork.errors import ConfigurationError, PoolStateError
from foxwork.middleware import AckNackMiddleware
from foxwork.settings import resolve_settings
from tests.support.waiting import wait_until

URL = "amqp://app:s3cret@127.0.0.1:5672/"


class Held(Worker[Any]):
    """Holds every message until `release` is set."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def process(self, message: Message[Any]) -> None:
        self.started.set()
        await self.release.wait()


class Counting(Worker[Any]):
    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.count = 0

    async def process(self, message: Message[Any]) -> None:
        self.count += 1


def pool(name: str, *workers: Worker[Any], queues: tuple[str, ...] = ()) -> WorkerPool:
    return WorkerPool(
        workers=list(workers) or [Counting(name)],
        middleware=[AckNackMiddleware()],
        concurrency_limit=1,
        queues=queues,
        name=name,
    )


def three_pools() -> App:
    app = App("billing")
    app.add(pool("a"), queues=["a"], queue_type="quorum")
    app.add(pool("b"), queues=["b"], exchange="events", binding_keys=["order.*"])
    app.add(pool("c"), queues=["c"], topology="passive")
    return app


def test_an_app_builds_one_rabbitmq_config_with_each_queues_own_settings():
    # Given an App of three pools, each with queue settings of its own
    app = three_pools()
    # When its backend is made for a RabbitMQ URL
    backend = app.make_backend(resolve_settings({"url": [URL], "heartbeat": 30}))
    # Then it is one backend for every queue, reconnected forever, with each queue's settings
    assert isinstance(backend, ResilientBackend)
    inner = backend.backend
    assert isinstance(inner, RabbitMQBackend)
    config = inner.config
    assert config.queues == ("a", "b", "c")
    assert config.heartbeat == 30
    assert config.settings_for("a").queue_type is QueueType.QUORUM
    assert config.settings_for("b").exchange == "events"
    assert config.settings_for("b").binding_keys == ("order.*",)
    assert config.settings_for("c").topology is TopologyMode.PASSIVE
    assert config.settings_for("c").queue_type is QueueType.CLASSIC
    assert app.queue_settings() == {
        "a": QueueSettings(queue_type=QueueType.QUORUM),
        "b": QueueSettings(exchange="events", binding_keys=["order.*"]),
        "c": QueueSettings(topology=TopologyMode.PASSIVE),
    }


def test_queue_settings_meant_for_rabbitmq_are_refused_on_redis():
    pytest.importorskip("redis")
    with pytest.raises(ConfigurationError, match="queue 'a' has settings of its own"):
        three_pools().make_backend(resolve_settings({"url": ["redis://127.0.0.1:1/0"]}))
    app = App("plain")
    app.add(pool("a"), queues=["a"])
    with pytest.raises(ConfigurationError, match="heartbeat apply to RabbitMQ only"):
        app.make_backend(resolve_settings({"url": ["redis://127.0.0.1:1/0"], "heartbeat": 5}))


def test_redis_cluster_makes_a_cluster_config_of_every_url():
    pytest.importorskip("redis")
    from foxwork.backends.redis import RedisStreamsBackend

    # Given an App, and two startup nodes of a Redis Cluster with redis_cluster set
    app = App("plain")
    app.add(pool("a"), queues=["a", "b"])
    urls = ["redis://:pw@10.0.0.1:7000/", "redis://:pw@10.0.0.2:7000/"]
    for value, cluster in ((True, True), (False, False), (None, False)):
        given: dict[str, Any] = {"url": urls}
        if value is not None:
            given["redis_cluster"] = value
        # When its backend is made
        backend = app.make_backend(resolve_settings(given))
        # Then it is one Redis Streams backend whose config says cluster or not, every URL kept
        assert isinstance(backend, ResilientBackend)
        inner = backend.backend
        assert isinstance(inner, RedisStreamsBackend)
        assert (inner.config.cluster, inner.config.urls, inner.config.queues) == (
            cluster,
            urls,
            ("a", "b"),
        )


def test_a_cluster_config_the_cluster_cannot_take_is_refused_when_made():
    pytest.importorskip("redis")
    app = App("plain")
    app.add(pool("a"), queues=["a"])
    settings = resolve_settings({"url": ["redis://127.0.0.1:7000/3"], "redis_cluster": True})
    with pytest.raises(ConfigurationError, match="a Redis Cluster has only database 0"):
        app.make_backend(settings)


@pytest.mark.parametrize("value", [True, False])
def test_redis_cluster_is_refused_on_rabbitmq(value: bool):
    app = App("plain")
    app.add(pool("a"), queues=["a"])
    settings = resolve_settings({"url": [URL], "redis_cluster": value})
    with pytest.raises(ConfigurationError, match="redis_cluster apply to Redis Streams only"):
        app.make_backend(settings)
    # and left unset, it is no obstacle
    assert isinstance(app.make_backend(resolve_settings({"url": [URL]})), ResilientBackend)


@pytest.mark.parametrize(
    ("add", "error"),
    [
        (lambda app, p: app.add(p), "name its queues"),
        (lambda app, p: app.add(p, queues=["a"]), "queue 'a' is consumed by pool 'a' already"),
        (lambda app, p: app.add(p, queues=["x"], exchange_type="fan"), "not an exchange type"),
        (lambda app, p: app.add(p, queues=["x"], topology="lazy"), "topology"),
        (lambda app, p: app.add(42, queues=["x"]), "pass a foxwork.WorkerPool"),
    ],
)
def test_add_refuses_what_cannot_run(add: Any, error: str):
    app = App("billing")
    app.add(pool("a"), queues=["a"])
    with pytest.raises(ConfigurationError, match=error):
        add(app, pool("other"))


def test_settings_are_given_one_way():
    with pytest.raises(ConfigurationError, match="give the settings one way"):
        App("x", settings=Settings(heartbeat=5), heartbeat=6)
    assert App("x", heartbeat=6).settings.heartbeat == 6


async def test_a_stalled_pool_does_not_hold_up_another():
    # Given an App whose pool "slow" holds its only slot, and a pool "fast" next to it
    held = Held("held")
    fast = Counting("fast")
    app = App("two")
    app.add(pool("slow", held), queues=["slow"])
    app.add(pool("fast", fast), queues=["fast"])
    backend = MemoryBackend(queues=["slow", "fast"])
    for _ in range(3):
        await backend.add_message("slow", {})
    for _ in range(20):
        await backend.add_message("fast", {})
    # When it runs
    await app.start(backend)
    try:
        await asyncio.wait_for(held.started.wait(), timeout=5)
        # Then the fast pool processes all of its messages meanwhile
        await asyncio.wait_for(backend.join("fast", timeout=5), timeout=6)
        assert fast.count == 20
        assert app.readiness() == []
    finally:
        held.release.set()
        await app.shutdown(5)
    assert app.state is PoolState.STOPPED
    assert [p.state for p in app.pools] == [PoolState.STOPPED, PoolState.STOPPED]


async def test_when_one_pool_cannot_start_the_ones_started_stop_and_it_says_which():
    # Given an App whose second pool consumes a queue the backend does not have
    app = App("two")
    app.add(pool("a"), queues=["a"])
    app.add(pool("b"), queues=["missing"])

    class OneQueue(MemoryBackend):
        async def declare(self, queue: str) -> None:
            if queue == "missing":
                raise ConfigurationError("no queue 'missing'")
            await super().declare(queue)

    # When it starts
    with pytest.raises(ConfigurationError):
        await app.start(OneQueue(queues=["a"]))
    # Then it names the pool, and no pool runs
    assert app.failed_pool is app.pools[1]
    assert [p.state for p in app.pools] == [PoolState.STOPPED, PoolState.STOPPED]
    with pytest.raises(PoolStateError):
        await app.start(MemoryBackend(queues=["a"]))


async def test_readiness_names_the_pool_and_the_queue_without_a_consumer():
    app = three_pools()
    assert "app is created, not running" in app.readiness()
    backend = MemoryBackend(queues=["a", "b", "c"])
    await app.start(backend)
    try:
        assert app.readiness() == []
        health = app.health()
        assert [p["name"] for p in health["pools"]] == ["a", "b", "c"]
        await app.pools[1].shutdown(0)
        assert app.readiness() == [
            "pool 'b' is stopped, not running",
            "pool 'b': no active consumer on b",
        ]
    finally:
        await app.shutdown(0)


async def test_run_without_a_backend_uses_the_settings(monkeypatch: pytest.MonkeyPatch):
    # Given an App told in the environment to run in memory, with a concurrency override
    monkeypatch.setenv("FOXWORK_MEMORY", "true")
    monkeypatch.setenv("FOXWORK_CONCURRENCY", "3")
    app = App("mem")
    app.add(pool("a"), queues=["a"])
    running = asyncio.create_task(app.run())

    async def started() -> bool:
        return app.state is PoolState.RUNNING

    await wait_until(started, what="the App runs", timeout=5)
    # Then it runs on the in-memory backend, each pool with the concurrency of the env
    assert isinstance(app.backend, MemoryBackend)
    assert app.pools[0].concurrency_limit == 3
    await app.shutdown(0)
    await asyncio.wait_for(running, timeout=5)


# -- foxwork run: loading ----------------------------------------------------------------


def test_run_loads_an_app_or_a_factory_of_one():
    assert isinstance(load_target("tests.apps.billing:app"), App)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            "tests/cli_app.py:pool",
            "names a file: give the module, without .py (tests.cli_app:pool)",
        ),
        ("tests.cli_app:EchoWorker", "is a class (EchoWorker), not a pool or a factory"),
        ("tests.cli_app:not_a_pool", "is a int: expected a WorkerPool or an App"),
    ],
)
def test_run_explains_a_target_that_is_no_pool(
    target: str, error: str, capsys: pytest.CaptureFixture[str]
):
    assert cli.main(["run", target]) == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1


def test_run_refuses_queue_for_an_app(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["run", "tests.apps.billing:app", "--queue", "x", "--memory"]) == 2
    assert "--queue is for a single pool" in capsys.readouterr().err


def test_the_topology_mode_reaches_every_queue_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
):
    # Given an App whose queue "c" is passive in code, and "a" left to the App-wide mode
    app = App("shop")
    app.add(pool("a"), queues=["a"], queue_type="quorum")
    app.add(pool("c"), queues=["c"], topology="passive")
    # When the environment says passive for every queue
    monkeypatch.setenv("FOXWORK_TOPOLOGY", "passive")
    settings = resolve_settings(app.settings, flags={"url": [URL]})
    backend = app.make_backend(settings)
    # Then every queue is attached passively, and a queue of its own settings keeps them
    assert isinstance(backend, ResilientBackend) and isinstance(backend.backend, RabbitMQBackend)
    config = backend.backend.config
    assert config.topology is TopologyMode.PASSIVE
    assert config.settings_for("a").queue_type is QueueType.QUORUM
    assert config.settings_for("a").topology is TopologyMode.PASSIVE
    # And the flag beats the environment
    settings = resolve_settings(app.settings, flags={"url": [URL], "topology": "declare"})
    backend = app.make_backend(settings)
    assert isinstance(backend, ResilientBackend) and isinstance(backend.backend, RabbitMQBackend)
    assert backend.backend.config.settings_for("a").topology is TopologyMode.DECLARE
    assert backend.backend.config.settings_for("c").topology is TopologyMode.PASSIVE
