"""svc_search in the operator: a region with search on gets a Deployment,
Service and PodDisruptionBudget for it, valid against Kubernetes' schemas;
its config names svc_message and loads with parley_core; svc_keys' erasure
job is pointed at it; the topology names it; search off builds nothing of
it; and it needs the service token."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parley_core.config import load_settings
from parley_operator.manifests import Owner, region_manifests
from parley_operator.spec import SpecError, parse_region

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="ap-south", uid="5d1c0b7e-3f52-4b8e-9c4e-7a1d2f3e4b5c")
K8S_VERSION = "1.37"
MESSAGE = "ap-south-message.parley.svc.cluster.local:7102"
SEARCH = "ap-south-search.parley.svc.cluster.local:7105"


def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (ROOT / "operator" / "examples" / "region-media.yaml").read_text()
    )
    return loaded["spec"]


def _built(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return region_manifests(
        parse_region("ap-south", "parley", spec), OWNER, generation=1, replicas={}
    )


def _named(built: list[dict[str, Any]], name: str) -> list[tuple[str, str]]:
    return sorted(
        (m["kind"], m["metadata"]["name"]) for m in built if m["metadata"]["name"] == name
    )


def _config_text(built: list[dict[str, Any]], svc: str) -> str:
    [config] = [m for m in built if m["metadata"]["name"] == "ap-south-config"]
    text: str = config["data"][f"{svc}.yaml"]
    return text


def test_search_runs_like_the_other_services() -> None:
    built = _built(_spec())
    assert _named(built, "ap-south-search") == [
        ("Deployment", "ap-south-search"),
        ("PodDisruptionBudget", "ap-south-search"),
        ("Service", "ap-south-search"),
    ]
    for manifest in built:
        if manifest["metadata"]["name"] == "ap-south-search":
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    [deployment] = [
        m for m in built if m["kind"] == "Deployment" and m["metadata"]["name"] == "ap-south-search"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "svc_search" in " ".join(container.get("command", []) + container.get("args", []))
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {7105, 9105}
    topology = json.loads(
        next(m for m in built if m["metadata"]["name"] == "ap-south-topology")["data"][
            "topology.json"
        ]
    )
    assert topology["routing"]["services"]["search"] == SEARCH


def test_search_config_loads_and_names_its_peers(tmp_path: Path) -> None:
    built = _built(_spec())
    for name, value in {"uri": "mongodb://mongo:27017/", "url": "redis://redis:6379/0"}.items():
        (tmp_path / name).write_text(value + "\n")
    env = {
        "PARLEY_MONGO__URI_FILE": str(tmp_path / "uri"),
        "PARLEY_REDIS__URL_FILE": str(tmp_path / "url"),
    }
    loaded: dict[str, Any] = {}
    for svc in ("search", "keys"):
        path = tmp_path / f"{svc}.yaml"
        path.write_text(_config_text(built, svc))
        loaded[svc] = load_settings(path, environ=env)
    assert loaded["search"].search.server.port == 7105
    assert loaded["search"].search.server.metrics_port == 9105
    assert loaded["search"].search.message_target == MESSAGE
    assert loaded["keys"].keys.search_target == SEARCH


def test_search_off_builds_nothing_of_it() -> None:
    off = _spec()
    off["search"] = {"enabled": False}
    built = _built(off)
    assert _named(built, "ap-south-search") == []
    keys = yaml.safe_load(_config_text(built, "keys"))
    assert keys["keys"]["search_target"] is None
    del off["search"]
    assert _named(_built(off), "ap-south-search") == []


def test_search_needs_the_service_token() -> None:
    spec = copy.deepcopy(_spec())
    spec["media"]["enabled"] = False
    del spec["auth"]["serviceTokenSecretRef"]
    with pytest.raises(SpecError, match=r"search\.enabled needs spec\.auth\.serviceTokenSecretRef"):
        parse_region("ap-south", "parley", spec)
