"""What the Helm chart's templates promise: a locked-down operator, least
privilege, opt-in cluster scanning, the region spec passed through, media's
secrets. Rendered with the real helm binary (tests/unit/test_helm_chart.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.test_helm_chart import (
    CASES,
    CHART,
    crd_docs,
    helm,
    kind_names,
    only,
    render,
    run_helm,
    validate_document,
)

__all__ = ["helm"]


# --- what the templates promise ------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_operator_pod_is_locked_down(helm: Path, case: str) -> None:
    (deployment,) = only(render(helm, case), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (container,) = pod["containers"]
    namespace_arg = "--namespace=$(POD_NAMESPACE)"
    assert container["command"] == ["kopf"]
    assert container["args"][:3] == ["run", "--standalone", namespace_arg]
    assert container["args"][-2:] == ["-m", "parley_operator.main"]
    # A standalone kopf must never run twice: one replica, old pod gone before the new.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# (apiGroup, resource) -> verbs the operator gets; nothing cluster-wide.
RBAC = {
    ("parley.dev", "parleyregions"): {"get", "list", "watch", "patch"},
    ("parley.dev", "parleyregions/status"): {"patch"},
    ("parley.dev", "parleyregions/finalizers"): {"update"},
    ("apps", "deployments"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"list", "patch"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
}


def test_operator_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm, "eu")
    assert not only(docs, "ClusterRole") and not only(docs, "ClusterRoleBinding")
    (role,) = only(docs, "Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        # Secrets only by name: the ones the region mounts.
        if rule["resources"] == ["secrets"]:
            assert rule["resourceNames"] == [
                "parley-mongo",
                "parley-redis",
                "parley-s3",
                "parley-tokens",
            ]
        # Deleting only svc_media's and svc_search's objects, by name (retiring
        # them when turned off).
        elif rule["verbs"] == ["delete"]:
            assert rule["resourceNames"] == ["eu-media", "eu-search"]
        else:
            assert "resourceNames" not in rule
            assert "delete" not in rule["verbs"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == RBAC
    (binding,) = only(docs, "RoleBinding")
    (account,) = only(docs, "ServiceAccount")
    (deployment,) = only(docs, "Deployment")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "parley-eu"}
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_cluster_scanning_is_opt_in_and_read_only(helm: Path) -> None:
    docs = render(helm, "eu", "--set", "operator.rbac.clusterScanning=true")
    (role,) = only(docs, "ClusterRole")
    (binding,) = only(docs, "ClusterRoleBinding")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Cluster-scoped: two regions in one cluster must not share the name.
    assert "parley-eu" in role["metadata"]["name"]
    for doc in (role, binding):
        validate_document(doc)


def test_monitoring_and_operator_can_be_turned_off(helm: Path) -> None:
    docs = render(
        helm,
        "eu",
        "--set",
        "monitoring.serviceMonitors.enabled=false,monitoring.prometheusRules.enabled=false,"
        "monitoring.dashboards.enabled=false,operator.enabled=false",
    )
    crds = [("CustomResourceDefinition", d["metadata"]["name"]) for d in crd_docs()]
    assert kind_names(docs) == sorted([*crds, ("ParleyRegion", "eu")])


def test_region_spec_is_passed_through_with_its_name(helm: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "eu-values.yaml").read_text())
    (region,) = only(render(helm, "eu"), "ParleyRegion")
    assert region["metadata"] == {
        **region["metadata"],
        "name": "eu",
        "namespace": "parley-eu",
    }
    assert region["spec"]["region"] == "eu"
    assert region["spec"]["peers"] == values["region"]["spec"]["peers"]
    message = values["region"]["spec"]["services"]["message"]
    assert region["spec"]["services"]["message"]["scaling"] == message["scaling"]
    # The chart's defaults fill what the example leaves out.
    assert region["spec"]["services"]["keys"]["minReplicas"] == 2


def test_a_redis_cluster_reaches_the_region_spec(helm: Path) -> None:
    cluster = '{"cluster": true, "clusterNodes": ["redis-1.redis:6379", "redis-2.redis:6379"]}'
    (region,) = only(
        render(helm, "eu", "--set-json", f"region.spec.redis={cluster}"), "ParleyRegion"
    )
    assert region["spec"]["redis"]["cluster"] is True
    assert region["spec"]["redis"]["clusterNodes"] == ["redis-1.redis:6379", "redis-2.redis:6379"]
    # Only the cluster keys were given: the chart's Secret reference stays.
    assert region["spec"]["redis"]["urlSecretRef"] == {"name": "parley-redis", "key": "url"}
    (default,) = only(render(helm, "eu"), "ParleyRegion")
    assert default["spec"]["redis"]["cluster"] is False


def test_examples_are_peers_of_each_other(helm: Path) -> None:
    (eu,) = only(render(helm, "eu"), "ParleyRegion")
    (us,) = only(render(helm, "us"), "ParleyRegion")
    assert [p["name"] for p in eu["spec"]["peers"]] == ["us"]
    assert [p["name"] for p in us["spec"]["peers"]] == ["eu"]
    assert eu["spec"]["peers"][0]["publicEndpoint"] == us["spec"]["publicEndpoint"]
    assert us["spec"]["peers"][0]["publicEndpoint"] == eu["spec"]["publicEndpoint"]


def test_media_region_names_its_secrets_and_scrapes_media(helm: Path) -> None:
    docs = render(helm, "media")
    (role,) = only(docs, "Role")
    (secrets,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets["resourceNames"] == [
        "parley-mongo",
        "parley-operator-tokens",
        "parley-redis",
        "parley-s3",
        "parley-service-token",
        "parley-tokens",
    ]
    (region,) = only(docs, "ParleyRegion")
    assert region["spec"]["media"]["enabled"] is True
    assert region["spec"]["services"]["media"]["maxReplicas"] == 8
    # The chart's defaults fill what the example leaves out.
    assert region["spec"]["services"]["media"]["resources"]["limits"] == {"memory": "512Mi"}
    monitors = {m["metadata"]["name"] for m in only(docs, "ServiceMonitor")}
    assert "parley-ap-media" in monitors


@pytest.mark.parametrize(
    ("dropped", "message"),
    [
        ("s3", "needs region.spec.s3"),
        ("auth", "needs region.spec.auth.serviceTokenSecretRef"),
    ],
)
def test_media_without_its_bucket_or_service_token_is_refused(
    helm: Path, tmp_path: Path, dropped: str, message: str
) -> None:
    """The CRD's CEL rules, which values.schema.json cannot say."""
    values = yaml.safe_load((CHART / "ci" / "media-values.yaml").read_text())
    del values["region"]["spec"][dropped]
    without = tmp_path / "values.yaml"
    without.write_text(yaml.safe_dump(values))
    result = run_helm(helm, "template", "parley", str(CHART), "-f", str(without))
    assert result.returncode != 0
    assert message in result.stderr
    off = run_helm(
        helm,
        "template",
        "parley",
        str(CHART),
        "-f",
        str(without),
        "--set",
        "region.spec.media.enabled=false",
        "--set",
        "region.spec.search.enabled=false",
    )
    assert off.returncode == 0, off.stderr
