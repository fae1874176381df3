"""The ParleyRegion CRD: committed YAML is fresh, the schema is structural and
valid, the examples pass it, bad resources fail it, and its defaults are the
operator's defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from parley_operator.crd_files import CRD_DIR, rendered_crds
from parley_operator.crds import SPEC_RULES, region_crd
from parley_operator.spec import CORE_SERVICES, SpecError, parse_region

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "operator" / "examples").glob("*.yaml"))


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = region_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _validator() -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 schemas are draft 4 in spirit: exclusiveMinimum is a boolean there.
    return jsonschema.Draft4Validator(_schema(), format_checker=jsonschema.FormatChecker())


def _errors(resource: dict[str, Any]) -> list[str]:
    return [error.message for error in _validator().iter_errors(resource)]


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "operator" / "examples" / name).read_text())
    return loaded


def test_committed_crd_files_match_the_builders() -> None:
    rendered = rendered_crds()
    committed = {p.name: p.read_text() for p in CRD_DIR.glob("parleyregions.*")}
    assert committed == rendered, "run: uv run python operator/generate_crds.py"


def test_one_crd_file_per_kind_in_the_chart() -> None:
    kinds = [yaml.safe_load(p.read_text())["spec"]["names"]["kind"] for p in CRD_DIR.glob("*.yaml")]
    assert sorted(kinds) == sorted(set(kinds))
    assert "ParleyRegion" in kinds


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(region_crd(), "1.37", strict=True)


def _walk(node: dict[str, Any], path: str) -> list[str]:
    problems = []
    untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "type" not in node and not untyped_ok:
        problems.append(path)
    for name, child in (node.get("properties") or {}).items():
        problems += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_every_node_has_a_type() -> None:
    assert _walk(_schema(), "") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_the_schema_and_parse(path: Path) -> None:
    resource = yaml.safe_load(path.read_text())
    assert _errors(resource) == []
    region = parse_region(resource["metadata"]["name"], "parley", resource["spec"])
    media = resource["spec"].get("media", {}).get("enabled", False)
    search = resource["spec"].get("search", {}).get("enabled", False)
    optional = [*(["media"] if media else []), *(["search"] if search else [])]
    assert list(region.services) == [*CORE_SERVICES, *optional]


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert names >= {"region-minimal.yaml", "region-eu-west.yaml", "region-media.yaml"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["spec"].pop("region"), "'region' is a required property"),
        (lambda r: r["spec"].update(region="EU West"), "does not match"),
        (lambda r: r["spec"]["image"].update(pullPolicy="Sometimes"), "is not one of"),
        (lambda r: r["spec"]["mongo"]["uriSecretRef"].pop("key"), "'key' is a required"),
        (lambda r: r["spec"]["peers"][0].update(endpoint="no-port"), "does not match"),
        (lambda r: r["spec"]["services"]["keys"].update(minReplicas=0), "less than the minimum"),
        (
            lambda r: r["spec"]["services"]["message"]["scaling"]["targets"][0].update(perPod=0),
            "less than or equal to the minimum",
        ),
        (
            lambda r: r["spec"]["services"]["message"]["scaling"]["targets"][0].update(
                type="Histogram"
            ),
            "is not one of",
        ),
        (lambda r: r["spec"]["residency"].update(homeOnlyData=["selfies"]), "is not one of"),
        (lambda r: r["spec"]["s3"].update(addressingStyle="dns"), "is not one of"),
        (lambda r: r["spec"]["s3"].update(publicEndpoint="media.example.com"), "does not match"),
        (lambda r: r["spec"]["media"]["quotas"].update(storedBytes=0), "less than the minimum"),
        (lambda r: r["spec"]["media"].update(gcGraceSeconds=31 * 86400), "greater than the max"),
        (lambda r: r["spec"]["media"].update(enabled="yes"), "is not of type 'boolean'"),
        (lambda r: r["spec"]["auth"]["serviceTokenSecretRef"].pop("key"), "'key' is a required"),
        (lambda r: r["spec"]["services"]["media"].update(maxReplicas=0), "less than the minimum"),
    ],
)
def test_schema_rejects_bad_resources(change: Any, expected: str) -> None:
    resource = copy.deepcopy(_example("region-eu-west.yaml"))
    media = copy.deepcopy(_example("region-media.yaml"))["spec"]
    resource["spec"].update({key: media[key] for key in ("auth", "s3", "media")})
    resource["spec"]["services"]["media"] = media["services"]["media"]
    change(resource)
    errors = _errors(resource)
    assert any(expected in e for e in errors), errors


def test_status_the_operator_writes_passes_the_schema() -> None:
    resource = _example("region-minimal.yaml")
    resource["status"] = {
        "phase": "Ready",
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Reconciled",
                "status": "True",
                "reason": "Applied",
                "message": "15 objects match generation 3",
                "observedGeneration": 3,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "services": {"message": {"replicas": 3, "readyReplicas": 3, "load": {"x": 1.5}}},
    }
    assert _errors(resource) == []
    resource["status"]["phase"] = "Sleeping"
    assert _errors(resource) != []


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server does with `default` in a structural schema."""
    if not isinstance(value, dict):
        return value
    for name, child in (schema.get("properties") or {}).items():
        if name not in value and "default" in child:
            value[name] = copy.deepcopy(child["default"])
        if name in value:
            value[name] = _apply_defaults(child, value[name])
    return value


