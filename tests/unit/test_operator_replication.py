"""ParleyRegion.spec.replication: the CRD's bounds are svc_message's
(message.replication), the operator parses and refuses like the schema, and
the values reach the replicators through the config file it renders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from annotated_types import Ge, Gt, Le

from parley_core.config import ReplicationSettings, settings_from_tree
from parley_operator.crds import region_crd
from parley_operator.service_config import service_config
from parley_operator.spec import SpecError, parse_region
from parley_operator.spec_regions import REPLICATION_BOUNDS
from svc_message.domain.replicator import ReplicatorSettings
from svc_message.replication_wiring import replicator_settings

ROOT = Path(__file__).resolve().parents[2]


def _resource(name: str = "region-eu-west.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "operator" / "examples" / name).read_text())
    return loaded


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = region_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _schema_errors(resource: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(_schema())
    return [error.message for error in validator.iter_errors(resource)]


def _rendered_settings(spec: dict[str, Any]) -> ReplicationSettings:
    config = service_config(parse_region("eu-west", "parley", spec), "message")
    # What the pod reads: the YAML file, loaded by parley_core.
    tree = yaml.safe_load(yaml.safe_dump(config))
    return settings_from_tree(tree, {}).message.replication


def test_the_crd_bounds_are_the_services() -> None:
    replication = _schema()["properties"]["spec"]["properties"]["replication"]["properties"]
    assert set(replication) == set(REPLICATION_BOUNDS)
    for key, (config_key, _, _) in REPLICATION_BOUNDS.items():
        metadata = ReplicationSettings.model_fields[config_key].metadata
        node = replication[key]
        least = next(m for m in metadata if isinstance(m, Ge | Gt))
        most = next(m for m in metadata if isinstance(m, Le))
        assert node["maximum"] == most.le, key
        if isinstance(least, Gt):
            assert (node["minimum"], node.get("exclusiveMinimum")) == (least.gt, True), key
        else:
            assert (node["minimum"], node.get("exclusiveMinimum")) == (least.ge, None), key
        expected_type = (
            "integer"
            if ReplicationSettings.model_fields[config_key].annotation is int
            else "number"
        )
        assert node["type"] == expected_type, key


def test_the_example_reaches_the_replicators() -> None:
    spec = _resource()["spec"]
    settings = _rendered_settings(spec)
    assert replicator_settings(settings) == ReplicatorSettings(
        batch_changes=500, batch_seconds=0.5, lease_seconds=15.0
    )
    # Only svc_message replicates.
    region = parse_region("eu-west", "parley", spec)
    for service in ("keys", "presence"):
        assert "replication" not in service_config(region, service).get(service, {})


def test_without_replication_settings_the_service_keeps_its_defaults() -> None:
    spec = _resource()["spec"]
    spec.pop("replication")
    assert (
        "replication"
        not in service_config(parse_region("eu-west", "parley", spec), "message")["message"]
    )
    assert _rendered_settings(spec) == ReplicationSettings()


def test_the_spec_wins_over_extra_config() -> None:
    spec = _resource()["spec"]
    spec["config"]["message"]["replication"] = {"batch_changes": 7, "retry_seconds": 3}
    settings = _rendered_settings(spec)
    # spec.replication's own keys win; a key it leaves unset comes from config.
    assert (settings.batch_changes, settings.retry_seconds) == (500, 3.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batchChanges", 0, "at least 1"),
        ("batchChanges", 10_001, "at most 10000"),
        ("batchChanges", 2.5, "must be an integer"),
        ("batchSeconds", -0.5, "at least 0"),
        ("retrySeconds", 0, "above 0"),
        ("leaseSeconds", 0.5, "at least 1"),
        ("retrySeconds", "fast", "must be a number"),
        ("snapshotPage", True, "must be a number"),
    ],
)
def test_bad_values_are_refused_by_the_schema_and_the_operator(
    key: str, value: Any, message: str
) -> None:
    resource = copy.deepcopy(_resource())
    resource["spec"]["replication"][key] = value
    assert _schema_errors(resource) != []
    with pytest.raises(SpecError, match=f"spec.replication.{key} .*{message}"):
        parse_region("eu-west", "parley", resource["spec"])


def test_the_example_passes_the_schema() -> None:
    assert _schema_errors(_resource()) == []
