"""Region-tagged ids and the region map (docs/design/regions.md)."""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_core.ids import is_valid_id, new_id, random_id, region_number_of, with_region
from parley_core.regions import RegionMap, UnknownRegion
from parley_core.topology import TopologyError, parse_topology
from parley_operator.spec import SpecError, parse_region
from parley_operator.topology import topology_document

ROOT = Path(__file__).resolve().parents[2]


def _topology(region: str = "eu", **extra: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "generation": 1,
        "region": region,
        "regions": {
            name: {"self": name == region, "peerEndpoint": None, "number": number}
            for name, number in (("eu", 1), ("us", 2), ("ap", 3))
        },
        "residency": {"homeOnlyData": [], "replicateTo": []},
        "routing": {"conversationShards": 4, "shardHash": "sha256-first8-mod", "services": {}},
        **extra,
    }


def _map(region: str = "eu", **extra: Any) -> RegionMap:
    return RegionMap.from_topology(parse_topology(json.dumps(_topology(region, **extra))))


@pytest.mark.parametrize("number", [0, 1, 17, 255])
def test_a_tagged_id_carries_its_region_and_stays_a_canonical_uuid(number: int) -> None:
    for value in (new_id(1_700_000_000_000, region_number=number), random_id(region_number=number)):
        assert is_valid_id(value)
        assert uuid.UUID(value).version == 8
        assert region_number_of(value) == number


def test_untagged_ids_carry_no_region() -> None:
    assert region_number_of(new_id()) is None
    assert region_number_of(random_id()) is None
    assert region_number_of("not an id") is None


def test_a_tagged_time_ordered_id_still_sorts_by_time() -> None:
    ids = [new_id(1_700_000_000_000 + i, region_number=200 - i) for i in range(50)]
    assert sorted(ids) == ids


def test_tagging_a_derived_id_is_deterministic() -> None:
    base = str(uuid.uuid4())
    assert with_region(base, 9) == with_region(base, 9)
    assert region_number_of(with_region(base, 9)) == 9


def test_region_numbers_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="region number"):
        new_id(region_number=256)
    with pytest.raises(ValueError, match="region number"):
        random_id(region_number=-1)


def test_the_map_routes_tagged_ids_to_the_region_that_minted_them() -> None:
    eu = _map("eu")
    assert eu.self_number == 1
    assert eu.region_of(new_id(region_number=2)) == "us"
    assert eu.region_of(random_id(region_number=3)) == "ap"
    assert eu.is_local(random_id(region_number=1))
    assert not eu.is_local(random_id(region_number=2))
    with pytest.raises(UnknownRegion):
        eu.region_of(random_id(region_number=99))


def test_untagged_ids_belong_to_the_legacy_region() -> None:
    assert _map("us").region_of(random_id()) == "us"
    assert _map("us", legacyRegion="eu").region_of(new_id()) == "eu"


def test_without_a_topology_everything_is_local() -> None:
    single = RegionMap.from_topology(None, region="local")
    assert single.self_number is None
    assert single.is_local(random_id(region_number=7))
    assert single.handle_registrar("alice") == "local"


def test_every_region_names_the_same_registrar_for_a_handle() -> None:
    maps = [_map(r) for r in ("eu", "us", "ap")]
    handles = [f"user{i}" for i in range(300)]
    for handle in handles:
        assert len({m.handle_registrar(handle) for m in maps}) == 1
    # Rendezvous hashing spreads handles over every registrar.
    spread = Counter(maps[0].handle_registrar(h) for h in handles)
    assert set(spread) == {"eu", "us", "ap"} and min(spread.values()) > 50


def test_dropping_a_registrar_moves_only_the_handles_it_held() -> None:
    before = _map("eu")
    after = _map("eu", handleRegistrars=["eu", "us"])
    for handle in (f"h{i}" for i in range(300)):
        if before.handle_registrar(handle) != "ap":
            assert after.handle_registrar(handle) == before.handle_registrar(handle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["regions"]["us"].pop("number"), "every region needs a number"),
        (lambda d: d["regions"]["us"].update(number=1), "same number"),
        (lambda d: d["regions"]["us"].update(number=256), "at most 255"),
        (lambda d: d.update(handleRegistrars=[]), "at least one region"),
        (lambda d: d.update(handleRegistrars=["eu", "mars"]), "not regions of the document"),
        (lambda d: d.update(legacyRegion="mars"), "legacyRegion"),
    ],
)
def test_the_reader_refuses_unusable_region_numbers_and_lists(change: Any, message: str) -> None:
    document = _topology()
    change(document)
    with pytest.raises(TopologyError, match=message):
        parse_topology(json.dumps(document))


def _example_spec() -> dict[str, Any]:
    resource = yaml.safe_load((ROOT / "operator" / "examples" / "region-eu-west.yaml").read_text())
    spec: dict[str, Any] = resource["spec"]
    return spec


def test_the_operator_writes_numbers_the_services_read() -> None:
    spec = _example_spec()
    spec["handleRegistrars"] = ["eu-west", "us-east"]
    spec["legacyRegion"] = "eu-west"
    region = parse_region("eu-west", "parley", spec)
    topology = parse_topology(json.dumps(topology_document(region, 3)))
    assert {name: r.number for name, r in topology.regions.items()} == {
        "eu-west": 1,
        "us-east": 2,
        "ap-south": 3,
    }
    assert topology.handle_registrars == ("eu-west", "us-east")
    assert topology.legacy_region == "eu-west"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("number"), "required with peers"),
        (lambda s: s["peers"][0].pop("number"), "required with peers"),
        (lambda s: s["peers"][0].update(number=1), "must all differ"),
        (lambda s: s.update(number=300), "0 to 255"),
        (lambda s: s.update(handleRegistrars=["mars"]), "handleRegistrars"),
        (lambda s: s.update(legacyRegion="mars"), "legacyRegion"),
    ],
)
def test_the_operator_refuses_unusable_region_numbers(change: Any, message: str) -> None:
    spec = copy.deepcopy(_example_spec())
    change(spec)
    with pytest.raises(SpecError, match=message):
        parse_region("eu-west", "parley", spec)
