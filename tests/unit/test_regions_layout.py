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
    ports: Mapping[str, StackPorts], proxies: Mapping[tuple[str, str, str], int]
) -> list[int]:
    return [p for each in ports.values() for p in each.all()] + list(proxies.values())


@pytest.mark.parametrize("instances", [1, 3, 9])
def test_fixed_ports_of_three_regions_never_collide(instances: int) -> None:
    ports, proxies = fixed_layout(["eu", "us", "ap"], message_instances=instances)
    every = _every_port(ports, proxies)
    assert len(every) == len(set(every))
    assert sorted(proxies) == sorted(
        (a, b, s)
        for a in ("eu", "us", "ap")
        for b in ("eu", "us", "ap")
        if a != b
        for s in ("message", "keys", "media", "presence")
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
    # Proxies A->B relay to B's services, whatever A is; every region is numbered.
    us_ports = harness.region("us").ports
    for source in ("eu", "ap"):
        link = harness.proxy(source, "us").services
        assert link["message"].upstream_port == us_ports.message[0]
        assert link["keys"].upstream_port == us_ports.keys
        assert link["presence"].upstream_port == us_ports.presence
        assert link["media"].upstream_port == us_ports.media
    assert (
        eu.regions["us"].peer_address("keys") == harness.proxy("eu", "us").services["keys"].address
    )
    assert [eu.regions[n].number for n in ("eu", "us", "ap")] == [1, 2, 3]
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
