"""One version: pyproject.toml's. The images scripts/build_image.sh tags, the
chart's appVersion and default images, and the operator's default image tag
all name it, so `helm install` with the defaults runs what the script built."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_operator.spec import DEFAULT_IMAGE_TAG, parse_region

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def built_images() -> tuple[str, str]:
    printed = subprocess.run(
        [str(ROOT / "scripts" / "build_image.sh"), "--print-image"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services, operator = printed.stdout.split()
    return services, operator


def test_every_distribution_has_the_projects_version() -> None:
    for member in ("sdk", "cli"):
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        assert project["version"] == VERSION, member


def test_the_chart_and_the_build_name_the_same_images() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    values = _yaml(CHART / "values.yaml")
    assert chart["appVersion"] == VERSION
    services, operator = built_images()
    image = values["region"]["spec"]["image"]
    assert services == f"{image['repository']}:{image['tag']}"
    # The operator's tag is empty in values: the chart fills in appVersion.
    assert values["operator"]["image"]["tag"] == ""
    assert operator == f"{values['operator']['image']['repository']}:{chart['appVersion']}"


def test_the_operators_default_tag_is_the_projects_version() -> None:
    assert DEFAULT_IMAGE_TAG == VERSION
    region = parse_region(
        "parley",
        "parley",
        {
            "region": "local",
            "image": {"repository": "parley/parley"},
            "mongo": {"uriSecretRef": {"name": "m", "key": "uri"}},
            "redis": {"urlSecretRef": {"name": "r", "key": "url"}},
            "tokens": {"secretName": "t"},
        },
    )
    assert region.image.reference == built_images()[0]


@pytest.mark.parametrize(
    "path",
    [
        *sorted((CHART / "ci").glob("*.yaml")),
        *sorted((ROOT / "operator" / "examples").glob("*.yaml")),
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_examples_pin_the_projects_version(path: Path) -> None:
    """An example that pins a tag pins this release's (or it would run another's)."""
    document = _yaml(path) or {}
    # Chart values hold the spec under region.spec; a ParleyRegion under spec.
    spec = document.get("region", {}).get("spec") or document.get("spec") or {}
    tag = spec.get("image", {}).get("tag")
    assert tag in (None, VERSION)
    assert document.get("operator", {}).get("image", {}).get("tag") in (None, "")


def test_the_rendered_chart_runs_the_built_images() -> None:
    fetched = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_k8s_tools.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stderr
    helm = fetched.stdout.strip()
    rendered = subprocess.run(
        [helm, "template", "parley", str(CHART), "--namespace", "parley"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    (region,) = [d for d in docs if d["kind"] == "ParleyRegion"]
    (operator,) = [d for d in docs if d["kind"] == "Deployment"]
    services, operator_image = built_images()
    image = region["spec"]["image"]
    assert f"{image['repository']}:{image['tag']}" == services
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == operator_image
