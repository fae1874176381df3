"""The regions harness's layout: ports, proxies and topology files, before anything starts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from parley_core.topology import parse_topology
from parley_dev.cli import build_parser
from parley_dev.layout import StackPorts
from parley_dev.region_names import parse_region_names
from parley_dev.regions import RegionResidency, RegionsStack, fixed_layout, free_layout
from parley_dev.up_regions import regions_banner


def _every_port(
    ports: Mapping[str, StackPorts], proxies: Mapping[tuple[str, str], int]
) -> list[int]:
    return [p for each in ports.values() for p in each.all()] + list(proxies.values())


@pytest.mark.parametrize("instances", [1, 3, 9])
def test_fixed_ports_of_three_regions_never_collide(instances: int) -> None:
    ports, proxies = fixed_layout(["eu", "us", "ap"], message_instances=instances)
    every = _every_port(ports, proxies)
    assert len(every) == len(set(every))
    assert sorted(proxies) == sorted(
        (a, b) for a in ("eu", "us", "ap") for b in ("eu", "us", "ap") if a != b
    )


def test_free_ports_of_two_regions_never_collide() -> None:
    ports, proxies = free_layout(["eu", "us"])
    every = _every_port(ports, proxies)
    assert len(every) == len(set(every))


def test_each_region_reaches_its_peers_through_its_own_proxies(tmp_path: Path) -> None:
    harness = RegionsStack.with_fixed_ports(
        root=tmp_path,
        regions=["eu", "us", "ap"],
        port_offset=20000,
        residency={"eu": RegionResidency(home_only_data=("media",), replicate_to=("us",))},
    )
    eu = parse_topology(json.dumps(harness.topology_document("eu")))
    assert eu.region == "eu"
    assert eu.self_region.peer_endpoint is None
    assert eu.regions["us"].peer_endpoint == harness.proxy("eu", "us").address
    assert eu.regions["ap"].peer_endpoint == harness.proxy("eu", "ap").address
    assert eu.regions["us"].public_endpoint == harness.region("us").message_targets[0]
    assert eu.residency.home_only_data == ("media",)
    assert eu.residency.replicate_to == ("us",)
    assert eu.routing.services["keys"] == harness.region("eu").keys_target
    us = parse_topology(json.dumps(harness.topology_document("us")))
    assert us.regions["eu"].peer_endpoint == harness.proxy("us", "eu").address
    # Without a residency given, a region replicates to every other.
    assert sorted(us.residency.replicate_to) == ["ap", "eu"]
    # Proxy A->B relays to B's svc_message, whatever A is.
    us_port = harness.region("us").ports.message[0]
    assert harness.proxy("eu", "us").upstream_port == us_port
    assert harness.proxy("ap", "us").upstream_port == us_port
    assert harness.region("eu").settings.topology.path == str(tmp_path / "eu" / "topology.json")
    harness.write_topology("eu")
    assert parse_topology(harness.topology_path("eu").read_bytes()).region == "eu"
    assert "eu -> us" in regions_banner(harness)


def test_a_residency_naming_no_peer_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replicateTo"):
        RegionsStack.with_fixed_ports(
            root=tmp_path,
            regions=["eu", "us"],
            residency={"eu": RegionResidency(replicate_to=("mars",))},
        )


@pytest.mark.parametrize(
    ("text", "fault"),
    [("", "at least one"), ("eu,eu", "repeat"), ("EU", "lower-case"), ("eu/x", "lower-case")],
)
def test_bad_region_lists_are_refused(text: str, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        parse_region_names(text)


def test_parley_up_takes_a_region_list() -> None:
    args = build_parser().parse_args(["up", "--regions", "eu, us"])
    assert args.regions == ["eu", "us"]


def test_presence_crosses_a_proxy_of_its_own_to_the_peer_presence(tmp_path: Path) -> None:
    harness = RegionsStack.with_fixed_ports(
        root=tmp_path, regions=["eu", "us", "ap"], port_offset=20000
    )
    eu = parse_topology(json.dumps(harness.topology_document("eu")))
    assert eu.regions["us"].peer_address("presence") == harness.presence_proxy("eu", "us").address
    assert eu.regions["us"].peer_address("message") == harness.proxy("eu", "us").address
    assert harness.presence_proxy("eu", "us").upstream_port == harness.region("us").ports.presence
    ports, proxies = fixed_layout(["eu", "us", "ap"], message_instances=9, offset=20000)
    every = _every_port(ports, proxies) + [p.port for p in harness.presence_proxies.values()]
    assert len(every) == len(set(every))
    free = RegionsStack(root=tmp_path / "free", regions=["eu", "us"])
    every = [p for s in free.stacks.values() for p in s.ports.all()] + [
        p.port for p in [*free.proxies.values(), *free.presence_proxies.values()]
    ]
    assert len(every) == len(set(every))
