"""The ParleyRegion CustomResourceDefinition, built in Python.

``operator/generate_crds.py`` writes it to ``helm/parley/crds/``; a unit test
fails when the committed YAML differs from what this module builds. Defaults
come from ``spec``, so the API server and the operator's parse agree.
"""

from __future__ import annotations

from parley_operator import GROUP, REGION_KIND, REGION_PLURAL, VERSION
from parley_operator.crd_regions import peers_schema, replication_schema, residency_schema
from parley_operator.crd_schema import (
    ENDPOINT_PATTERN,
    Schema,
    integer_schema,
    number_schema,
    object_schema,
    quantities_schema,
    secret_key_ref_schema,
    string_schema,
    validations,
)
from parley_operator.crd_storage import media_schema, s3_schema, search_schema
from parley_operator.spec import (
    DEFAULT_CONVERSATION_SHARDS,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_PRE_STOP_SECONDS,
    DEFAULT_PULL_POLICY,
    DEFAULT_SHUTDOWN_GRACE_SECONDS,
    DEFAULT_TARGETS,
    MAX_NAME_LENGTH,
    PULL_POLICIES,
    REGION_PATTERN,
    SERVICES,
)

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed", "Deleting")


def _scaling_target() -> Schema:
    return object_schema(
        "One load signal read from every pod's Prometheus /metrics.",
        {
            "metric": string_schema(
                "Sample name as exposed (counters end in _total).",
                pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
            ),
            "type": string_schema(
                "Gauge: the value is the load. Rate: a counter, load is its per-second "
                "increase between two scrapes.",
                enum=["Gauge", "Rate"],
                default="Gauge",
            ),
            "perPod": number_schema("Load one pod should carry.", exclusiveMinimum=True, minimum=0),
            "labels": {
                "type": "object",
                "description": "Only samples with these label values count.",
                "additionalProperties": {"type": "string"},
            },
        },
        required=["metric", "perPod"],
    )


def _service(name: str) -> Schema:
    defaults = [
        {"metric": t.metric, "type": t.kind, "perPod": t.per_pod}
        | ({"labels": dict(t.labels)} if t.labels else {})
        for t in DEFAULT_TARGETS[name]
    ]
    return object_schema(
        f"The {name} service: replicas, load-based scaling, resources, shutdown.",
        {
            "minReplicas": integer_schema("Fewest pods.", minimum=1, default=DEFAULT_MIN_REPLICAS),
            "maxReplicas": integer_schema(
                "Most pods.", minimum=1, default=DEFAULT_MAX_REPLICAS[name]
            ),
            "scaling": object_schema(
                "Load-based scaling done by the operator (no HPA): the replica count is "
                "the load summed over pods divided by perPod, the highest over targets.",
                {
                    "enabled": {"type": "boolean", "default": True},
                    "targets": {
                        "type": "array",
                        "description": "Defaults depend on the service.",
                        "items": _scaling_target(),
                        "default": defaults,
                        "maxItems": 8,
                    },
                    "scaleUpCooldownSeconds": integer_schema(
                        "Least time since the last scaling before scaling up.",
                        minimum=0,
                        default=60,
                    ),
                    "scaleDownCooldownSeconds": integer_schema(
                        "Least time since the last scaling before scaling down.",
                        minimum=0,
                        default=300,
                    ),
                    "tolerance": number_schema(
                        "Load within this fraction of the target leaves replicas alone.",
                        minimum=0,
                        maximum=1,
                        default=0.1,
                    ),
                    "scaleDownMaxStep": integer_schema(
                        "Most pods removed in one scale-down.", minimum=1, default=1
                    ),
                },
                default={},
            ),
            "resources": object_schema(
                "Container resources (core/v1 ResourceRequirements).",
                {
                    "requests": quantities_schema("Requested cpu and memory."),
                    "limits": quantities_schema("Limits of cpu and memory."),
                },
            ),
            "shutdownGraceSeconds": number_schema(
                "In-flight RPCs get this long after SIGTERM (server.shutdown_grace_seconds).",
                minimum=0,
                maximum=600,
                default=DEFAULT_SHUTDOWN_GRACE_SECONDS,
            ),
            "preStopSeconds": integer_schema(
                "Wait before SIGTERM so the endpoints drop the pod first.",
                minimum=0,
                maximum=60,
                default=DEFAULT_PRE_STOP_SECONDS,
            ),
        },
        default={},
        **validations("self.minReplicas <= self.maxReplicas", "minReplicas exceeds maxReplicas"),
    )


