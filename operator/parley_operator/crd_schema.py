"""Building blocks of the CRD's OpenAPI schema (parley_operator.crds)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
ENDPOINT_PATTERN = r"^[A-Za-z0-9.-]+:[0-9]{1,5}$"


def string_schema(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def integer_schema(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def number_schema(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def object_schema(
    description: str, properties: Schema, *, required: list[str] | None = None, **extra: Any
) -> Schema:
    """An object node; ``extra`` carries other keywords (default, x-kubernetes-*)."""
    node: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        node["required"] = required
    node.update(extra)
    return node


def secret_key_ref_schema(description: str) -> Schema:
    return object_schema(
        description,
        {
            "name": string_schema("Name of a Secret in the region's namespace.", minLength=1),
            "key": string_schema("Key inside the Secret.", minLength=1),
        },
        required=["name", "key"],
    )


def quantities_schema(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        },
    }


def validations(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule the API server checks (x-kubernetes-validations)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}
