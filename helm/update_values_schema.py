"""Copy the ParleyRegion CRD's spec schema into the chart's values.schema.json.

The chart passes ``region.spec`` to the ParleyRegion as is, so values.schema.json
checks it with the CRD's own schema (as draft-07), minus ``spec.region``,
which the chart writes from ``region.name``. Run this after the CRD changes
(``operator/generate_crds.py``); tests/unit/test_helm_chart.py fails until then.

    uv run python helm/update_values_schema.py           # rewrite the copy
    uv run python helm/update_values_schema.py --check   # exit 1 when stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "parley"
VALUES_SCHEMA = CHART / "values.schema.json"
REGION_KIND = "ParleyRegion"
DESCRIPTION = (
    "The ParleyRegion spec without `region` (taken from region.name), checked with the "
    "CRD's own schema: helm/update_values_schema.py copies it from crds/."
)


def openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's structural schema as draft-07, as strict as the API server.

    Objects with properties reject unknown fields (kubectl's default field
    validation is Strict) unless they preserve unknown fields; OpenAPI 3.0's
    boolean exclusive bounds become draft-07 numbers; x-kubernetes-* markers
    and formats are dropped (CEL rules cannot be said in JSON schema).
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value)
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_documents(crd_dir: Path = CHART / "crds") -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def crd_schema(kind: str, crd_dir: Path = CHART / "crds") -> dict[str, Any]:
    """The storage version's openAPIV3Schema of the one CRD for kind, as draft-07."""
    crds = [d for d in crd_documents(crd_dir) if d["spec"]["names"]["kind"] == kind]
    if len(crds) != 1:
        raise SystemExit(f"expected one CRD for {kind} in {crd_dir}, found {len(crds)}")
    (version,) = [v for v in crds[0]["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
    return schema


def region_spec_schema() -> dict[str, Any]:
    spec: dict[str, Any] = crd_schema(REGION_KIND)["properties"]["spec"]
    spec["properties"].pop("region", None)
    spec["required"] = [r for r in spec.get("required", []) if r != "region"]
    spec["description"] = DESCRIPTION
    return spec


def updated_values_schema() -> str:
    schema = json.loads(VALUES_SCHEMA.read_text())
    schema["properties"]["region"]["properties"]["spec"] = region_spec_schema()
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    args = parser.parse_args(argv)
    wanted = updated_values_schema()
    if VALUES_SCHEMA.read_text() == wanted:
        return 0
    if args.check:
        print(f"{VALUES_SCHEMA} is stale: run helm/update_values_schema.py", file=sys.stderr)
        return 1
    VALUES_SCHEMA.write_text(wanted)
    print(f"updated {VALUES_SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
