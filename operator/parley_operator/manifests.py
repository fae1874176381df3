"""Pure builders: a ParleyRegion spec in, the Kubernetes manifests of its region out.

Per service the region runs (keys, message, presence, and media when enabled):
a Deployment, a Service and a PodDisruptionBudget. Per region: a ConfigMap
with each service's config file and a ConfigMap with the topology document
(``topology``). Everything carries an owner reference to the ParleyRegion, so
deleting it garbage-collects them; ``retired`` names what an optional service
left behind when the spec turns it off.
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
from parley_operator.service_config import (
    CONFIG_DIR,
    SECRETS_DIR,
    TOPOLOGY_DIR,
    service_config,
)
from parley_operator.spec import (
    GRPC_PORTS,
    METRICS_PORTS,
    OPTIONAL_SERVICES,
    SERVICE_MODULES,
    RegionSpec,
    ServiceSpec,
)
from parley_operator.topology import TOPOLOGY_FILE, topology_document

Manifest = dict[str, Any]

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


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_map(region: RegionSpec, owner: Owner) -> Manifest:
    data = {
        f"{service}.yaml": yaml.safe_dump(service_config(region, service), sort_keys=True)
        for service in region.services
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


def _secret_volume(name: str, secret: str, items: dict[str, str]) -> dict[str, Any]:
    """A Secret volume of the entries ``items`` (key in the Secret -> file name)."""
    return {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": path} for key, path in items.items()],
            "defaultMode": 0o440,
        },
    }


def _credential_volumes(region: RegionSpec, service: str) -> list[dict[str, Any]]:
    """The service token (every service), operator tokens (svc_media) and S3 keys
    (svc_media, and svc_message for its history archive)."""
    volumes = []
    token = region.auth.service_token
    if token is not None:
        volumes.append(_secret_volume("service-token", token.name, {token.key: "token"}))
    if service not in ("media", "message"):
        return volumes
    operators = region.auth.operator_tokens
    if service == "media" and operators is not None:
        volumes.append(_secret_volume("operator-tokens", operators.name, {operators.key: "tokens"}))
    # svc_media's bucket, which also holds svc_message's history archive.
    credentials = None if region.s3 is None else region.s3.credentials
    if credentials is not None:
        keys = {
            credentials.access_key_id_key: "access_key_id",
            credentials.secret_access_key_key: "secret_access_key",
        }
        volumes.append(_secret_volume("s3", credentials.secret_name, keys))
    return volumes


def _volumes(region: RegionSpec, service: str) -> list[dict[str, Any]]:
    token_keys = list(region.tokens.verification_keys)
    if service == "keys":
        token_keys.append(region.tokens.signing_key)
    return [
        {"name": "config", "configMap": {"name": config_map_name(region)}},
        # Mounted as a directory (no subPath) so the kubelet swaps in a new
        # topology while the pod runs; services reload it.
        {"name": "topology", "configMap": {"name": topology_map_name(region)}},
        _secret_volume("mongo", region.mongo_uri.name, {region.mongo_uri.key: "uri"}),
        _secret_volume("redis", region.redis_url.name, {region.redis_url.key: "url"}),
        _secret_volume(
            "tokens", region.tokens.secret_name, {key: key for key in sorted(set(token_keys))}
        ),
        *_credential_volumes(region, service),
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
            *(
                {"name": name, "mountPath": f"{SECRETS_DIR}/{name}", "readOnly": True}
                for name in (volume["name"] for volume in _credential_volumes(region, service))
            ),
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


def _pod_identity(region: RegionSpec, service: str) -> dict[str, Any]:
    """A ServiceAccount for media pods when the spec names one (an IAM role bound to it)."""
    if service == "media" and region.media is not None and region.media.service_account_name:
        return {"serviceAccountName": region.media.service_account_name}
    return {}


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
                    # No API token: cloud role webhooks (IRSA, workload identity)
                    # project their own token for the ServiceAccount.
                    **_pod_identity(region, service),
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


def config_hash(config: Manifest, service: str) -> str:
    """The hash of one service's config file: a change rolls that service's pods only."""
    return _hash(config["data"][f"{service}.yaml"])


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
    built = [config, topology_config_map(region, owner, generation)]
    for name in region.services:
        count = clamp_replicas(region, name, replicas.get(name))
        digest = config_hash(config, name)
        built.append(deployment(region, name, owner, replicas=count, config_hash=digest))
        built.append(service(region, name, owner))
        built.append(pod_disruption_budget(region, name, owner))
    for manifest in built:
        manifest["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(
            manifest
        )
    return built


# What one service consists of besides its config file, for retiring it.
SERVICE_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
)


def retired(region: RegionSpec) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of the objects of optional services the spec turned off.

    The operator deletes each only if this region owns it (``owned_by``): the
    name alone could be someone else's object.
    """
    return [
        (api_version, kind, deployment_name(region, service))
        for service in OPTIONAL_SERVICES
        if service not in region.services
        for api_version, kind in SERVICE_KINDS
    ]


def owned_by(live: Manifest, uid: str) -> bool:
    """Whether the region with ``uid`` controls the object (its owner reference says so)."""
    references = live.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in references)


def spec_hash(manifest: Manifest) -> str:
    """What the operator wants of an object, minus the replica count the scaler owns."""
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    if manifest["kind"] == "Deployment":
        body["spec"] = {k: v for k, v in body["spec"].items() if k != "replicas"}
    return _hash({"body": body, "labels": manifest["metadata"].get("labels")})
