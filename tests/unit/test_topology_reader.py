"""The services' reader of the region topology file (parley_core.topology).

The reader is written independently of the operator; the contract tests feed
it exactly what parley_operator writes into the topology ConfigMap.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_core.config import ConfigError, load_settings
from parley_core.topology import (
    FORMAT_VERSION,
    SHARD_HASH,
    Topology,
    TopologyError,
    TopologyMetrics,
    TopologyWatcher,
    conversation_shard,
    file_reader,
    parse_topology,
)
from parley_operator import topology as operator_topology
from parley_operator.manifests import Owner, topology_config_map
from parley_operator.spec import parse_region

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="eu-west", uid="0b8f6a3e-7d43-4d0e-9a55-0a5f1c1f0e11")


def _document(generation: int = 7) -> dict[str, Any]:
    """The README's example document."""
    return {
        "format": 1,
        "generation": generation,
        "region": "eu-west",
        "regions": {
            "eu-west": {
                "self": True,
                "publicEndpoint": "chat.eu.example.com:443",
                "peerEndpoint": None,
                "number": 1,
            },
            "us-east": {
                "self": False,
                "publicEndpoint": "chat.us.example.com:443",
                "peerEndpoint": "peer.us-east.example.com:7443",
                "number": 2,
            },
            "ap-south": {
                "self": False,
                "publicEndpoint": None,
                "peerEndpoint": "peer.ap-south.example.com:7443",
                "number": 3,
            },
        },
        "residency": {"homeOnlyData": ["media", "search"], "replicateTo": ["us-east"]},
        "routing": {
            "conversationShards": 128,
            "shardHash": "sha256-first8-mod",
            "services": {
                "keys": "eu-west-keys.parley.svc.cluster.local:7101",
                "message": "eu-west-message.parley.svc.cluster.local:7102",
                "presence": "eu-west-presence.parley.svc.cluster.local:7103",
            },
        },
    }


