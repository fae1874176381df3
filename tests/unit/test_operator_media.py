"""svc_media in the operator: a region with media on gets a Deployment,
Service and PodDisruptionBudget for it, its config carries the s3 and media
settings with credentials as mounted files, every service mounts the service
token, the topology names media's address, and turning media off retires
what the operator made for it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parley_core.config import MessageServiceSettings, Settings, load_settings
from parley_operator.manifests import (
    CONFIG_HASH_ANNOTATION,
    Owner,
    owned_by,
    region_manifests,
    retired,
)
from parley_operator.service_config import service_config
from parley_operator.spec import CORE_SERVICES, SERVICES, SpecError, parse_region
from parley_operator.status import ServiceReadiness, status_changes

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="ap-south", uid="5d1c0b7e-3f52-4b8e-9c4e-7a1d2f3e4b5c")
K8S_VERSION = "1.37"
SECRETS = "/var/run/secrets/parley"


def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (ROOT / "operator" / "examples" / "region-media.yaml").read_text()
    )
    return loaded["spec"]


def _region(spec: dict[str, Any] | None = None) -> Any:
    return parse_region("ap-south", "parley", spec if spec is not None else _spec())


def _built(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return region_manifests(_region(spec), OWNER, generation=3, replicas={})


def _find(built: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [m for m in built if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def _pod(built: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    pod: dict[str, Any] = _find(built, "Deployment", f"ap-south-{svc}")["spec"]["template"]["spec"]
    return pod


def _config(built: list[dict[str, Any]], svc: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        _find(built, "ConfigMap", "ap-south-config")["data"][f"{svc}.yaml"]
    )
    return loaded


def test_media_runs_like_the_other_services_and_every_object_is_valid() -> None:
    built = _built()
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in built)
    expected = [("ConfigMap", "ap-south-config"), ("ConfigMap", "ap-south-topology")]
    for svc in SERVICES:
        expected += [
            (kind, f"ap-south-{svc}") for kind in ("Deployment", "PodDisruptionBudget", "Service")
        ]
    assert kinds == sorted(expected)
    for manifest in built:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = _pod(built, "media")
    (container,) = pod["containers"]
    assert container["command"] == [
        "python",
        "-m",
        "svc_media",
        "--config",
        "/etc/parley/config/media.yaml",
    ]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 7104,
        "metrics": 9104,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 7104}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    # shutdownGraceSeconds 30 + preStop 5 + the flush margin 5.
    assert pod["terminationGracePeriodSeconds"] == 40
    service = _find(built, "Service", "ap-south-media")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 7104,
        "metrics": 9104,
    }
    pdb = _find(built, "PodDisruptionBudget", "ap-south-media")
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = _find(built, "Deployment", "ap-south-media")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "media"


def _secret_items(pod: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """volume name -> (Secret, key -> file) of every Secret volume."""
    return {
        v["name"]: (v["secret"]["secretName"], {i["key"]: i["path"] for i in v["secret"]["items"]})
        for v in pod["volumes"]
        if "secret" in v
    }


def _mounts(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["containers"]
    return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def test_every_service_mounts_the_service_token_and_only_media_the_rest() -> None:
    built = _built()
    for svc in SERVICES:
        pod = _pod(built, svc)
        secrets = _secret_items(pod)
        assert secrets["service-token"] == ("parley-service-token", {"token": "token"})
        assert _mounts(pod)["service-token"] == f"{SECRETS}/service-token"
        assert _config(built, svc)["auth"]["service_token_file"] == f"{SECRETS}/service-token/token"
        if svc != "media":
            assert "operator-tokens" not in secrets
            assert "operator_tokens_file" not in _config(built, svc)["auth"]
        # svc_message's history archive shares the bucket, and its keys.
        if svc not in ("media", "message"):
            assert "s3" not in secrets
    media = _pod(built, "media")
    secrets = _secret_items(media)
    assert secrets["operator-tokens"] == ("parley-operator-tokens", {"tokens": "tokens"})
    # The Secret's own key names, mounted under the names the config points at.
    assert secrets["s3"] == (
        "parley-s3",
        {"access-key": "access_key_id", "secret-key": "secret_access_key"},
    )
    mounts = _mounts(media)
    assert mounts["operator-tokens"] == f"{SECRETS}/operator-tokens"
    assert mounts["s3"] == f"{SECRETS}/s3"
    # Only svc_keys holds the signing key, media included.
    assert set(secrets["tokens"][1]) == {"signing.pub.pem"}
    # Secrets are files: no credential reaches the environment.
    (container,) = media["containers"]
    assert not [e for e in container["env"] if re.search("AWS|S3|TOKEN", e["name"])]


def test_media_config_carries_s3_and_media_settings_but_no_secret() -> None:
    built = _built()
    config = _config(built, "media")
    assert config["s3"] == {
        "bucket": "parley-ap-south-media",
        "endpoint_url": "http://minio.storage.svc.cluster.local:9000",
        "public_endpoint_url": "https://media.ap.example.com",
        "region": "ap-south-1",
        "addressing_style": "path",
        "access_key_id_file": f"{SECRETS}/s3/access_key_id",
        "secret_access_key_file": f"{SECRETS}/s3/secret_access_key",
    }
    media = config["media"]
    assert media["server"] == {
        "host": "0.0.0.0",
        "port": 7104,
        "metrics_port": 9104,
        "shutdown_grace_seconds": 30.0,
    }
    assert media["message_target"] == "ap-south-message.parley.svc.cluster.local:7102"
    assert media["quotas"] == {"daily_upload_bytes": 2 << 30, "stored_bytes": 10 << 30}
    assert (media["max_object_bytes"], media["gc_grace_seconds"]) == (1 << 30, 172800)
    assert media["get_url_seconds"] == 120  # spec.config.media, passed through
    assert config["auth"]["operator_tokens_file"] == f"{SECRETS}/operator-tokens/tokens"
    # svc_message finds svc_media through the region's Service.
    assert _config(built, "message")["message"]["media_target"] == (
        "ap-south-media.parley.svc.cluster.local:7104"
    )
    for svc in CORE_SERVICES:
        if svc == "message":
            # The history archive: the same bucket and key files as svc_media.
            assert _config(built, svc)["s3"] == config["s3"]
            assert (
                _secret_items(_pod(built, svc))["s3"] == _secret_items(_pod(built, "media"))["s3"]
            )
        else:
            assert "s3" not in _config(built, svc)


def test_extra_config_cannot_move_media_ports_or_peers() -> None:
    spec = _spec()
    spec["config"] = {
        "media": {"server": {"port": 1}, "message_target": "elsewhere:1"},
        "auth": {"service_token_file": "/etc/mine"},
    }
    config = service_config(_region(spec), "media")
    assert config["media"]["server"]["port"] == 7104
    assert config["media"]["message_target"].endswith(":7102")
    assert config["auth"]["service_token_file"] == f"{SECRETS}/service-token/token"


def _missing_settings() -> list[str]:
    """Settings this branch's parley_core does not have yet (svc_media's, svc_message's)."""
    missing = [name for name in ("media", "s3") if name not in Settings.model_fields]
    if "media_target" not in MessageServiceSettings.model_fields:
        missing.append("message.media_target")
    return missing


