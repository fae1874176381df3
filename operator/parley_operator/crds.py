"""The ParleyRegion CustomResourceDefinition, built in Python.

``operator/generate_crds.py`` writes it to ``helm/parley/crds/``; a unit test
fails when the committed YAML differs from what this module builds. Defaults
come from ``spec``, so the API server and the operator's parse agree.
"""

from __future__ import annotations

from typing import Any

from parley_operator import GROUP, REGION_KIND, REGION_PLURAL, VERSION
from parley_operator.spec import (
    DATA_KINDS,
    DEFAULT_CONVERSATION_SHARDS,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_PRE_STOP_SECONDS,
    DEFAULT_PULL_POLICY,
    DEFAULT_SHUTDOWN_GRACE_SECONDS,
    DEFAULT_TARGETS,
    MAX_NAME_LENGTH,
    MAX_TIER_DAYS,
    MIN_ARCHIVE_DAYS,
    MIN_DAYS_IN_INFREQUENT,
    MIN_INFREQUENT_DAYS,
    PULL_POLICIES,
    REGION_PATTERN,
    S3_ADDRESSING_STYLES,
    SERVICES,
)

Schema = dict[str, Any]

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed", "Deleting")
ENDPOINT_PATTERN = r"^[A-Za-z0-9.-]+:[0-9]{1,5}$"


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _integer(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def _number(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def _object(
    description: str, properties: Schema, *, required: list[str] | None = None, **extra: Any
) -> Schema:
    """An object node; ``extra`` carries other keywords (default, x-kubernetes-*)."""
    node: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        node["required"] = required
    node.update(extra)
    return node


def _secret_key_ref(description: str) -> Schema:
    return _object(
        description,
        {
            "name": _string("Name of a Secret in the region's namespace.", minLength=1),
            "key": _string("Key inside the Secret.", minLength=1),
        },
        required=["name", "key"],
    )


def _quantities(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        },
    }


def _scaling_target() -> Schema:
    return _object(
        "One load signal read from every pod's Prometheus /metrics.",
        {
            "metric": _string(
                "Sample name as exposed (counters end in _total).",
                pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
            ),
            "type": _string(
                "Gauge: the value is the load. Rate: a counter, load is its per-second "
                "increase between two scrapes.",
                enum=["Gauge", "Rate"],
                default="Gauge",
            ),
            "perPod": _number("Load one pod should carry.", exclusiveMinimum=True, minimum=0),
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
    return _object(
        f"The {name} service: replicas, load-based scaling, resources, shutdown.",
        {
            "minReplicas": _integer("Fewest pods.", minimum=1, default=DEFAULT_MIN_REPLICAS),
            "maxReplicas": _integer("Most pods.", minimum=1, default=DEFAULT_MAX_REPLICAS[name]),
            "scaling": _object(
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
                    "scaleUpCooldownSeconds": _integer(
                        "Least time since the last scaling before scaling up.",
                        minimum=0,
                        default=60,
                    ),
                    "scaleDownCooldownSeconds": _integer(
                        "Least time since the last scaling before scaling down.",
                        minimum=0,
                        default=300,
                    ),
                    "tolerance": _number(
                        "Load within this fraction of the target leaves replicas alone.",
                        minimum=0,
                        maximum=1,
                        default=0.1,
                    ),
                    "scaleDownMaxStep": _integer(
                        "Most pods removed in one scale-down.", minimum=1, default=1
                    ),
                },
                default={},
            ),
            "resources": _object(
                "Container resources (core/v1 ResourceRequirements).",
                {
                    "requests": _quantities("Requested cpu and memory."),
                    "limits": _quantities("Limits of cpu and memory."),
                },
            ),
            "shutdownGraceSeconds": _number(
                "In-flight RPCs get this long after SIGTERM (server.shutdown_grace_seconds).",
                minimum=0,
                maximum=600,
                default=DEFAULT_SHUTDOWN_GRACE_SECONDS,
            ),
            "preStopSeconds": _integer(
                "Wait before SIGTERM so the endpoints drop the pod first.",
                minimum=0,
                maximum=60,
                default=DEFAULT_PRE_STOP_SECONDS,
            ),
        },
        default={},
        **_validations("self.minReplicas <= self.maxReplicas", "minReplicas exceeds maxReplicas"),
    )


def _validations(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule the API server checks (x-kubernetes-validations)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


# A service token is a random secret; an operator-tokens file lists digests.
# Both are Secret keys mounted as files, never values in the spec.
def _auth() -> Schema:
    return _object(
        "Credentials of service-to-service and operator-only RPCs, each a key of a Secret "
        "mounted as a file.",
        {
            "serviceTokenSecretRef": _secret_key_ref(
                "The deployment's service token (a random secret of at least 32 characters): "
                "every service mounts it (auth.service_token_file) to call and accept internal "
                "RPCs. Needed with media."
            ),
            "operatorTokensSecretRef": _secret_key_ref(
                "Operator credentials, one `<name> <sha256 hex of the token>` line each "
                "(auth.operator_tokens_file): svc_media mounts it for MediaAdminService "
                "(quarantine). Without it no one can call operator-only RPCs."
            ),
        },
    )


def _s3() -> Schema:
    return _object(
        "S3-compatible object storage (AWS S3, MinIO, Ceph RGW) for media and the archive: "
        "one bucket per region.",
        {
            "bucket": _string("Bucket name.", minLength=3, maxLength=63),
            "endpoint": _string(
                "Endpoint URL the services call (empty: AWS S3 of `region`).",
                pattern=r"^https?://",
            ),
            "publicEndpoint": _string(
                "Endpoint URL clients reach the store at, put in presigned URLs (they sign "
                "the host); empty: `endpoint`.",
                pattern=r"^https?://",
            ),
            "region": _string("Bucket region (used in request signatures).", maxLength=64),
            "addressingStyle": _string(
                "Bucket addressing: path (endpoint/bucket/key, works everywhere), virtual "
                "(bucket.endpoint/key) or auto.",
                enum=list(S3_ADDRESSING_STYLES),
                default="path",
            ),
            "credentialsSecretRef": _object(
                "Secret with the access key pair, mounted as files into svc_media. Leave it "
                "out to use the default AWS credential chain (a role bound to "
                "media.serviceAccountName, or the node's).",
                {
                    "name": _string("Secret name.", minLength=1),
                    "accessKeyIdKey": _string(
                        "Key of the access key id.", minLength=1, default="AWS_ACCESS_KEY_ID"
                    ),
                    "secretAccessKeyKey": _string(
                        "Key of the secret access key.",
                        minLength=1,
                        default="AWS_SECRET_ACCESS_KEY",
                    ),
                },
                required=["name"],
            ),
        },
        required=["bucket"],
    )


def _media() -> Schema:
    return _object(
        "svc_media, end-to-end encrypted attachments in the region's bucket (spec.s3). Its "
        "replicas and scaling are under services.media; other settings go in config.media.",
        {
            "enabled": {
                "type": "boolean",
                "description": "Run svc_media. Needs spec.s3 and spec.auth.serviceTokenSecretRef.",
                "default": False,
            },
            "serviceAccountName": _string(
                "ServiceAccount of the media pods, e.g. one bound to an IAM role that may use "
                "the bucket (then leave out s3.credentialsSecretRef); empty: none.",
                pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                maxLength=253,
            ),
            "maxObjectBytes": _integer(
                "Largest ciphertext one upload may carry, in bytes (media.max_object_bytes).",
                minimum=1,
                maximum=5 * 1024**4,
            ),
            "gcGraceSeconds": _integer(
                "Seconds media stays after its last reference went before garbage collection "
                "checks it (media.gc_grace_seconds).",
                minimum=0,
                maximum=30 * 86400,
            ),
            "tiers": _media_tiers(),
            "quotas": _object(
                "Per-account quotas in ciphertext bytes (media.quotas); forwards count against "
                "no quota of the forwarder.",
                {
                    "dailyUploadBytes": _integer(
                        "Bytes one account may upload per UTC day.", minimum=1
                    ),
                    "storedBytes": _integer(
                        "Bytes of the media one account uploaded that may be kept at once.",
                        minimum=1,
                    ),
                },
            ),
        },
        default={},
    )


def _search() -> Schema:
    return _object(
        "svc_search, the opt-in server blind index over end-to-end encrypted history (postings "
        "in MongoDB). Its replicas and scaling are under services.search; other settings go in "
        "config.search.",
        {
            "enabled": {
                "type": "boolean",
                "description": "Run svc_search. Needs spec.auth.serviceTokenSecretRef.",
                "default": False,
            },
        },
        default={},
    )


# What real S3 runs and bills (parley_core.config, MediaTierSettings), said to the API server.
TIERS_RULE = (
    "!has(self.infrequentAfterDays) || !has(self.archiveAfterDays) "
    "|| self.infrequentAfterDays == 0 || self.archiveAfterDays == 0 "
    f"|| self.archiveAfterDays >= self.infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT}"
)


def _days_or_off(description: str, least: int) -> Schema:
    # 0 turns the transition off; otherwise S3's floor (a JSON schema can say "0 or >= n").
    return _integer(
        description, minimum=0, maximum=MAX_TIER_DAYS, anyOf=[{"enum": [0]}, {"minimum": least}]
    )


def _media_tiers() -> Schema:
    return _object(
        "Storage tiers of the media bucket (media.tiers), set as its lifecycle rules: objects "
        "move STANDARD -> STANDARD_IA -> GLACIER. Left out, svc_media's defaults apply "
        "(STANDARD_IA after 30 days, no GLACIER, objects of 128 KiB or less never move).",
        {
            "infrequentAfterDays": _days_or_off(
                f"Days after upload an object moves to STANDARD_IA; 0 never, else at least "
                f"{MIN_INFREQUENT_DAYS} (S3 moves nothing sooner).",
                MIN_INFREQUENT_DAYS,
            ),
            "archiveAfterDays": _days_or_off(
                f"Days after upload an object moves to GLACIER (downloads then need RestoreMedia); "
                f"0 never, else at least {MIN_ARCHIVE_DAYS} (Glacier bills {MIN_ARCHIVE_DAYS} days "
                f"at least) and at least infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT} when both "
                "are on.",
                MIN_ARCHIVE_DAYS,
            ),
            "minObjectBytes": _integer(
                "Objects of at most this many bytes never move (S3 transitions nothing under "
                "128 KiB by default, and a thumbnail in Glacier would need a restore).",
                minimum=0,
                maximum=5 * 1024**4,
            ),
        },
        **_validations(
            TIERS_RULE,
            f"archiveAfterDays must be at least infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT} "
            "(S3 keeps objects 30 days in STANDARD_IA before archiving them)",
        ),
    )


# What the operator refuses too (spec.parse_region), said to the API server in CEL.
MEDIA_ENABLED = "has(self.media) && has(self.media.enabled) && self.media.enabled"
SEARCH_ENABLED = "has(self.search) && has(self.search.enabled) && self.search.enabled"
SPEC_RULES = [
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
    return _object(
        "A Parley region: where it runs, what it connects to, how it scales.",
        {
            "region": _string(
                "The region's name, as users' home regions name it.", pattern=REGION_PATTERN
            ),
            "publicEndpoint": _string(
                "host:port clients of this region connect to.", pattern=ENDPOINT_PATTERN
            ),
            "logLevel": _string(
                "Log level of the services.",
                enum=["DEBUG", "INFO", "WARNING", "ERROR"],
                default="INFO",
            ),
            "image": _object(
                "The Parley image (all services run from it).",
                {
                    "repository": _string("Image repository.", minLength=1),
                    "tag": _string("Image tag.", minLength=1),
                    "pullPolicy": _string(
                        "Image pull policy.", enum=list(PULL_POLICIES), default=DEFAULT_PULL_POLICY
                    ),
                },
                required=["repository"],
            ),
            "mongo": _object(
                "MongoDB: the URI comes from a Secret (mounted as a file).",
                {
                    "uriSecretRef": _secret_key_ref("Secret key holding the mongodb:// URI."),
                    "database": _string(
                        "Database name.", minLength=1, maxLength=60, default="parley"
                    ),
                },
                required=["uriSecretRef"],
            ),
            "redis": _object(
                "Redis: the URL comes from a Secret (mounted as a file).",
                {
                    "urlSecretRef": _secret_key_ref("Secret key holding the redis:// URL."),
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
                        "items": _string("host:port of a node.", pattern=ENDPOINT_PATTERN),
                        "maxItems": 64,
                        "x-kubernetes-list-type": "set",
                    },
                },
                required=["urlSecretRef"],
            ),
            "tokens": _object(
                "Token keys: one Secret holding the Ed25519 PEM keys. Only svc_keys "
                "mounts the signing key; every service mounts the verification keys.",
                {
                    "secretName": _string("Secret with the PEM files.", minLength=1),
                    "signingKey": _string(
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
            "s3": _s3(),
            "media": _media(),
            "search": _search(),
            "peers": {
                "type": "array",
                "description": "The other regions: conversation events replicate to them and "
                "requests for conversations homed there are forwarded to them.",
                "items": _object(
                    "A peer region.",
                    {
                        "name": _string("The peer's region name.", pattern=REGION_PATTERN),
                        "endpoint": _string(
                            "host:port of the peer's region-to-region endpoint.",
                            pattern=ENDPOINT_PATTERN,
                        ),
                        "publicEndpoint": _string(
                            "host:port the peer's clients connect to.", pattern=ENDPOINT_PATTERN
                        ),
                    },
                    required=["name", "endpoint"],
                ),
                "maxItems": 64,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
            "residency": _object(
                "Data residency of users homed in this region.",
                {
                    "homeOnlyData": {
                        "type": "array",
                        "description": "Data kinds that never leave this region.",
                        "items": {"type": "string", "enum": list(DATA_KINDS)},
                        "x-kubernetes-list-type": "set",
                    },
                    "replicateTo": {
                        "type": "array",
                        "description": "Peers conversation events may replicate to "
                        "(empty: every peer).",
                        "items": {"type": "string", "pattern": REGION_PATTERN},
                        "x-kubernetes-list-type": "set",
                    },
                },
                default={},
            ),
            "routing": _object(
                "Routing inside the region.",
                {
                    "conversationShards": _integer(
                        "Conversation shards (a conversation's shard is a hash of its id).",
                        minimum=1,
                        maximum=65536,
                        default=DEFAULT_CONVERSATION_SHARDS,
                    )
                },
                default={},
            ),
            "services": _object(
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
    return _object(
        "A metav1.Condition.",
        {
            "type": _string("Condition type.", maxLength=316),
            "status": _string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _string("CamelCase reason.", maxLength=1024),
            "message": _string("Human-readable detail.", maxLength=32768),
            "observedGeneration": _integer("Generation the condition was set for.", minimum=0),
            "lastTransitionTime": _string("When status last changed.", format="date-time"),
        },
        required=["type", "status", "lastTransitionTime", "reason", "message"],
    )


def _service_status(name: str) -> Schema:
    return _object(
        f"Replicas of the {name} service.",
        {
            "replicas": _integer("Replicas the Deployment asks for.", minimum=0),
            "readyReplicas": _integer("Pods ready.", minimum=0),
            "lastScaleTime": _string("When the operator last scaled it.", format="date-time"),
            "lastScaleReason": _string("Why."),
            "load": {
                "type": "object",
                "description": "Last load read per target metric, summed over pods.",
                "additionalProperties": {"type": "number"},
            },
        },
    )


def region_status_schema() -> Schema:
    return _object(
        "What the operator last did and saw.",
        {
            "phase": _string("Summary of the conditions.", enum=list(PHASES)),
            "observedGeneration": _integer("Generation last reconciled.", minimum=0),
            "conditions": {
                "type": "array",
                "items": _condition(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "services": _object(
                "Per-service replicas.", {name: _service_status(name) for name in SERVICES}
            ),
            "topologyHash": _string("Hash of the topology document last written."),
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
