"""A region's own backends through the chart: Redis Cluster and a per-region S3
endpoint (bucket, region, credentials Secret), from values to the config file
each service loads.

helm/parley/ci/cluster-values.yaml is the example (tests/unit/test_helm_chart.py
lints, renders and validates it with the other examples). Here the rendered
ParleyRegion goes through the operator's pure builders and each service's
config file through parley_core's loader, the way a pod would read it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parley_core.config import load_settings
from parley_operator.manifests import Owner, config_map, deployment
from parley_operator.service_config import S3_ACCESS_KEY_ID_FILE, S3_SECRET_ACCESS_KEY_FILE
from parley_operator.spec import CORE_SERVICES, parse_region

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
CLUSTER_VALUES = CHART / "ci" / "cluster-values.yaml"
RELEASE = "parley-ca"
OWNER = Owner(name="ca", uid="0b7e4c8e-3f0a-4d8e-9b8a-5f1e2d3c4b5a")
Doc = dict[str, Any]


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


def run_helm(helm: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", RELEASE, *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def region_doc(helm: Path, *extra: str) -> Doc:
    result = run_helm(helm, "-f", str(CLUSTER_VALUES), *extra)
    assert result.returncode == 0, result.stderr
    (region,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ParleyRegion"]
    return region


def test_the_example_asks_for_a_cluster_and_its_own_bucket(helm: Path) -> None:
    spec = region_doc(helm)["spec"]
    assert spec["redis"]["cluster"] is True
    assert spec["redis"]["clusterNodes"] == [
        "redis-cluster-1.redis-cluster.parley-ca.svc:6379",
        "redis-cluster-2.redis-cluster.parley-ca.svc:6379",
    ]
    assert spec["s3"]["endpoint"] == "https://s3.ca-central-1.amazonaws.com"
    assert spec["s3"]["region"] == "ca-central-1"
    assert spec["s3"]["bucket"] == "parley-ca-archive"
    assert spec["s3"]["credentialsSecretRef"]["name"] == "parley-ca-s3"
    # Archive only: the region runs no svc_media.
    assert not spec.get("media", {}).get("enabled", False)


def test_the_operator_may_read_the_regions_s3_secret(helm: Path) -> None:
    result = run_helm(helm, "-f", str(CLUSTER_VALUES))
    (role,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Role"]
    (secrets,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert "parley-ca-s3" in secrets["resourceNames"]


@pytest.mark.parametrize("service", CORE_SERVICES)
def test_each_service_loads_the_cluster_and_the_bucket(
    helm: Path, service: str, tmp_path: Path
) -> None:
    rendered = region_doc(helm)
    region = parse_region(
        rendered["metadata"]["name"], rendered["metadata"]["namespace"], rendered["spec"]
    )
    config_file = tmp_path / f"{service}.yaml"
    config_file.write_text(config_map(region, OWNER)["data"][f"{service}.yaml"])
    # The files the pod's Secret volumes would hold.
    files = {
        "url": "redis://redis-cluster-0.redis-cluster.parley-ca.svc:6379\n",
        "uri": "mongodb://m/",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    settings = load_settings(
        config_file,
        environ={
            "PARLEY_REDIS__URL_FILE": str(tmp_path / "url"),
            "PARLEY_MONGO__URI_FILE": str(tmp_path / "uri"),
        },
    )
    assert settings.region == "ca"
    assert settings.redis.cluster is True
    assert list(settings.redis.cluster_nodes) == [
        "redis-cluster-1.redis-cluster.parley-ca.svc:6379",
        "redis-cluster-2.redis-cluster.parley-ca.svc:6379",
    ]
    pod = deployment(region, service, OWNER, replicas=2, config_hash="x")["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    if service != "message":
        # Only svc_message (the archive) and svc_media touch the bucket.
        assert "s3" not in volumes
        return
    s3 = settings.s3
    assert s3.endpoint_url == "https://s3.ca-central-1.amazonaws.com"
    assert s3.region == "ca-central-1"
    assert s3.bucket == "parley-ca-archive"
    assert s3.addressing_style == "virtual"
    assert str(s3.access_key_id_file) == S3_ACCESS_KEY_ID_FILE
    assert str(s3.secret_access_key_file) == S3_SECRET_ACCESS_KEY_FILE
    # The Secret's own key names, mounted under the file names the config gives.
    assert volumes["s3"]["secret"]["secretName"] == "parley-ca-s3"
    assert volumes["s3"]["secret"]["items"] == [
        {"key": "access-key", "path": "access_key_id"},
        {"key": "secret-key", "path": "secret_access_key"},
    ]
    (container,) = pod["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert Path(S3_ACCESS_KEY_ID_FILE).parent == Path(mounts["s3"]["mountPath"])
    assert mounts["s3"]["readOnly"] is True


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('{"bucket": "parley-ca-archive", "endpoint": "s3.example.com"}', "Does not match pattern"),
        ('{"endpoint": "https://s3.example.com"}', "bucket"),
        ('{"bucket": "b"}', "greater than or equal to 3"),
        ('{"bucket": "parley-ca-archive", "credentialsSecretRef": {}}', "name"),
    ],
    ids=["endpoint-without-scheme", "no-bucket", "short-bucket", "secret-without-name"],
)
def test_the_schema_refuses_a_broken_bucket(helm: Path, value: str, complaint: str) -> None:
    result = run_helm(helm, "-f", str(CLUSTER_VALUES), "--set-json", f"region.spec.s3={value}")
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize(
    "redis",
    [
        '{"urlSecretRef": {"name": "parley-redis", "key": "url"}, "cluster": "yes"}',
        '{"urlSecretRef": {"name": "parley-redis", "key": "url"}, "cluster": true,'
        ' "clusterNodes": ["redis-1 6379"]}',
    ],
    ids=["cluster-not-a-boolean", "node-without-port"],
)
def test_the_schema_refuses_a_broken_cluster(helm: Path, redis: str) -> None:
    result = run_helm(helm, "-f", str(CLUSTER_VALUES), "--set-json", f"region.spec.redis={redis}")
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_cluster_nodes_without_a_cluster_are_refused(helm: Path) -> None:
    """The operator would refuse the region (SpecError); the chart says so at install."""
    result = run_helm(
        helm, "-f", str(CLUSTER_VALUES), "--set-json", "region.spec.redis.cluster=false"
    )
    assert result.returncode != 0
    assert "region.spec.redis.clusterNodes needs region.spec.redis.cluster" in result.stderr