@pytest.mark.parametrize("svc", SERVICES)
def test_every_config_file_loads_with_parley_core(tmp_path: Path, svc: str) -> None:
    if _missing_settings():
        pytest.skip(f"parley_core here has no {', '.join(_missing_settings())} yet")
    built = _built()
    config_file = tmp_path / f"{svc}.yaml"
    config_file.write_text(_find(built, "ConfigMap", "ap-south-config")["data"][f"{svc}.yaml"])
    secrets = {"uri": "mongodb://mongo:27017/", "url": "redis://redis:6379/0"}
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n")
    env = {
        "PARLEY_MONGO__URI_FILE": str(tmp_path / "uri"),
        "PARLEY_REDIS__URL_FILE": str(tmp_path / "url"),
    }
    settings: Any = load_settings(config_file, environ=env)
    assert str(settings.auth.service_token_file) == f"{SECRETS}/service-token/token"
    if svc == "media":
        assert settings.media.server.port == 7104
        assert settings.media.quotas.stored_bytes == 10 << 30
        assert settings.s3.bucket == "parley-ap-south-media"
        assert settings.s3.public_endpoint_url == "https://media.ap.example.com"
        assert str(settings.s3.secret_access_key_file) == f"{SECRETS}/s3/secret_access_key"
    if svc == "message":
        assert settings.message.media_target == "ap-south-media.parley.svc.cluster.local:7104"


def test_topology_names_media_only_when_the_region_runs_it() -> None:
    topology = _find(_built(), "ConfigMap", "ap-south-topology")
    document = json.loads(topology["data"]["topology.json"])
    assert document["routing"]["services"]["media"] == (
        "ap-south-media.parley.svc.cluster.local:7104"
    )
    off = _spec()
    off["media"]["enabled"] = False
    document = json.loads(
        _find(_built(off), "ConfigMap", "ap-south-topology")["data"]["topology.json"]
    )
    assert set(document["routing"]["services"]) == {*CORE_SERVICES, "search"}


