"""Two regions through the chart: helm/parley/ci/eu-values.yaml and
us-values.yaml, rendered with the real helm, must describe one deployment.
Each ParleyRegion names the other as its peer with the other's own number
and endpoints; the operator parses both; the topology each region's services
read (parley_core's parser) agrees on the region map; each svc_message
config file carries its region's replication settings to the replicators;
the region alerts come with the peers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_core.config import settings_from_tree
from parley_core.topology import parse_topology
from parley_operator.manifests import Owner, config_map
from parley_operator.spec import RegionSpec, parse_region
from parley_operator.topology import topology_document
from svc_message.domain.replicator import ReplicatorSettings
from svc_message.replication_wiring import replicator_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
REGIONS = {"eu": CHART / "ci" / "eu-values.yaml", "us": CHART / "ci" / "us-values.yaml"}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_k8s_tools.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"fetching helm failed:\n{result.stderr}"
    return Path(result.stdout.strip())


def run_helm(helm: Path, region: str, *extra: str) -> subprocess.CompletedProcess[str]:
    release = f"parley-{region}"
    command = [str(helm), "template", release, str(CHART), "--namespace", release]
    return subprocess.run(
        [*command, "-f", str(REGIONS[region]), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def rendered(helm: Path) -> dict[str, list[Doc]]:
    docs = {}
    for region in REGIONS:
        result = run_helm(helm, region)
        assert result.returncode == 0, result.stderr
        docs[region] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return docs


def _parsed(docs: list[Doc]) -> RegionSpec:
    (region,) = [d for d in docs if d["kind"] == "ParleyRegion"]
    meta = region["metadata"]
    return parse_region(meta["name"], meta["namespace"], region["spec"])


def test_each_region_names_the_other_as_it_is(rendered: dict[str, list[Doc]]) -> None:
    eu, us = _parsed(rendered["eu"]), _parsed(rendered["us"])
    ((to_us,), (to_eu,)) = eu.peers, us.peers
    assert (to_us.name, to_eu.name) == ("us", "eu")
    assert (to_us.number, to_eu.number) == (us.number, eu.number)
    assert eu.number != us.number
    assert (to_us.public_endpoint, to_eu.public_endpoint) == (
        us.public_endpoint,
        eu.public_endpoint,
    )
    # What each region's services read: the same numbers for the same regions.
    maps = [parse_topology(json.dumps(topology_document(r, generation=1))) for r in (eu, us)]
    numbers = [{name: e.number for name, e in t.regions.items()} for t in maps]
    assert numbers[0] == numbers[1] == {"eu": 1, "us": 2}
    assert maps[0].peers[0].peer_endpoint == "region.us.parley.example.com:7443"
    assert maps[1].peers[0].peer_endpoint == "region.eu.parley.example.com:7443"


def _message_replication(region: RegionSpec) -> ReplicatorSettings:
    owner = Owner(name=region.name, uid="6d0f3c1e-2b4a-4c5d-8e9f-0a1b2c3d4e5f")
    tree = yaml.safe_load(config_map(region, owner)["data"]["message.yaml"])
    return replicator_settings(settings_from_tree(tree, {}).message.replication)


def test_each_svc_message_gets_its_regions_replication_settings(
    rendered: dict[str, list[Doc]],
) -> None:
    assert _message_replication(_parsed(rendered["eu"])) == ReplicatorSettings(
        batch_changes=500, batch_seconds=0.5
    )
    assert _message_replication(_parsed(rendered["us"])) == ReplicatorSettings(
        lease_seconds=30.0, retry_seconds=2.0
    )


def test_both_regions_alert_on_lag_and_an_unreachable_peer(
    rendered: dict[str, list[Doc]],
) -> None:
    for region, threshold in (("eu", "60"), ("us", "300")):
        (rules,) = [d for d in rendered[region] if d["kind"] == "PrometheusRule"]
        by_name = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"]}
        lag = by_name["ParleyReplicationLagHigh"]["expr"]
        assert f'namespace="parley-{region}",region="{region}"' in lag
        assert lag.rstrip().endswith(f"> {threshold}")
        assert "parley_region_refusals_total" in by_name["ParleyRegionUnreachable"]["expr"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batchChanges", "0"),
        ("batchSeconds", "-1"),
        ("leaseSeconds", "0.5"),
        ("snapshotPage", "1.5"),
        ("batchSize", "10"),
    ],
)
def test_the_chart_refuses_replication_settings_the_crd_refuses(
    helm: Path, setting: str, value: str
) -> None:
    result = run_helm(helm, "eu", "--set-json", f"region.spec.replication.{setting}={value}")
    assert result.returncode != 0
    assert "replication" in result.stderr
