"""Pure builders: a ParleyRegion spec in, the Kubernetes manifests of its region out.

Per service (keys, message, presence): a Deployment, a Service and a
PodDisruptionBudget. Per region: a ConfigMap with each service's config file
and a ConfigMap with the topology document (``topology``). Everything carries
an owner reference to the ParleyRegion, so deleting it garbage-collects them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from parley_operator import API_VERSION, REGION_KIND
from parley_operator.spec import (
    GRPC_PORTS,
    METRICS_PORTS,
    SERVICE_MODULES,
    SERVICES,
    RegionSpec,
    ServiceSpec,
)
from parley_operator.topology import TOPOLOGY_FILE, service_address, topology_document

Manifest = dict[str, Any]

CONFIG_DIR = "/etc/parley/config"
TOPOLOGY_DIR = "/etc/parley/topology"
SECRETS_DIR = "/var/run/secrets/parley"
# Non-root user and group of the image; fsGroup makes the secret files readable to it.
RUN_AS = 10001
# Time the stop hooks (projector and ack flushes) get after in-flight RPCs ended.
STOP_MARGIN_SECONDS = 5
CONFIG_HASH_ANNOTATION = "parley.dev/config-hash"
SPEC_HASH_ANNOTATION = "parley.dev/spec-hash"
LAST_SCALE_ANNOTATION = "parley.dev/last-scale-time"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
MANAGED_BY = "parley-operator"


@dataclass(frozen=True)
class Owner:
    """The ParleyRegion that owns every object built for it."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": REGION_KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def deployment_name(region: RegionSpec, service: str) -> str:
    return f"{region.name}-{service}"


def config_map_name(region: RegionSpec) -> str:
    return f"{region.name}-config"


def topology_map_name(region: RegionSpec) -> str:
    return f"{region.name}-topology"


def selector_labels(region: RegionSpec, service: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "parley",
        "app.kubernetes.io/instance": region.name,
        "app.kubernetes.io/component": service,
    }


def labels(region: RegionSpec, service: str | None = None) -> dict[str, str]:
    common = {
        "app.kubernetes.io/name": "parley",
        "app.kubernetes.io/instance": region.name,
        "app.kubernetes.io/part-of": "parley",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "parley.dev/region": region.region,
    }
    if service is not None:
        common["app.kubernetes.io/component"] = service
    return common


def _metadata(
    region: RegionSpec, name: str, owner: Owner, service: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": region.namespace,
        "labels": labels(region, service),
        "ownerReferences": [owner.reference()],
    }


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def service_config(region: RegionSpec, service: str) -> dict[str, Any]:
    """The parley_core.config tree one service is started with.

    The spec's extra ``config`` goes first and the operator's own keys on top,
    so an override cannot move the ports the probes and Services point at.
    Secrets are not in it: they come as files through ``*_FILE`` variables.
    """
    spec = region.services[service]
    tokens_dir = f"{SECRETS_DIR}/tokens"
    auth: dict[str, Any] = {
        "public_key_files": [f"{tokens_dir}/{key}" for key in region.tokens.verification_keys]
    }
    if service == "keys":
        auth["private_key_file"] = f"{tokens_dir}/{region.tokens.signing_key}"
    section: dict[str, Any] = {
        "server": {
            "host": "0.0.0.0",
            "port": GRPC_PORTS[service],
            "metrics_port": METRICS_PORTS[service],
            "shutdown_grace_seconds": spec.shutdown_grace_seconds,
        }
    }
    if service == "message":
        section["keys_target"] = service_address(region, "keys")
    owned: dict[str, Any] = {
        "region": region.region,
        "log_level": region.log_level,
        "log_format": "json",
        "mongo": {"database": region.mongo_database},
        "auth": auth,
        # The mounted topology ConfigMap, which the services reload in place.
        "topology": {"path": f"{TOPOLOGY_DIR}/{TOPOLOGY_FILE}"},
        service: section,
    }
    if region.redis_cluster:
        # Only when on, so the config (and its hash) of other regions is unchanged.
        owned["redis"] = {"cluster": True, "cluster_nodes": list(region.redis_cluster_nodes)}
    return _deep_merge(region.extra_config, owned)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_map(region: RegionSpec, owner: Owner) -> Manifest:
    data = {
        f"{service}.yaml": yaml.safe_dump(service_config(region, service), sort_keys=True)
        for service in SERVICES
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(region, config_map_name(region), owner),
        "data": data,
    }


def topology_config_map(region: RegionSpec, owner: Owner, generation: int) -> Manifest:
    document = topology_document(region, generation)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(region, topology_map_name(region), owner),
        "data": {TOPOLOGY_FILE: json.dumps(document, indent=2, sort_keys=True) + "\n"},
    }


def termination_grace_seconds(spec: ServiceSpec) -> int:
    """preStop wait + in-flight RPC grace + the stop hooks' flush, rounded up."""
    return math.ceil(spec.pre_stop_seconds + spec.shutdown_grace_seconds + STOP_MARGIN_SECONDS)