# A service token is a random secret; an operator-tokens file lists digests.
# Both are Secret keys mounted as files, never values in the spec.
def _auth() -> Schema:
    return object_schema(
        "Credentials of service-to-service and operator-only RPCs, each a key of a Secret "
        "mounted as a file.",
        {
            "serviceTokenSecretRef": secret_key_ref_schema(
                "The deployment's service token (a random secret of at least 32 characters): "
                "every service mounts it (auth.service_token_file) to call and accept internal "
                "RPCs. Needed with media."
            ),
            "operatorTokensSecretRef": secret_key_ref_schema(
                "Operator credentials, one `<name> <sha256 hex of the token>` line each "
                "(auth.operator_tokens_file): svc_media mounts it for MediaAdminService "
                "(quarantine). Without it no one can call operator-only RPCs."
            ),
        },
    )


# What the operator refuses too (spec.parse_region), said to the API server in CEL.
MEDIA_ENABLED = "has(self.media) && has(self.media.enabled) && self.media.enabled"
SEARCH_ENABLED = "has(self.search) && has(self.search.enabled) && self.search.enabled"
SPEC_RULES = [
    {
        "rule": "!has(self.peers) || size(self.peers) == 0 || "
        "(has(self.number) && self.peers.all(p, has(p.number)))",
        "message": "spec.number and every peers[].number are required with peers "
        "(ids carry their region's number)",
    },
    {
        "rule": f"!({MEDIA_ENABLED}) || has(self.s3)",
        "message": "media.enabled needs spec.s3 (the bucket media is kept in)",
    },
    {
        "rule": f"!({MEDIA_ENABLED}) || (has(self.auth) && has(self.auth.serviceTokenSecretRef))",
        "message": "media.enabled needs auth.serviceTokenSecretRef "
        "(svc_message and svc_media call each other with it)",
    },
    {
        "rule": f"!({SEARCH_ENABLED}) || (has(self.auth) && has(self.auth.serviceTokenSecretRef))",
        "message": "search.enabled needs auth.serviceTokenSecretRef "
        "(svc_search asks svc_message about messages with it)",
    },
]


