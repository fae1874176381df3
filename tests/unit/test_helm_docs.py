"""Every chart value is documented: helm/README.md's tables against
values.yaml, values.schema.json and the ParleyRegion CRD."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
README = ROOT / "helm" / "README.md"
ROW = re.compile(r"^\| `([^`]+)` \|(.*)\|$")
MISSING = object()


def table_rows(heading: str) -> dict[str, list[str]]:
    """key -> the other cells of the first table under a README heading."""
    rows: dict[str, list[str]] = {}
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split(" | ")]
    assert rows, f"no table under {heading}"
    return rows


def value_rows() -> dict[str, str]:
    """key -> default cell of the values table."""
    return {key: cells[0] for key, cells in table_rows("## Values").items()}


def optional_spec_rows() -> list[str]:
    return list(table_rows("### Optional `region.spec` fields"))


def leaves(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else key)
    else:
        yield path


def lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def test_every_value_has_a_row() -> None:
    documented = set(value_rows())
    undocumented = [
        leaf
        for leaf in leaves(values())
        if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    ]
    assert undocumented == []


def test_every_row_is_a_value_with_its_default() -> None:
    for key, default in value_rows().items():
        value = lookup(values(), key)
        assert value is not MISSING, f"README documents {key}, values.yaml has no such key"
        if not default.startswith("`see "):
            assert json.loads(default.strip("`")) == value, key


def test_every_schema_property_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = set(value_rows())

    def properties(node: dict[str, Any], path: str) -> Iterator[str]:
        for key, sub in node.get("properties", {}).items():
            full = f"{path}.{key}" if path else key
            if full == "region.spec":
                continue  # the CRD's schema: checked below and by test_helm_chart
            yield full
            yield from properties(sub, full)

    missing = [
        p
        for p in properties(schema, "")
        if p != "global"
        and not any(p == k or p.startswith(k + ".") or k.startswith(p + ".") for k in documented)
    ]
    assert missing == []


def test_optional_region_fields_exist_in_the_crd() -> None:
    crd = yaml.safe_load((CHART / "crds" / "parleyregions.parley.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = optional_spec_rows()
    assert "region.spec.publicEndpoint" in rows
    for key in rows:
        node = spec
        for part in key.removeprefix("region.spec.").split("."):
            name = part.removesuffix("[]")
            if name == "<svc>":
                node = node["properties"]["message"]
            else:
                assert name in node.get("properties", {}), f"{key}: the CRD has no {name}"
                node = node["properties"][name]
            if part.endswith("[]"):
                node = node["items"]
