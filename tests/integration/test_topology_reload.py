"""Every service follows the region topology file without a restart.

The file is laid out the way the kubelet mounts a ConfigMap: ``topology.json``
links to ``..data/topology.json`` and ``..data`` to a versioned directory; a
new version is a new directory and an atomic rename of the ``..data`` link,
so the file's own path and mtime never change.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from parley_dev.layout import KEYS, PRESENCE, message_name
from parley_dev.stack import LocalStack
from tests.helpers import http_get, wait_until

POLL_SECONDS = 0.2


def _document(generation: int, *, peers: int = 1) -> dict[str, Any]:
    regions: dict[str, Any] = {
        "eu-west": {
            "self": True,
            "publicEndpoint": "chat.eu.example.com:443",
            "peerEndpoint": None,
            "number": 0,
        }
    }
    for index in range(peers):
        regions[f"peer-{index}"] = {
            "self": False,
            "publicEndpoint": None,
            # Loopback ports nothing listens on: the services may dial peers.
            "peerEndpoint": f"127.0.0.1:{9 + index}",
            "number": index + 1,
        }
    return {
        "format": 1,
        "generation": generation,
        "region": "eu-west",
        "regions": regions,
        "residency": {"homeOnlyData": ["media"], "replicateTo": []},
        "routing": {
            "conversationShards": 64,
            "shardHash": "sha256-first8-mod",
            "services": {"keys": "eu-west-keys.parley.svc.cluster.local:7101"},
        },
    }


class ConfigMapVolume:
    """A directory updated like a kubelet-managed ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "topology.json"
        self._versions = 0
        root.mkdir(parents=True)

    def publish(self, content: str) -> None:
        self._versions += 1
        version = self.root / f"..v{self._versions}"
        version.mkdir()
        (version / "topology.json").write_text(content)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        if not self.file.is_symlink():
            self.file.symlink_to("..data/topology.json")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> ConfigMapVolume:
    volume = ConfigMapVolume(tmp_path_factory.mktemp("topology") / "mount")
    volume.publish(json.dumps(_document(generation=3)))
    return volume


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def watching(
    tmp_path_factory: pytest.TempPathFactory, volume: ConfigMapVolume
) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("topology_stack"),
        shutdown_grace_seconds=2.0,
        extra_config={"topology": {"path": str(volume.file), "poll_seconds": POLL_SECONDS}},
    ) as local:
        yield local


def _metrics_urls(stack: LocalStack) -> list[str]:
    return [stack.keys_metrics_url, *stack.message_metrics_urls, stack.presence_metrics_url]


async def _topology_metrics(url: str) -> dict[str, float]:
    _, body = await http_get(url)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        if family.name.startswith("parley_topology_")
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


async def _region_labels(url: str) -> list[str]:
    """The region each parley_topology_region series names."""
    _, body = await http_get(url)
    return [
        sample.labels["region"]
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "parley_topology_region"
    ]


async def _all_show(stack: LocalStack, expected: dict[str, float]) -> bool:
    for url in _metrics_urls(stack):
        found = await _topology_metrics(url)
        if any(found.get(name) != value for name, value in expected.items()):
            return False
    return True


def _applied_generations(stack: LocalStack, service: str) -> list[int]:
    lines = stack.process(service).log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e["generation"] for e in events if e.get("event") == "topology_applied"]


async def test_the_services_follow_the_file_and_keep_it_when_it_breaks(
    watching: LocalStack, volume: ConfigMapVolume
) -> None:
    pids = {name: watching.process(name).pid for name in (KEYS, message_name(0), PRESENCE)}
    # Loaded before the services served: no wait needed for the first one.
    for url in _metrics_urls(watching):
        assert await _topology_metrics(url) == {
            "parley_topology_generation": 3,
            "parley_topology_regions": 2,
            "parley_topology_region": 1,
            "parley_topology_reload_failures_total": 0,
        }
        assert await _region_labels(url) == ["eu-west"]

    volume.publish(json.dumps(_document(generation=4, peers=2)))
    await wait_until(
        lambda: _all_show(
            watching, {"parley_topology_generation": 4, "parley_topology_regions": 3}
        ),
        timeout=10,
        what="generation 4 on every service",
    )

    broken = _document(generation=5)
    broken["format"] = 2
    volume.publish(json.dumps(broken))
    await wait_until(
        lambda: _all_show(watching, {"parley_topology_reload_failures_total": 1}),
        timeout=10,
        what="the refused document counted on every service",
    )
    volume.publish("{half a docu")
    await wait_until(
        lambda: _all_show(watching, {"parley_topology_reload_failures_total": 2}),
        timeout=10,
        what="the truncated document counted on every service",
    )
    # Several polls later: still the last good one, and each bad version counted once.
    await asyncio.sleep(POLL_SECONDS * 5)
    for url in _metrics_urls(watching):
        assert await _topology_metrics(url) == {
            "parley_topology_generation": 4,
            "parley_topology_regions": 3,
            "parley_topology_region": 1,
            "parley_topology_reload_failures_total": 2,
        }

    # One start, no restart: each process logged exactly the generations it applied.
    for service in (KEYS, message_name(0), PRESENCE):
        assert _applied_generations(watching, service) == [3, 4]
        assert watching.process(service).alive()
        assert watching.process(service).pid == pids[service]


async def _replicating_to(url: str) -> list[str]:
    """The peers svc_message runs a replicator for (its lag series)."""
    _, body = await http_get(url)
    return sorted(
        sample.labels["peer"]
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "parley_replication_lag_seconds"
    )


async def test_replicators_follow_the_peers_of_the_topology(
    watching: LocalStack, volume: ConfigMapVolume
) -> None:
    pid = watching.process(message_name(0)).pid
    urls = watching.message_metrics_urls

    async def all_replicate_to(peers: list[str]) -> bool:
        return all([await _replicating_to(url) == peers for url in urls])

    # Generations above the other test's, so the order of the tests does not matter.
    volume.publish(json.dumps(_document(generation=10, peers=3)))
    await wait_until(
        lambda: all_replicate_to(["peer-0", "peer-1", "peer-2"]),
        timeout=15,
        what="a replicator started for each peer the reload added",
    )
    volume.publish(json.dumps(_document(generation=11, peers=1)))
    await wait_until(
        lambda: all_replicate_to(["peer-0"]),
        timeout=15,
        what="the replicators of the removed peers stopped",
    )
    assert watching.process(message_name(0)).pid == pid