def test_media_off_builds_nothing_of_it_and_retires_what_it_left() -> None:
    off = _spec()
    off["media"]["enabled"] = False
    built = _built(off)
    assert not [m for m in built if m["metadata"]["name"] == "ap-south-media"]
    assert "media.yaml" not in _find(built, "ConfigMap", "ap-south-config")["data"]
    assert "media_target" not in _config(built, "message")["message"]
    assert retired(_region(off)) == [
        ("apps/v1", "Deployment", "ap-south-media"),
        ("v1", "Service", "ap-south-media"),
        ("policy/v1", "PodDisruptionBudget", "ap-south-media"),
    ]
    assert retired(_region()) == []
    # No service token given: nothing mounts one (a region from before media).
    off.pop("auth")
    off.pop("search")
    for svc in CORE_SERVICES:
        assert "service-token" not in _secret_items(_pod(_built(off), svc))
        assert "service_token_file" not in _config(_built(off), svc)["auth"]


def test_only_objects_the_region_controls_are_retired() -> None:
    made = _find(_built(), "Deployment", "ap-south-media")
    assert owned_by(made, OWNER.uid)
    assert not owned_by(made, "another-region-uid")
    foreign = copy.deepcopy(made)
    foreign["metadata"]["ownerReferences"][0]["controller"] = False
    assert not owned_by(foreign, OWNER.uid)
    assert not owned_by({"metadata": {"name": "ap-south-media"}}, OWNER.uid)


def test_a_media_setting_rolls_media_pods_only() -> None:
    changed = _spec()
    changed["media"]["quotas"]["storedBytes"] = 5 << 30
    before, after = _built(), _built(changed)

    def config_hash(built: list[dict[str, Any]], svc: str) -> str:
        template = _find(built, "Deployment", f"ap-south-{svc}")["spec"]["template"]
        value: str = template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        return value

    assert config_hash(before, "media") != config_hash(after, "media")
    for svc in CORE_SERVICES:
        assert config_hash(before, svc) == config_hash(after, svc)


def test_keys_or_a_pod_role_reach_the_bucket() -> None:
    spec = _spec()
    spec["s3"].pop("credentialsSecretRef")
    spec["media"]["serviceAccountName"] = "parley-media"
    built = _built(spec)
    media = _pod(built, "media")
    assert media["serviceAccountName"] == "parley-media"
    assert "s3" not in _secret_items(media)
    s3 = _config(built, "media")["s3"]
    assert "access_key_id_file" not in s3 and "secret_access_key_file" not in s3
    for svc in CORE_SERVICES:
        assert "serviceAccountName" not in _pod(built, svc)
    # Default key names when the Secret's keys are not named.
    spec = _spec()
    spec["s3"]["credentialsSecretRef"] = {"name": "parley-s3"}
    assert set(_secret_items(_pod(_built(spec), "media"))["s3"][1]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("s3"), r"media\.enabled needs spec\.s3"),
        (lambda s: s.pop("auth"), "needs spec.auth.serviceTokenSecretRef"),
        (lambda s: s["media"]["quotas"].update(storedBytes=0), r"quotas\.storedBytes"),
        (lambda s: s["media"].update(gcGraceSeconds="1d"), r"media\.gcGraceSeconds"),
        (lambda s: s["s3"].update(addressingStyle="dns"), r"s3\.addressingStyle"),
        (lambda s: s["s3"].update(credentialsSecretRef={}), r"s3\.credentialsSecretRef"),
        (lambda s: s["auth"].update(operatorTokensSecretRef={"name": "x"}), "operatorTokens"),
        (
            lambda s: s["services"]["media"].update(minReplicas=5, maxReplicas=2),
            r"services\.media\.maxReplicas",
        ),
    ],
)
def test_spec_errors_name_the_field(change: Any, message: str) -> None:
    spec = _spec()
    change(spec)
    with pytest.raises(SpecError, match=message):
        _region(spec)


def test_status_drops_a_service_the_region_no_longer_runs() -> None:
    status = {
        "services": {
            "keys": {"replicas": 2, "readyReplicas": 2},
            "media": {"replicas": 2, "readyReplicas": 2, "load": {"x": 1.0}},
        }
    }
    readiness = {"keys": ServiceReadiness(2, 2)}
    changes = status_changes(
        status,
        generation=4,
        conditions=[],
        readiness=readiness,
        observed=True,
        running=CORE_SERVICES,
    )
    assert changes["services"] == {"media": None}
    status["services"].pop("media")
    unchanged = status_changes(
        status,
        generation=4,
        conditions=[],
        readiness=readiness,
        observed=True,
        running=CORE_SERVICES,
    )
    assert "services" not in unchanged


def test_message_archive_is_off_without_a_bucket() -> None:
    spec = _spec()
    del spec["s3"]
    spec.pop("media", None)
    config = service_config(_region(spec), "message")
    assert config["archive"] == {"enabled": False}
    assert "s3" not in config