def _grpc_probe(port: int, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "grpc": {"port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _volumes(region: RegionSpec, service: str) -> list[dict[str, Any]]:
    token_keys = list(region.tokens.verification_keys)
    if service == "keys":
        token_keys.append(region.tokens.signing_key)
    return [
        {"name": "config", "configMap": {"name": config_map_name(region)}},
        # Mounted as a directory (no subPath) so the kubelet swaps in a new
        # topology while the pod runs; services reload it.
        {"name": "topology", "configMap": {"name": topology_map_name(region)}},
        {
            "name": "mongo",
            "secret": {
                "secretName": region.mongo_uri.name,
                "items": [{"key": region.mongo_uri.key, "path": "uri"}],
                "defaultMode": 0o440,
            },
        },
        {
            "name": "redis",
            "secret": {
                "secretName": region.redis_url.name,
                "items": [{"key": region.redis_url.key, "path": "url"}],
                "defaultMode": 0o440,
            },
        },
        {
            "name": "tokens",
            "secret": {
                "secretName": region.tokens.secret_name,
                "items": [{"key": key, "path": key} for key in sorted(set(token_keys))],
                "defaultMode": 0o440,
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]


def _container(region: RegionSpec, service: str) -> dict[str, Any]:
    spec = region.services[service]
    port = GRPC_PORTS[service]
    container: dict[str, Any] = {
        "name": service,
        "image": region.image.reference,
        "imagePullPolicy": region.image.pull_policy,
        "command": [
            "python",
            "-m",
            SERVICE_MODULES[service],
            "--config",
            f"{CONFIG_DIR}/{service}.yaml",
        ],
        "env": [
            {"name": "PARLEY_MONGO__URI_FILE", "value": f"{SECRETS_DIR}/mongo/uri"},
            {"name": "PARLEY_REDIS__URL_FILE", "value": f"{SECRETS_DIR}/redis/url"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ],
        "ports": [
            {"name": "grpc", "containerPort": port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORTS[service], "protocol": "TCP"},
        ],
        "startupProbe": _grpc_probe(port, period=2, failures=60, timeout=2),
        "readinessProbe": _grpc_probe(port, period=5, failures=2, timeout=2),
        "livenessProbe": _grpc_probe(port, period=10, failures=3, timeout=5),
        "resources": dict(spec.resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "topology", "mountPath": TOPOLOGY_DIR, "readOnly": True},
            {"name": "mongo", "mountPath": f"{SECRETS_DIR}/mongo", "readOnly": True},
            {"name": "redis", "mountPath": f"{SECRETS_DIR}/redis", "readOnly": True},
            {"name": "tokens", "mountPath": f"{SECRETS_DIR}/tokens", "readOnly": True},
            # The root filesystem is read-only; Python and grpc may still want a scratch dir.
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
        ],
    }
    if service == "message":
        # Where the other svc_message pods forward a conversation's feed
        # changes to this one when it owns the conversation: the pod's own IP
        # (Kubernetes substitutes $(POD_IP) from the variable before it).
        container["env"] += [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PARLEY_MESSAGE__OWNERSHIP__ADDRESS", "value": f"$(POD_IP):{port}"},
        ]
    if spec.pre_stop_seconds > 0:
        # The pod leaves the Service endpoints while this runs; SIGTERM then
        # starts the drain (health NOT_SERVING, streams end with UNAVAILABLE).
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.pre_stop_seconds}}}
    return container


def deployment(
    region: RegionSpec, service: str, owner: Owner, *, replicas: int, config_hash: str
) -> Manifest:
    spec = region.services[service]
    selector = selector_labels(region, service)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(region, deployment_name(region, service), owner, service),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            # One new pod at a time, none taken down before its replacement is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**labels(region, service), **selector},
                    "annotations": {
                        # Services read their config file once: a new file needs new pods.
                        CONFIG_HASH_ANNOTATION: config_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORTS[service]),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": termination_grace_seconds(spec),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": key,
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector},
                        }
                        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
                    ],
                    "containers": [_container(region, service)],
                    "volumes": _volumes(region, service),
                },
            },
        },
    }


def service(region: RegionSpec, service_name: str, owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(region, deployment_name(region, service_name), owner, service_name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(region, service_name),
            "ports": [
                {
                    "name": "grpc",
                    "port": GRPC_PORTS[service_name],
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
                {
                    "name": "metrics",
                    "port": METRICS_PORTS[service_name],
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def pod_disruption_budget(region: RegionSpec, service_name: str, owner: Owner) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(region, deployment_name(region, service_name), owner, service_name),
        "spec": {
            # One pod at a time: its streams move to the others before the next goes.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(region, service_name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def config_hash(config: Manifest) -> str:
    return _hash(config["data"])


def clamp_replicas(region: RegionSpec, service_name: str, current: int | None) -> int:
    """Keep the scaler's count across reconciles, inside the spec's bounds."""
    policy = region.services[service_name].scaling
    if current is None:
        return policy.min_replicas
    return max(policy.min_replicas, min(policy.max_replicas, current))


def region_manifests(
    region: RegionSpec,
    owner: Owner,
    *,
    generation: int,
    replicas: Mapping[str, int | None],
) -> list[Manifest]:
    """Everything a region consists of, ConfigMaps first (the pods mount them)."""
    config = config_map(region, owner)
    digest = config_hash(config)
    built = [config, topology_config_map(region, owner, generation)]
    for name in SERVICES:
        count = clamp_replicas(region, name, replicas.get(name))
        built.append(deployment(region, name, owner, replicas=count, config_hash=digest))
        built.append(service(region, name, owner))
        built.append(pod_disruption_budget(region, name, owner))
    for manifest in built:
        manifest["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(
            manifest
        )
    return built


def spec_hash(manifest: Manifest) -> str:
    """What the operator wants of an object, minus the replica count the scaler owns."""
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    if manifest["kind"] == "Deployment":
        body["spec"] = {k: v for k, v in body["spec"].items() if k != "replicas"}
    return _hash({"body": body, "labels": manifest["metadata"].get("labels")})
