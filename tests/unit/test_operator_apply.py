"""How the operator patches an object it applied before: fields it stops
building are removed (from its last-applied record), fields others set stay."""

from __future__ import annotations

import json
from typing import Any

from parley_operator.kube import LAST_APPLIED_ANNOTATION, apply_patch, removals, with_last_applied


def _manifest(limits: dict[str, str] | None, labels: dict[str, str]) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "1"}}
    if limits is not None:
        resources["limits"] = limits
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "n", "labels": labels, "annotations": {"h": "1"}},
        "spec": {"replicas": 2, "template": {"spec": {"resources": resources}}},
    }


def test_removals_null_only_what_the_previous_manifest_set() -> None:
    previous = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    desired = {"b": {"c": 2}, "e": []}
    assert removals(previous, desired) == {"a": None, "b": {"d": None}}
    assert removals({}, desired) == {}


def test_apply_patch_drops_a_removed_limit_and_keeps_foreign_fields() -> None:
    before = _manifest({"memory": "1Gi"}, {"app": "x", "tier": "old"})
    live = with_last_applied(before)
    # Someone else's annotation and the server's fields on the live object.
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    live["status"] = {"readyReplicas": 2}
    after = _manifest(None, {"app": "x"})
    patch = apply_patch(live, after)
    assert patch["spec"]["template"]["spec"]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": None,
    }
    assert patch["metadata"]["labels"] == {"app": "x", "tier": None}
    assert "deployment.kubernetes.io/revision" not in patch["metadata"]["annotations"]
    assert "status" not in patch
    recorded = json.loads(patch["metadata"]["annotations"][LAST_APPLIED_ANNOTATION])
    assert recorded == after


def test_apply_patch_without_a_record_only_sets() -> None:
    live = _manifest({"memory": "1Gi"}, {"app": "x"})
    patch = apply_patch(live, _manifest(None, {"app": "x"}))
    assert "limits" not in patch["spec"]["template"]["spec"]["resources"]
