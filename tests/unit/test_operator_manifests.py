"""The operator's pure builders: every manifest is a valid Kubernetes object
(kubernetes-validate, strict), owned by its ParleyRegion, locked down, and the
config files it writes are ones the services accept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parley_core.config import load_settings
from parley_operator.manifests import (
    CONFIG_HASH_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    Owner,
    clamp_replicas,
    config_map,
    deployment,
    region_manifests,
    spec_hash,
    termination_grace_seconds,
)
from parley_operator.service_config import service_config
from parley_operator.spec import CORE_SERVICES, SpecError, parse_region
from parley_operator.topology import conversation_shard, topology_document

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="eu-west", uid="0b8f6a3e-7d43-4d0e-9a55-0a5f1c1f0e11")
K8S_VERSION = "1.37"


def _spec(name: str = "region-eu-west.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "operator" / "examples" / name).read_text())
    return loaded["spec"]


def _region(spec: dict[str, Any] | None = None, name: str = "eu-west") -> Any:
    return parse_region(name, "parley", spec if spec is not None else _spec())


def _built(replicas: dict[str, int | None] | None = None) -> list[dict[str, Any]]:
    return region_manifests(_region(), OWNER, generation=4, replicas=replicas or {})


def _find(built: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [m for m in built if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def test_every_manifest_is_valid_for_kubernetes_strict() -> None:
    built = _built() + region_manifests(
        _region(_spec("region-minimal.yaml"), "parley"), OWNER, generation=1, replicas={}
    )
    for manifest in built:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_strict_validation_would_catch_a_typo() -> None:
    broken = _built()[2]
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_region_is_two_configmaps_and_a_deployment_service_pdb_per_service() -> None:
    built = _built()
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in built)
    expected = [("ConfigMap", "eu-west-config"), ("ConfigMap", "eu-west-topology")]
    for svc in CORE_SERVICES:  # media is off in this example
        expected += [
            ("Deployment", f"eu-west-{svc}"),
            ("PodDisruptionBudget", f"eu-west-{svc}"),
            ("Service", f"eu-west-{svc}"),
        ]
    assert kinds == sorted(expected)
    assert built[0]["kind"] == "ConfigMap"  # pods mount it: it comes first


def test_everything_is_owned_by_the_region_and_labelled() -> None:
    for manifest in _built():
        meta = manifest["metadata"]
        assert meta["namespace"] == "parley"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "parley.dev/v1alpha1",
                "kind": "ParleyRegion",
                "name": "eu-west",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "parley-operator"
        assert meta["labels"]["parley.dev/region"] == "eu-west"
        assert SPEC_HASH_ANNOTATION in meta["annotations"]


def test_message_pods_tell_their_peers_their_own_ip_for_forwarding() -> None:
    built = _built()
    env = {
        e["name"]: e
        for e in _find(built, "Deployment", "eu-west-message")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PARLEY_MESSAGE__OWNERSHIP__ADDRESS"]["value"] == "$(POD_IP):7102"
    names = list(env)
    # Kubernetes substitutes $(VAR) only from variables defined before.
    assert names.index("POD_IP") < names.index("PARLEY_MESSAGE__OWNERSHIP__ADDRESS")
    for svc in ("keys", "presence"):
        other = _find(built, "Deployment", f"eu-west-{svc}")["spec"]["template"]["spec"]
        assert "POD_IP" not in {e["name"] for e in other["containers"][0]["env"]}


def test_deployment_pods_are_locked_down_and_probed_over_grpc_health() -> None:
    built = _built()
    for svc, port in (("keys", 7101), ("message", 7102), ("presence", 7103)):
        dep = _find(built, "Deployment", f"eu-west-{svc}")
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}
        assert container["command"][-3:] == [
            {"keys": "svc_keys", "message": "svc_message", "presence": "svc_presence"}[svc],
            "--config",
            f"/etc/parley/config/{svc}.yaml",
        ]
        assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_shutdown_budget_covers_pre_stop_drain_and_flush() -> None:
    region = _region()
    message = region.services["message"]
    assert (message.pre_stop_seconds, message.shutdown_grace_seconds) == (5, 15.0)
    assert termination_grace_seconds(message) == 25
    dep = _find(_built(), "Deployment", "eu-west-message")
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 25
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    config = yaml.safe_load(_find(_built(), "ConfigMap", "eu-west-config")["data"]["message.yaml"])
    assert config["message"]["server"]["shutdown_grace_seconds"] == 15.0


def test_only_svc_keys_mounts_the_signing_key() -> None:
    built = _built()
    for svc in CORE_SERVICES:
        pod = _find(built, "Deployment", f"eu-west-{svc}")["spec"]["template"]["spec"]
        tokens = next(v for v in pod["volumes"] if v["name"] == "tokens")
        paths = {item["path"] for item in tokens["secret"]["items"]}
        expected = {"signing.pub.pem", "previous.pub.pem"}
        assert paths == (expected | {"signing.pem"} if svc == "keys" else expected)


def test_topology_is_mounted_as_a_directory_so_updates_reach_running_pods() -> None:
    pod = _find(_built(), "Deployment", "eu-west-message")["spec"]["template"]["spec"]
    mounts = pod["containers"][0]["volumeMounts"]
    topology = next(m for m in mounts if m["name"] == "topology")
    assert topology["mountPath"] == "/etc/parley/topology"
    assert "subPath" not in topology


@pytest.mark.parametrize("svc", CORE_SERVICES)
def test_service_config_is_accepted_by_parley_core(tmp_path: Path, svc: str) -> None:
    region = _region()
    config_file = tmp_path / f"{svc}.yaml"
    config_file.write_text(config_map(region, OWNER)["data"][f"{svc}.yaml"])
    (tmp_path / "uri").write_text("mongodb://mongo-0.mongo:27017/?replicaSet=rs0\n")
    (tmp_path / "url").write_text("redis://redis:6379/0\n")
    # The pod's env, with the secret files where this test put them.
    pod = _find(_built(), "Deployment", f"eu-west-{svc}")["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for variable in pod["containers"][0]["env"]:
        if "valueFrom" in variable:
            env[variable["name"]] = "10.0.0.7"  # status.podIP, as Kubernetes fills it in
        else:
            # $(VAR) from a variable defined before, as Kubernetes substitutes it.
            env[variable["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env[m.group(1)], variable["value"]
            )
    assert env["PARLEY_MONGO__URI_FILE"] == "/var/run/secrets/parley/mongo/uri"
    assert env["PARLEY_REDIS__URL_FILE"] == "/var/run/secrets/parley/redis/url"
    env["PARLEY_MONGO__URI_FILE"] = str(tmp_path / "uri")
    env["PARLEY_REDIS__URL_FILE"] = str(tmp_path / "url")
    settings = load_settings(config_file, environ=env)
    assert settings.region == "eu-west"
    assert settings.mongo.uri == "mongodb://mongo-0.mongo:27017/?replicaSet=rs0"
    assert settings.redis.url == "redis://redis:6379/0"
    # Services watch the topology ConfigMap where the Deployment mounts it.
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert settings.topology.path == "/etc/parley/topology/topology.json"
    assert "/etc/parley/topology" in mounts
    if svc == "message":
        assert settings.message.ownership.address == "10.0.0.7:7102"
    server = getattr(settings, svc).server
    assert (server.host, server.port) == (
        "0.0.0.0",
        {"keys": 7101, "message": 7102, "presence": 7103}[svc],
    )
    assert server.metrics_port == {"keys": 9101, "message": 9102, "presence": 9103}[svc]
    assert [str(p) for p in settings.auth.public_key_files] == [
        "/var/run/secrets/parley/tokens/signing.pub.pem",
        "/var/run/secrets/parley/tokens/previous.pub.pem",
    ]
    if svc == "keys":
        signing = "/var/run/secrets/parley/tokens/signing.pem"
        assert str(settings.auth.private_key_file) == signing
        # The erasure job's peers.
        assert settings.keys.message_target == "eu-west-message.parley.svc.cluster.local:7102"
        assert settings.keys.presence_target == "eu-west-presence.parley.svc.cluster.local:7103"
    else:
        assert settings.auth.private_key_file is None
    if svc == "message":
        assert settings.message.keys_target == "eu-west-keys.parley.svc.cluster.local:7101"
        assert settings.message.send_batch_max == 256  # from spec.config


@pytest.mark.parametrize("svc", CORE_SERVICES)
def test_a_redis_cluster_reaches_every_services_config(tmp_path: Path, svc: str) -> None:
    spec = _spec()
    spec["redis"].update(cluster=True, clusterNodes=["redis-1.redis:6379", "redis-2.redis:6379"])
    config_file = tmp_path / f"{svc}.yaml"
    config_file.write_text(config_map(_region(spec), OWNER)["data"][f"{svc}.yaml"])
    (tmp_path / "url").write_text("redis://redis-0.redis:6379\n")
    settings = load_settings(config_file, environ={"PARLEY_REDIS__URL_FILE": str(tmp_path / "url")})
    assert settings.redis.cluster
    assert settings.redis.url == "redis://redis-0.redis:6379"
    assert settings.redis.cluster_nodes == ("redis-1.redis:6379", "redis-2.redis:6379")
    # Off (the default), the rendered config says nothing about Redis.
    assert "redis" not in service_config(_region(), svc)


def test_extra_config_cannot_move_the_ports_the_probes_use() -> None:
    spec = _spec()
    spec["config"] = {"message": {"server": {"port": 1, "host": "127.0.0.1"}}}
    config = service_config(_region(spec), "message")
    assert config["message"]["server"]["port"] == 7102
    assert config["message"]["server"]["host"] == "0.0.0.0"


def test_config_change_rolls_pods_replica_change_does_not_touch_the_spec_hash() -> None:
    region = _region()
    one = deployment(region, "message", OWNER, replicas=3, config_hash="a")
    more = deployment(region, "message", OWNER, replicas=9, config_hash="a")
    other_config = deployment(region, "message", OWNER, replicas=3, config_hash="b")
    assert spec_hash(one) == spec_hash(more)
    assert spec_hash(one) != spec_hash(other_config)
    annotations = other_config["spec"]["template"]["metadata"]["annotations"]
    assert annotations[CONFIG_HASH_ANNOTATION] == "b"
    spec = _spec()
    spec["config"] = {"message": {"send_batch_max": 64}}
    changed = region_manifests(_region(spec), OWNER, generation=5, replicas={})
    before = _find(_built(), "Deployment", "eu-west-message")
    after = _find(changed, "Deployment", "eu-west-message")
    template = "spec", "template", "metadata", "annotations", CONFIG_HASH_ANNOTATION

    def dig(m: dict[str, Any]) -> Any:
        for key in template:
            m = m[key]
        return m

    assert dig(before) != dig(after)


def test_replicas_start_at_min_and_stay_where_the_scaler_put_them_within_bounds() -> None:
    region = _region()  # message: 3..30
    assert clamp_replicas(region, "message", None) == 3
    assert clamp_replicas(region, "message", 12) == 12
    assert clamp_replicas(region, "message", 1) == 3
    assert clamp_replicas(region, "message", 99) == 30
    built = _built({"message": 12})
    assert _find(built, "Deployment", "eu-west-message")["spec"]["replicas"] == 12
    assert _find(built, "Deployment", "eu-west-keys")["spec"]["replicas"] == 2


def test_pdb_allows_one_pod_down_at_a_time() -> None:
    pdb = _find(_built(), "PodDisruptionBudget", "eu-west-message")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "message"


def test_service_exposes_grpc_as_h2c_and_metrics() -> None:
    svc = _find(_built(), "Service", "eu-west-presence")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == 7103 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == 9103


def test_topology_document() -> None:
    region = _region()
    built = _find(_built(), "ConfigMap", "eu-west-topology")
    document = json.loads(built["data"]["topology.json"])
    assert document == topology_document(region, 4)
    assert document["format"] == 1 and document["generation"] == 4
    assert document["region"] == "eu-west"
    assert document["regions"]["eu-west"] == {
        "self": True,
        "publicEndpoint": "chat.eu.example.com:443",
        "peerEndpoint": None,
        "number": 1,
    }
    assert document["regions"]["us-east"]["peerEndpoint"] == "peer.us-east.example.com:7443"
    assert document["regions"]["us-east"]["number"] == 2
    assert document["regions"]["ap-south"]["publicEndpoint"] is None
    assert document["residency"] == {
        "homeOnlyData": ["media", "search"],
        "replicateTo": ["us-east"],
    }
    assert document["routing"]["conversationShards"] == 128
    assert document["routing"]["services"]["keys"] == "eu-west-keys.parley.svc.cluster.local:7101"


def test_conversation_shard_is_stable_and_spread() -> None:
    ids = [f"0190c0de-0000-7000-8000-{i:012x}" for i in range(2000)]
    shards = [conversation_shard(i, 16) for i in ids]
    assert shards == [conversation_shard(i, 16) for i in ids]
    assert set(shards) == set(range(16))
    # A pinned value: every reader of the document must compute the same shard.
    assert conversation_shard("0190c0de-0000-7000-8000-000000000000", 64) == conversation_shard(
        "0190c0de-0000-7000-8000-000000000000", 64
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["services"]["message"].update(minReplicas=5, maxReplicas=2), "below"),
        (lambda s: s["residency"].update(replicateTo=["mars"]), "not peers"),
        (lambda s: s["peers"].append({"name": "eu-west", "endpoint": "x:1"}), "itself"),
        (lambda s: s["peers"].append({"name": "us-east", "endpoint": "x:1"}), "twice"),
        (lambda s: s.pop("tokens"), "tokens.secretName"),
        (lambda s: s["mongo"].pop("uriSecretRef"), "mongo.uriSecretRef"),
        (lambda s: s["redis"].update(clusterNodes=["redis-1:6379"]), "redis.cluster"),
        (
            lambda s: s["services"]["keys"].update(
                scaling={"targets": [{"metric": "x", "perPod": 0}]}
            ),
            "perPod",
        ),
    ],
)
def test_spec_errors_name_the_field(change: Any, message: str) -> None:
    spec = _spec()
    change(spec)
    with pytest.raises(SpecError, match=message):
        _region(spec)


def test_names_too_long_for_dns_are_refused() -> None:
    with pytest.raises(SpecError, match=r"metadata\.name"):
        _region(name="x" * 41)
    built = region_manifests(_region(name="x" * 40), OWNER, generation=1, replicas={})
    assert max(len(m["metadata"]["name"]) for m in built) <= 63
