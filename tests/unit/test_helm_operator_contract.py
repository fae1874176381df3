"""The chart and the operator agree: what the chart renders is what the
operator can run, and what the operator builds is what the chart watches.

For each example region, the rendered ParleyRegion goes through the
operator's own parse and builders (parley_operator.manifests); then the
chart's ServiceMonitors must find each service's metrics port, and the
chart's Role must let the operator apply every object it built.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_operator.manifests import Owner, region_manifests, retired
from parley_operator.spec import parse_region

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
Doc = dict[str, Any]
EXAMPLES = {
    "eu": "eu-values.yaml",
    "us": "us-values.yaml",
    "local": "default-values.yaml",
    "ap": "media-values.yaml",
}
# What kube.apply does to each child: read it, then create or merge-patch it.
APPLY_VERBS = {"get", "create", "patch"}


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


def render(helm: Path, values_file: str) -> list[Doc]:
    values = str(CHART / "ci" / values_file)
    result = subprocess.run(
        [str(helm), "template", "parley", str(CHART), "--namespace", "parley", "-f", values],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def parsed(region_doc: Doc) -> Any:
    meta = region_doc["metadata"]
    return parse_region(meta["name"], meta["namespace"], region_doc["spec"])


def operator_objects(region_doc: Doc) -> list[Doc]:
    meta = region_doc["metadata"]
    owner = Owner(name=meta["name"], uid="00000000-0000-0000-0000-000000000000")
    return region_manifests(parsed(region_doc), owner, generation=1, replicas={})


def allowed(role: Doc, api_version: str, plural: str, name: str | None = None) -> set[str]:
    """Verbs the Role grants on a kind (on the object ``name`` when given)."""
    group = api_version.rpartition("/")[0]
    verbs: set[str] = set()
    for rule in role["rules"]:
        if group in rule["apiGroups"] and plural in rule["resources"]:
            names = rule.get("resourceNames")
            if names is None or (name is not None and name in names):
                verbs.update(rule["verbs"])
    return verbs


PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


@pytest.mark.parametrize("region_name", EXAMPLES)
def test_operator_builds_what_the_chart_watches_and_permits(helm: Path, region_name: str) -> None:
    docs = render(helm, EXAMPLES[region_name])
    (region_doc,) = [d for d in docs if d["kind"] == "ParleyRegion"]
    assert region_doc["metadata"]["name"] == region_name
    built = operator_objects(region_doc)

    services = [o for o in built if o["kind"] == "Service"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    # One per service the region runs: media's only when it is enabled.
    assert len(monitors) == len(parsed(region_doc).services)
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(chosen) == 1, f"{monitor['metadata']['name']} selects {len(chosen)} Services"
        ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in ports

    (role,) = [d for d in docs if d["kind"] == "Role"]
    for obj in built:
        verbs = allowed(role, obj["apiVersion"], PLURALS[obj["kind"]])
        assert verbs >= APPLY_VERBS, f"the Role lets the operator {verbs} {obj['kind']}"
    # What it deletes when the spec turns media off: allowed by name, and only that.
    region = parsed(region_doc)
    media_off = parse_region(region.name, region.namespace, {**region_doc["spec"], "media": {}})
    for api_version, kind, name in retired(media_off):
        assert "delete" in allowed(role, api_version, PLURALS[kind], name), (kind, name)
        assert "delete" not in allowed(role, api_version, PLURALS[kind], "someone-else")
    secret_rules = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    named = {name for rule in secret_rules for name in rule["resourceNames"]}
    mounted = {
        volume["secret"]["secretName"]
        for obj in built
        if obj["kind"] == "Deployment"
        for volume in obj["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume
    }
    assert mounted and mounted <= named


def test_contract_check_notices_a_monitor_that_selects_nothing(helm: Path) -> None:
    docs = render(helm, "eu-values.yaml")
    (region_doc,) = [d for d in docs if d["kind"] == "ParleyRegion"]
    services = [o for o in operator_objects(region_doc) if o["kind"] == "Service"]
    wrong_region = {"app.kubernetes.io/component": "message", "parley.dev/region": "us"}
    assert [s for s in services if wrong_region.items() <= s["metadata"]["labels"].items()] == []


def test_chart_starts_the_module_that_registers_the_handlers() -> None:
    module = ROOT / "operator" / "parley_operator" / "main.py"
    assert "register(kopf.get_default_registry()" in module.read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "parley_operator").glob("*.py"))
    template = (CHART / "templates" / "operator-deployment.yaml").read_text()
    for variable in (
        "PARLEY_OPERATOR_SCALE_INTERVAL",
        "PARLEY_OPERATOR_SCRAPE_TIMEOUT",
        "PARLEY_OPERATOR_RETRY_DELAY",
    ):
        assert variable in template
        assert variable in source, f"the operator no longer reads {variable}"


def test_replica_bounds_the_crd_refuses_are_refused_by_the_chart(helm: Path) -> None:
    """The CRD's CEL rule minReplicas <= maxReplicas, which no JSON schema can say.
    A template `fail` stops template (and install); helm lint only logs it (lint mode)."""

    def template(bounds: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm), "template", "parley", str(CHART), "--set", bounds],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    inverted = template(
        "region.spec.services.presence.minReplicas=5,region.spec.services.presence.maxReplicas=3"
    )
    assert inverted.returncode != 0
    assert (
        "region.spec.services.presence: minReplicas (5) must not exceed maxReplicas (3)"
        in inverted.stderr
    )
    equal = template(
        "region.spec.services.presence.minReplicas=5,region.spec.services.presence.maxReplicas=5"
    )
    assert equal.returncode == 0, equal.stderr