def _text(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def _region_spec(example: str, name: str) -> Any:
    resource = yaml.safe_load((ROOT / "operator" / "examples" / example).read_text())
    return parse_region(name, "parley", resource["spec"])


# -- parsing -------------------------------------------------------------------


def test_the_readme_example_parses_into_the_model() -> None:
    topology = parse_topology(_text(_document()))
    assert topology.format == FORMAT_VERSION
    assert topology.generation == 7
    assert topology.region == "eu-west"
    assert topology.self_region.public_endpoint == "chat.eu.example.com:443"
    assert topology.self_region.peer_endpoint is None
    assert sorted(p.name for p in topology.peers) == ["ap-south", "us-east"]
    assert topology.regions["ap-south"].public_endpoint is None
    assert topology.regions["us-east"].peer_endpoint == "peer.us-east.example.com:7443"
    assert topology.residency.home_only_data == ("media", "search")
    assert topology.residency.replicate_to == ("us-east",)
    assert topology.routing.conversation_shards == 128
    assert topology.routing.shard_hash == SHARD_HASH
    assert topology.routing.services["message"].endswith(":7102")


def test_the_model_is_immutable() -> None:
    topology = parse_topology(_text(_document()))
    with pytest.raises(AttributeError):
        topology.generation = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        topology.regions["x"] = topology.self_region  # type: ignore[index]
    with pytest.raises(TypeError):
        topology.routing.services["keys"] = "elsewhere:1"  # type: ignore[index]


def test_keys_the_reader_does_not_know_are_ignored() -> None:
    document = _document()
    document["futureField"] = {"anything": 1}
    document["regions"]["us-east"]["weight"] = 3
    assert parse_topology(_text(document)).generation == 7


def _broken(change: Callable[[dict[str, Any]], None]) -> bytes:
    document = copy.deepcopy(_document())
    change(document)
    return _text(document)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[part]
        del node[last]

    return change


INVALID: dict[str, tuple[bytes, str]] = {
    "not json": (b"{not json", "not JSON"),
    "not utf-8": (b"\xff\xfe{}", "not JSON"),
    "a list": (b"[]", "must be an object"),
    "nested too deep": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    "unknown format": (_broken(_set("format", 2)), "format: unknown version 2"),
    "format as text": (_broken(_set("format", "1")), "format: must be an integer"),
    "no format": (_broken(_delete("format")), "format: missing"),
    "unknown shard hash": (
        _broken(_set("routing.shardHash", "crc32-mod")),
        "routing.shardHash: unknown hash 'crc32-mod'",
    ),
    "generation as bool": (_broken(_set("generation", True)), "generation: must be an integer"),
    "negative generation": (_broken(_set("generation", -1)), "generation: must be at least 0"),
    "no generation": (_broken(_delete("generation")), "generation: missing"),
    "empty region": (_broken(_set("region", "")), "region: must be a non-empty string"),
    "no self region": (
        _broken(_set("regions.eu-west.self", False)),
        "exactly one must have self: true, found []",
    ),
    "two self regions": (
        _broken(_set("regions.us-east.self", True)),
        "exactly one must have self: true, found ['eu-west', 'us-east']",
    ),
    "self is another region": (
        _broken(_set("region", "us-east")),
        "the self region is eu-west, but region is us-east",
    ),
    "self as text": (_broken(_set("regions.eu-west.self", "true")), "must be true or false"),
    "region not an object": (_broken(_set("regions.us-east", "peer")), "must be an object"),
    "endpoint as number": (
        _broken(_set("regions.us-east.peerEndpoint", 7443)),
        "regions.us-east.peerEndpoint: must be a non-empty string",
    ),
    "replicate to an unknown region": (
        _broken(_set("residency.replicateTo", ["mars"])),
        "residency.replicateTo: not peer regions: ['mars']",
    ),
    "replicate to itself": (
        _broken(_set("residency.replicateTo", ["eu-west"])),
        "not peer regions: ['eu-west']",
    ),
    "home-only data not a list": (
        _broken(_set("residency.homeOnlyData", "media")),
        "residency.homeOnlyData: must be a list of strings",
    ),
    "zero shards": (
        _broken(_set("routing.conversationShards", 0)),
        "routing.conversationShards: must be at least 1",
    ),
    "shards as float": (
        _broken(_set("routing.conversationShards", 64.0)),
        "routing.conversationShards: must be an integer",
    ),
    "no services": (_broken(_delete("routing.services")), "routing.services: missing"),
    "service address as null": (
        _broken(_set("routing.services.keys", None)),
        "routing.services.keys: must be a non-empty string",
    ),
    "no residency": (_broken(_delete("residency")), "residency: missing"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_document_is_refused_naming_the_field(case: str) -> None:
    content, message = INVALID[case]
    with pytest.raises(TopologyError) as refused:
        parse_topology(content)
    assert message in str(refused.value)


# -- the contract with parley_operator ------------------------------------------


@pytest.mark.parametrize(
    ("example", "name"), [("region-eu-west.yaml", "eu-west"), ("region-minimal.yaml", "parley")]
)
def test_what_the_operator_writes_is_read_back(example: str, name: str) -> None:
    region = _region_spec(example, name)
    document = operator_topology.topology_document(region, generation=12)
    topology = parse_topology(json.dumps(document))
    assert topology.generation == 12
    assert topology.region == region.region
    assert topology.self_region.public_endpoint == region.public_endpoint
    assert {p.name: (p.peer_endpoint, p.public_endpoint) for p in topology.peers} == {
        p.name: (p.endpoint, p.public_endpoint) for p in region.peers
    }
    assert set(topology.residency.home_only_data) == set(region.home_only_data)
    assert set(topology.residency.replicate_to) == set(region.replicate_to)
    assert topology.routing.conversation_shards == region.conversation_shards
    assert dict(topology.routing.services) == {
        svc: operator_topology.service_address(region, svc) for svc in region.services
    }


def test_the_configmap_file_the_operator_writes_is_read_back() -> None:
    region = _region_spec("region-eu-west.yaml", "eu-west")
    config_map = topology_config_map(region, OWNER, generation=3)
    content = config_map["data"][operator_topology.TOPOLOGY_FILE]
    assert parse_topology(content.encode()).generation == 3


def test_both_sides_agree_on_the_version_names() -> None:
    assert operator_topology.FORMAT_VERSION == FORMAT_VERSION
    assert operator_topology.SHARD_HASH == SHARD_HASH


@pytest.mark.parametrize("shards", [1, 7, 64, 128, 4096])
def test_the_shard_is_the_operators_for_every_id(shards: int) -> None:
    ids = ["", "c_1", "conv-0123456789abcdef", "ünïcode-id", "x" * 300]
    for conversation_id in ids:
        assert conversation_shard(conversation_id, shards) == (
            operator_topology.conversation_shard(conversation_id, shards)
        )


def test_the_shard_is_pinned_to_sha256_first_eight_bytes() -> None:
    # sha256(b"abc") starts ba7816bf8f01cfea: a regression that hashed
    # differently would route conversations away from their owners.
    assert conversation_shard("abc", 1 << 64) == 0xBA7816BF8F01CFEA
    assert conversation_shard("abc", 128) == 0xBA7816BF8F01CFEA % 128
    topology = parse_topology(_text(_document()))
    assert topology.conversation_shard("abc") == 0xBA7816BF8F01CFEA % 128
    with pytest.raises(ValueError, match="at least 1"):
        conversation_shard("abc", 0)


# -- the watcher -----------------------------------------------------------------


class FakeFile:
    """What the watcher reads: bytes, None (no file), or an OSError to raise."""

    def __init__(self, content: bytes | None = None) -> None:
        self.content: bytes | OSError | None = content
        self.reads = 0

    def write(self, document: dict[str, Any]) -> None:
        self.content = _text(document)

    def read(self) -> bytes | None:
        self.reads += 1
        if isinstance(self.content, OSError):
            raise self.content
        return self.content


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watcher(file: FakeFile, clock: Clock | None = None) -> TopologyWatcher:
    return TopologyWatcher(file.read, poll_seconds=5, clock=clock or Clock())


def _metrics(watcher: TopologyWatcher) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in TopologyMetrics(watcher).collect()
        for sample in family.samples
    }


def _region_series(watcher: TopologyWatcher) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in TopologyMetrics(watcher).collect()
        for sample in family.samples
        if sample.name == "parley_topology_region"
    ]


def test_no_file_at_start_is_single_region_mode_not_an_error() -> None:
    file = FakeFile(None)
    watcher = _watcher(file)
    assert watcher.poll() is False
    assert watcher.current is None
    assert watcher.reload_failures == 0
    assert _metrics(watcher) == {
        "parley_topology_generation": 0,
        "parley_topology_regions": 0,
        "parley_topology_reload_failures_total": 0,
    }
    assert _region_series(watcher) == []


def test_a_new_document_is_applied_and_subscribers_are_told() -> None:
    file, clock = FakeFile(None), Clock()
    watcher = _watcher(file, clock)
    seen: list[Topology] = []
    watcher.subscribe(seen.append)
    watcher.poll()
    file.write(_document(generation=7))
    clock.now = 1005.0
    assert watcher.poll() is True
    assert watcher.current is not None
    assert watcher.current.generation == 7
    assert watcher.applied_at == 1005.0
    assert [t.generation for t in seen] == [7]
    assert _metrics(watcher)["parley_topology_generation"] == 7
    assert _metrics(watcher)["parley_topology_regions"] == 3
    assert _region_series(watcher) == [({"region": watcher.current.region}, 1)]


def test_the_same_content_is_not_applied_twice() -> None:
    file = FakeFile(_text(_document()))
    watcher = _watcher(file)
    seen: list[Topology] = []
    watcher.subscribe(seen.append)
    assert watcher.poll() is True
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert file.reads == 3
    assert len(seen) == 1


def test_a_newer_generation_and_a_changed_same_generation_apply() -> None:
    file = FakeFile(_text(_document(generation=7)))
    watcher = _watcher(file)
    watcher.poll()
    changed = _document(generation=7)
    changed["routing"]["conversationShards"] = 256
    file.write(changed)
    assert watcher.poll() is True
    assert watcher.current is not None
    assert watcher.current.routing.conversation_shards == 256
    file.write(_document(generation=9))
    assert watcher.poll() is True
    assert watcher.current.generation == 9


def test_an_older_generation_is_refused_and_counted_once() -> None:
    file = FakeFile(_text(_document(generation=7)))
    watcher = _watcher(file)
    seen: list[Topology] = []
    watcher.subscribe(seen.append)
    watcher.poll()
    file.write(_document(generation=6))
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert watcher.current is not None
    assert watcher.current.generation == 7
    assert watcher.reload_failures == 1
    assert [t.generation for t in seen] == [7]


def test_an_invalid_document_keeps_the_previous_one() -> None:
    file, clock = FakeFile(_text(_document(generation=7))), Clock()
    watcher = _watcher(file, clock)
    watcher.poll()
    previous = watcher.current
    clock.now = 2000.0
    file.content = _broken(_set("format", 2))
    assert watcher.poll() is False
    assert watcher.poll() is False  # the same bad content counts once
    assert watcher.current is previous
    assert watcher.applied_at == 1000.0
    assert _metrics(watcher)["parley_topology_reload_failures_total"] == 1
    file.content = b"{truncated"
    assert watcher.poll() is False
    assert watcher.reload_failures == 2
    file.write(_document(generation=8))
    assert watcher.poll() is True
    assert watcher.current is not None
    assert watcher.current.generation == 8
    assert watcher.reload_failures == 2


def test_an_invalid_first_document_leaves_no_topology() -> None:
    file = FakeFile(b"{}")
    watcher = _watcher(file)
    assert watcher.poll() is False
    assert watcher.current is None
    assert watcher.reload_failures == 1


def test_a_vanished_file_keeps_the_topology_and_its_return_is_no_new_apply() -> None:
    file = FakeFile(_text(_document()))
    watcher = _watcher(file)
    seen: list[Topology] = []
    watcher.subscribe(seen.append)
    watcher.poll()
    file.content = None
    assert watcher.poll() is False
    assert watcher.current is not None
    file.write(_document())
    assert watcher.poll() is False
    assert len(seen) == 1
    assert watcher.reload_failures == 0


def test_an_unreadable_file_counts_once_until_it_changes() -> None:
    file = FakeFile(_text(_document()))
    watcher = _watcher(file)
    watcher.poll()
    file.content = PermissionError(13, "Permission denied")
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert watcher.reload_failures == 1
    assert watcher.current is not None
    file.write(_document(generation=8))
    assert watcher.poll() is True


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    file = FakeFile(_text(_document()))
    watcher = _watcher(file)
    seen: list[int] = []

    def broken(_: Topology) -> None:
        raise RuntimeError("subscriber bug")

    watcher.subscribe(broken)
    unsubscribe = watcher.subscribe(lambda t: seen.append(t.generation))
    assert watcher.poll() is True
    assert seen == [7]
    unsubscribe()
    file.write(_document(generation=8))
    watcher.poll()
    assert seen == [7]


async def test_run_polls_every_interval() -> None:
    file = FakeFile(None)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            file.write(_document(generation=4))
        if len(sleeps) == 4:
            raise _Stop

    watcher = TopologyWatcher(file.read, poll_seconds=2.5, clock=Clock(), sleep=sleep)
    with pytest.raises(_Stop):
        await watcher.run()
    assert sleeps == [2.5] * 4
    assert file.reads == 3
    assert watcher.current is not None
    assert watcher.current.generation == 4


class _Stop(Exception):
    pass


def test_the_file_reader_reads_through_a_symlink_swap(tmp_path: Path) -> None:
    """The kubelet's layout: topology.json -> ..data/topology.json, ..data -> a
    timestamped directory that is replaced by renaming a new symlink over it."""
    mount = tmp_path / "topology"
    read = file_reader(mount / "topology.json")
    assert read() is None  # the directory is not even there
    mount.mkdir()
    for version, generation in (("v1", 1), ("v2", 2)):
        (mount / version).mkdir()
        (mount / version / "topology.json").write_text(json.dumps(_document(generation)))
        (mount / "..data_tmp").symlink_to(version)
        (mount / "..data_tmp").replace(mount / "..data")
        if generation == 1:
            (mount / "topology.json").symlink_to("..data/topology.json")
        content = read()
        assert content is not None
        assert parse_topology(content).generation == generation


def test_the_topology_settings_are_off_by_default_and_checked() -> None:
    assert load_settings(environ={}).topology.path == ""
    assert load_settings(environ={}).topology.poll_seconds == 5.0
    settings = load_settings(
        environ={
            "PARLEY_TOPOLOGY__PATH": "/etc/parley/topology/topology.json",
            "PARLEY_TOPOLOGY__POLL_SECONDS": "0.5",
        }
    )
    assert settings.topology.path == "/etc/parley/topology/topology.json"
    assert settings.topology.poll_seconds == 0.5
    with pytest.raises(ConfigError, match=r"topology\.poll_seconds"):
        load_settings(environ={"PARLEY_TOPOLOGY__POLL_SECONDS": "0"})
