"""The Redis Cluster side of the config and of the key layout, without a
server: which settings are accepted, that what a script touches together
shares one hash slot, and that a single server keeps its old key names."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.crc import key_slot

from parley_core.config import ConfigError, RedisSettings, load_settings
from parley_core.storage import redis as redis_storage
from parley_core.storage.liveness import PresenceKeys
from parley_core.storage.redis import Redis
from parley_dev.layout import REDIS_CLUSTER_NODES, StackPorts
from parley_dev.stack import LocalStack
from svc_message.storage.recent import RecentCache


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_cluster_settings_are_checked() -> None:
    settings = load_settings(
        environ={
            "PARLEY_REDIS__URL": "redis://10.0.0.1:7000",
            "PARLEY_REDIS__CLUSTER": "true",
            "PARLEY_REDIS__CLUSTER_NODES": '["10.0.0.2:7000", "[fd00::3]:7000"]',
        }
    )
    assert settings.redis.cluster
    assert settings.redis.cluster_nodes == ("10.0.0.2:7000", "[fd00::3]:7000")
    for environ, key in [
        ({"PARLEY_REDIS__CLUSTER_NODES": '["10.0.0.2:7000"]'}, "cluster_nodes"),
        ({"PARLEY_REDIS__CLUSTER": "true", "PARLEY_REDIS__URL": "unix:///r.sock"}, "url"),
        ({"PARLEY_REDIS__CLUSTER": "true", "PARLEY_REDIS__URL": "redis://h:1/3"}, "url"),
        ({"PARLEY_REDIS__CLUSTER": "true", "PARLEY_REDIS__CLUSTER_NODES": '["h"]'}, "h"),
        ({"PARLEY_REDIS__CLUSTER_PRESENCE_SHARDS": "0"}, "cluster_presence_shards"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_settings(environ=environ)


async def test_a_cluster_handle_tags_keys_and_shards_channels() -> None:
    single = redis_storage.connect(RedisSettings(url="redis://127.0.0.1:1/0"))
    cluster = redis_storage.connect(
        RedisSettings(url="redis://127.0.0.1:1", cluster=True, cluster_nodes=("127.0.0.1:2",))
    )
    try:
        assert (single.cluster, single.tag("c1"), single.publish_command) == (
            False,
            "c1",
            "PUBLISH",
        )
        assert (cluster.cluster, cluster.tag("c1"), cluster.publish_command) == (
            True,
            "{c1}",
            "SPUBLISH",
        )
    finally:
        await single.aclose()
        await cluster.aclose()


def recent_keys(redis: Redis, conversation: str) -> list[str]:
    cache = RecentCache(redis, capacity=10, ttl_seconds=60)
    return cache._keys(conversation)


async def test_the_recent_cache_keys_of_a_conversation_share_a_slot() -> None:
    single = redis_storage.connect(RedisSettings(url="redis://127.0.0.1:1/0"))
    cluster = redis_storage.connect(RedisSettings(url="redis://127.0.0.1:1", cluster=True))
    try:
        # A single server keeps the names it always had.
        assert recent_keys(single, "c1") == ["parley:recent:c1", "parley:recent:c1:m"]
        zset, meta = recent_keys(cluster, "c1")
        assert (zset, meta) == ("parley:recent:{c1}", "parley:recent:{c1}:m")
        assert slot(zset) == slot(meta)
    finally:
        await single.aclose()
        await cluster.aclose()


def test_presence_keys_of_a_single_server_are_the_old_names() -> None:
    keys = PresenceKeys(1)
    assert keys.account("a1") == "parley:p:a1"
    assert (keys.due(0), keys.save(0)) == ("parley:p:due", "parley:p:save")
    assert keys.channel("a1") == "parley:p:c:a1"
    assert keys.account_of("parley:p:c:a1") == "a1"
    assert keys.account_of("parley:p:k:x") is None


def test_presence_keys_of_an_account_share_its_shards_slot() -> None:
    keys = PresenceKeys(128)
    shards = set()
    for n in range(500):
        account = f"account-{n}"
        shard = keys.shard(account)
        shards.add(shard)
        together = [
            keys.account(account),
            keys.due(shard),
            keys.save(shard),
            keys.channel(account),
        ]
        assert len({slot(key) for key in together}) == 1, together
        assert keys.account_of(keys.channel(account)) == account
    # The accounts spread over (nearly) every shard, and the shards over slots.
    assert len(shards) > 120
    assert len({slot(keys.due(s)) for s in range(128)}) == 128


def test_stack_ports_of_a_cluster_are_distinct() -> None:
    free = StackPorts.free(2, redis_cluster=True)
    assert len(free.redis_nodes) == len(free.redis_buses) == REDIS_CLUSTER_NODES
    assert free.redis == free.redis_nodes[0]
    assert len(set(free.all())) == len(free.all())
    defaults = StackPorts.defaults(1, redis_cluster=True)
    assert defaults.redis_nodes == tuple(range(6380, 6380 + REDIS_CLUSTER_NODES))
    assert defaults.redis_buses == tuple(p + 10000 for p in defaults.redis_nodes)
    assert len(set(defaults.all())) == len(defaults.all())


def test_a_local_stack_on_a_cluster_configures_the_services_for_it(tmp_path: Path) -> None:
    stack = LocalStack(
        root=tmp_path, ports=StackPorts.free(1, redis_cluster=True), redis_cluster=True
    )
    nodes = [f"redis-{i}" for i in range(REDIS_CLUSTER_NODES)]
    assert [name for name in stack.component_names if name.startswith("redis")] == nodes
    assert stack.settings.redis.cluster
    assert stack.settings.redis.url == f"redis://127.0.0.1:{stack.ports.redis_nodes[0]}/0"
    assert stack.settings.redis.cluster_nodes == tuple(
        f"127.0.0.1:{port}" for port in stack.ports.redis_nodes[1:]
    )
    single = LocalStack(root=tmp_path / "single", ports=StackPorts.free(1))
    assert "redis" in single.component_names and not single.settings.redis.cluster