def test_schema_defaults_are_the_operators_defaults() -> None:
    resource = _example("region-minimal.yaml")
    defaulted = _apply_defaults(_schema(), copy.deepcopy(resource))
    assert _errors(defaulted) == []
    assert parse_region("parley", "parley", defaulted["spec"]) == parse_region(
        "parley", "parley", resource["spec"]
    )
    assert defaulted["spec"]["services"]["message"]["scaling"]["targets"][0] == {
        "metric": "parley_delivery_streams_open",
        "type": "Gauge",
        "perPod": 2000.0,
    }


# The CEL rules need an API server; the operator's parse refuses the same
# specs (it is what reports them when the CRD is older than the operator).
@pytest.mark.parametrize(
    ("change", "rule_message", "parse_message"),
    [
        (lambda s: s.pop("s3"), "needs spec.s3", r"media\.enabled needs spec\.s3"),
        (
            lambda s: s["auth"].pop("serviceTokenSecretRef"),
            "needs auth.serviceTokenSecretRef",
            "needs spec.auth.serviceTokenSecretRef",
        ),
    ],
)
def test_media_needs_a_bucket_and_the_service_token(
    change: Any, rule_message: str, parse_message: str
) -> None:
    spec = copy.deepcopy(_example("region-media.yaml")["spec"])
    spec.pop("search")  # its own rule: tests/unit/test_operator_search.py
    change(spec)
    resource = {"apiVersion": "parley.dev/v1alpha1", "kind": "ParleyRegion", "spec": spec}
    assert _errors(resource) == []  # only the CEL rules refuse it
    assert any(rule_message in rule["message"] for rule in SPEC_RULES)
    with pytest.raises(SpecError, match=parse_message):
        parse_region("ap-south", "parley", spec)
    # Turned off, neither is needed.
    spec["media"]["enabled"] = False
    assert "media" not in parse_region("ap-south", "parley", spec).services


def test_cel_rules_are_on_the_spec() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == SPEC_RULES
    for rule in SPEC_RULES:
        assert rule["rule"].startswith(
            (
                "!(has(self.media) && has(self.media.enabled)",
                "!(has(self.search) && ",
                "!has(self.peers) || ",
            )
        )


def test_media_defaults_are_the_operators_defaults() -> None:
    resource = _example("region-media.yaml")
    defaulted = _apply_defaults(_schema(), copy.deepcopy(resource))
    assert _errors(defaulted) == []
    assert parse_region("ap-south", "parley", defaulted["spec"]) == parse_region(
        "ap-south", "parley", resource["spec"]
    )
    media_targets = defaulted["spec"]["services"]["media"]["scaling"]["targets"]
    assert media_targets == [
        {"metric": "parley_rpc_requests_total", "type": "Rate", "perPod": 300.0},
        {
            "metric": "parley_rpc_in_flight",
            "type": "Gauge",
            "perPod": 4.0,
            "labels": {"method": "CompleteUpload"},
        },
    ]
    # Off by default, so a region written before media keeps running as it did.
    minimal = _apply_defaults(_schema(), copy.deepcopy(_example("region-minimal.yaml")))
    assert minimal["spec"]["media"] == {"enabled": False}
