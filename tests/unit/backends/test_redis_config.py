"""RedisStreamsConfig: cluster mode is asked for explicitly and its URLs are checked up front,
with messages that say what to change and never show a password."""

from __future__ import annotations

import pytest

from foxwork import ConfigurationError
from foxwork.backends.redis import RedisStreamsBackend, RedisStreamsConfig
from foxwork.backends.redis.connection import node_connections

NODES = ["redis://:s3cret@10.0.0.1:6379", "redis://:s3cret@10.0.0.2:6379/0"]


def test_cluster_mode_is_off_unless_asked_for_even_with_several_urls() -> None:
    # Several URLs without cluster=True stay a single server's fallbacks
    assert RedisStreamsConfig(url=NODES, queue="orders").cluster is False
    assert RedisStreamsConfig(url=NODES, queue="orders", cluster=True).cluster is True


@pytest.mark.parametrize(
    "urls",
    [
        ["redis://10.0.0.1:6379"],
        ["redis://10.0.0.1:6379/", "redis://10.0.0.2:6379/0"],
        ["rediss://user:pw@10.0.0.1:6380/0", "rediss://user:pw@10.0.0.2:6380"],
        ["redis://10.0.0.1:6379?db=0"],
    ],
)
def test_cluster_urls_on_database_0_with_one_scheme_and_login_are_taken(urls: list[str]) -> None:
    config = RedisStreamsConfig(url=urls, queue=["orders", "refunds"], cluster=True)
    assert config.urls == urls


@pytest.mark.parametrize(
    ("urls", "says"),
    [
        (["redis://:s3cret@10.0.0.1:6379/2"], r"selects database '2': a Redis Cluster has only"),
        (["redis://:s3cret@10.0.0.1:6379?db=1"], r"selects database '1'"),
        (
            ["redis://:s3cret@10.0.0.1:6379", "rediss://:s3cret@10.0.0.2:6380"],
            r"mix redis:// and rediss://",
        ),
        (
            ["redis://:s3cret@10.0.0.1:6379", "redis://:other@10.0.0.2:6379"],
            r"different credentials",
        ),
    ],
)
def test_cluster_urls_that_cannot_be_one_cluster_are_refused_up_front(
    urls: list[str], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        RedisStreamsConfig(url=urls, queue="orders", cluster=True)
    assert "s3cret" not in str(caught.value) and "other" not in str(caught.value)
    assert str(caught.value).startswith("invalid RedisStreamsConfig: ")


def test_a_database_other_than_0_is_fine_for_a_single_server() -> None:
    assert not RedisStreamsConfig(url="redis://10.0.0.1:6379/2", queue="orders").cluster


def test_the_backend_takes_cluster_as_a_keyword_setting_too() -> None:
    backend = RedisStreamsBackend(url=NODES, queue="orders", cluster=True)
    assert backend.config.cluster is True
    with pytest.raises(ConfigurationError, match="selects database '3'"):
        RedisStreamsBackend(url="redis://10.0.0.1/3", queue="orders", cluster=True)


def test_each_master_allows_the_settlements_plus_one_read_and_one_mover_per_queue() -> None:
    config = RedisStreamsConfig(url=NODES, queue=["a", "b", "c"], cluster=True, max_connections=10)
    assert node_connections(config) == 10 + 2 * 3