def region_spec_schema() -> Schema:
    return object_schema(
        "A Parley region: where it runs, what it connects to, how it scales.",
        {
            "region": string_schema(
                "The region's name, as users' home regions name it.", pattern=REGION_PATTERN
            ),
            "publicEndpoint": string_schema(
                "host:port clients of this region connect to.", pattern=ENDPOINT_PATTERN
            ),
            "number": integer_schema(
                "The region's number, distinct among the regions: the ids of accounts and "
                "conversations minted here carry it. Required with peers; never changes.",
                minimum=0,
                maximum=255,
            ),
            "handleRegistrars": {
                "type": "array",
                "description": "The regions that register handles (default: every region). "
                "Every region must list the same ones; changing it is a migration.",
                "items": string_schema("A region name.", pattern=REGION_PATTERN),
                "minItems": 1,
                "maxItems": 65,
                "x-kubernetes-list-type": "set",
            },
            "legacyRegion": string_schema(
                "The region that owns accounts and conversations created before the "
                "deployment had regions (default: this region).",
                pattern=REGION_PATTERN,
            ),
            "logLevel": string_schema(
                "Log level of the services.",
                enum=["DEBUG", "INFO", "WARNING", "ERROR"],
                default="INFO",
            ),
            "image": object_schema(
                "The Parley image (all services run from it).",
                {
                    "repository": string_schema("Image repository.", minLength=1),
                    "tag": string_schema("Image tag.", minLength=1),
                    "pullPolicy": string_schema(
                        "Image pull policy.", enum=list(PULL_POLICIES), default=DEFAULT_PULL_POLICY
                    ),
                },
                required=["repository"],
            ),
            "mongo": object_schema(
                "MongoDB: the URI comes from a Secret (mounted as a file).",
                {
                    "uriSecretRef": secret_key_ref_schema("Secret key holding the mongodb:// URI."),
                    "database": string_schema(
                        "Database name.", minLength=1, maxLength=60, default="parley"
                    ),
                },
                required=["uriSecretRef"],
            ),
            "redis": object_schema(
                "Redis: the URL comes from a Secret (mounted as a file).",
                {
                    "urlSecretRef": secret_key_ref_schema("Secret key holding the redis:// URL."),
                    "cluster": {
                        "type": "boolean",
                        "description": "Redis is a Redis Cluster: the URL names one of its "
                        "nodes, keys carry hash tags and channels are sharded (redis.cluster).",
                        "default": False,
                    },
                    "clusterNodes": {
                        "type": "array",
                        "description": "More nodes of the cluster (host:port), tried at start "
                        "when the URL's node does not answer; only with cluster.",
                        "items": string_schema("host:port of a node.", pattern=ENDPOINT_PATTERN),
                        "maxItems": 64,
                        "x-kubernetes-list-type": "set",
                    },
                },
                required=["urlSecretRef"],
            ),
            "tokens": object_schema(
                "Token keys: one Secret holding the Ed25519 PEM keys. Only svc_keys "
                "mounts the signing key; every service mounts the verification keys.",
                {
                    "secretName": string_schema("Secret with the PEM files.", minLength=1),
                    "signingKey": string_schema(
                        "Key of the private signing key.", minLength=1, default="signing.pem"
                    ),
                    "verificationKeys": {
                        "type": "array",
                        "description": "Keys of the public keys (several while rotating).",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                        "default": ["signing.pub.pem"],
                    },
                },
                required=["secretName"],
            ),
            "auth": _auth(),
            "s3": s3_schema(),
            "media": media_schema(),
            "search": search_schema(),
            "peers": peers_schema(),
            "residency": residency_schema(),
            "replication": replication_schema(),
            "routing": object_schema(
                "Routing inside the region.",
                {
                    "conversationShards": integer_schema(
                        "Conversation shards (a conversation's shard is a hash of its id).",
                        minimum=1,
                        maximum=65536,
                        default=DEFAULT_CONVERSATION_SHARDS,
                    )
                },
                default={},
            ),
            "services": object_schema(
                "Per-service settings.",
                {name: _service(name) for name in SERVICES},
                default={},
            ),
            "config": {
                "type": "object",
                "description": "Extra service settings merged into every service's config "
                "file (parley_core.config keys; a bad key stops the service at start).",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
        required=["region", "image", "mongo", "redis", "tokens"],
        **{"x-kubernetes-validations": SPEC_RULES},
    )


def _condition() -> Schema:
    return object_schema(
        "A metav1.Condition.",
        {
            "type": string_schema("Condition type.", maxLength=316),
            "status": string_schema("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string_schema("CamelCase reason.", maxLength=1024),
            "message": string_schema("Human-readable detail.", maxLength=32768),
            "observedGeneration": integer_schema(
                "Generation the condition was set for.", minimum=0
            ),
            "lastTransitionTime": string_schema("When status last changed.", format="date-time"),
        },
        required=["type", "status", "lastTransitionTime", "reason", "message"],
    )


def _service_status(name: str) -> Schema:
    return object_schema(
        f"Replicas of the {name} service.",
        {
            "replicas": integer_schema("Replicas the Deployment asks for.", minimum=0),
            "readyReplicas": integer_schema("Pods ready.", minimum=0),
            "lastScaleTime": string_schema("When the operator last scaled it.", format="date-time"),
            "lastScaleReason": string_schema("Why."),
            "load": {
                "type": "object",
                "description": "Last load read per target metric, summed over pods.",
                "additionalProperties": {"type": "number"},
            },
        },
    )


def region_status_schema() -> Schema:
    return object_schema(
        "What the operator last did and saw.",
        {
            "phase": string_schema("Summary of the conditions.", enum=list(PHASES)),
            "observedGeneration": integer_schema("Generation last reconciled.", minimum=0),
            "conditions": {
                "type": "array",
                "items": _condition(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "services": object_schema(
                "Per-service replicas.", {name: _service_status(name) for name in SERVICES}
            ),
            "topologyHash": string_schema("Hash of the topology document last written."),
        },
    )


def region_crd() -> Schema:
    """The ParleyRegion CRD manifest (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{REGION_PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "parley", "app.kubernetes.io/part-of": "parley"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": REGION_KIND,
                "listKind": f"{REGION_KIND}List",
                "plural": REGION_PLURAL,
                "singular": REGION_KIND.lower(),
                "shortNames": ["preg"],
                "categories": ["parley"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Region", "type": "string", "jsonPath": ".spec.region"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Message pods",
                            "type": "integer",
                            "jsonPath": ".status.services.message.replicas",
                        },
                        {
                            "name": "Media pods",
                            "type": "integer",
                            "jsonPath": ".status.services.media.replicas",
                            "priority": 1,
                        },
                        {
                            "name": "Search pods",
                            "type": "integer",
                            "jsonPath": ".status.services.search.replicas",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "One Parley region (one per namespace).",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": region_spec_schema(),
                                "status": region_status_schema(),
                            },
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                                    "message": f"the name must be at most {MAX_NAME_LENGTH} "
                                    "characters (it prefixes the names of what it creates)",
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, Schema]:
    """File name under helm/parley/crds/ -> CRD manifest."""
    crd = region_crd()
    return {f"{crd['metadata']['name']}.yaml": crd}
