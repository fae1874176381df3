"""The ParleyRegion spec as typed, defaulted values.

The API server already applies the CRD's defaults and checks its schema; this
parse repeats the defaults (the same constants feed the schema in ``crds``) so
the builders never see a missing field, and checks what a schema cannot say
(min <= max, names short enough for DNS; the region links, residency and
replication are parsed in ``spec_regions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal

from parley_operator.spec_errors import SpecError as SpecError
from parley_operator.spec_regions import Peer as Peer
from parley_operator.spec_regions import ReplicationSpec, parse_links

# Every service the operator knows; a region runs the core ones always and
# the optional ones (media: it needs an object store; search: the opt-in blind
# index) when its spec turns them on.
SERVICES: tuple[str, ...] = ("keys", "message", "presence", "media", "search")
CORE_SERVICES: tuple[str, ...] = ("keys", "message", "presence")
OPTIONAL_SERVICES: tuple[str, ...] = ("media", "search")
# The service modules, gRPC ports and metrics ports the processes are started with;
# they match parley_core.config's defaults and parley_dev's layout.
SERVICE_MODULES: Mapping[str, str] = {
    "keys": "svc_keys",
    "message": "svc_message",
    "presence": "svc_presence",
    "media": "svc_media",
    "search": "svc_search",
}
GRPC_PORTS: Mapping[str, int] = {
    "keys": 7101,
    "message": 7102,
    "presence": 7103,
    "media": 7104,
    "search": 7105,
}
METRICS_PORTS: Mapping[str, int] = {
    "keys": 9101,
    "message": 9102,
    "presence": 9103,
    "media": 9104,
    "search": 9105,
}

# Data kinds a region can keep at home (never replicated to peers).
DATA_KINDS: tuple[str, ...] = ("messages", "media", "keys", "presence", "search")
PULL_POLICIES: tuple[str, ...] = ("Always", "IfNotPresent", "Never")
S3_ADDRESSING_STYLES: tuple[str, ...] = ("path", "virtual", "auto")
# Kubernetes names are DNS labels (63); the longest suffix added is "-presence-config".
MAX_NAME_LENGTH = 40
REGION_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"

MetricKind = Literal["Gauge", "Rate"]


@dataclass(frozen=True)
class ScalingTarget:
    """One load signal: the sum of a metric's samples on a pod, per second for counters."""

    metric: str
    kind: MetricKind
    per_pod: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int
    max_replicas: int
    targets: tuple[ScalingTarget, ...]
    enabled: bool = True
    scale_up_cooldown_seconds: float = 60.0
    scale_down_cooldown_seconds: float = 300.0
    # Within this fraction of the target, load counts as on target (no flapping).
    tolerance: float = 0.1
    # Pods removed per scale-down: each one drains its streams onto the others.
    scale_down_max_step: int = 1


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    scaling: ScalingPolicy
    resources: Mapping[str, Any]
    shutdown_grace_seconds: float
    # Seconds between SIGTERM being due and being sent, so endpoints drop the pod first.
    pre_stop_seconds: int


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str
    pull_policy: str

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class TokenKeys:
    secret_name: str
    signing_key: str
    verification_keys: tuple[str, ...]


@dataclass(frozen=True)
class S3Credentials:
    """A Secret holding an access key pair, and the keys of its two entries."""

    secret_name: str
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class S3Spec:
    bucket: str
    # None: the AWS default credential chain (a pod role, the node's instance role).
    credentials: S3Credentials | None
    endpoint: str | None = None
    region: str | None = None
    # Where clients reach the store, when not at ``endpoint``: presigned URLs sign the host.
    public_endpoint: str | None = None
    addressing_style: str = "path"


@dataclass(frozen=True)
class AuthSecrets:
    """Credentials of service-to-service and operator-only RPCs, each a Secret key."""

    # The deployment's service token: every service mounts it (internal RPCs).
    service_token: SecretKeyRef | None = None
    # `<name> <sha256 hex>` lines: services with operator-only RPCs mount it.
    operator_tokens: SecretKeyRef | None = None


# S3's lifecycle floors, as parley_core.config's MediaTierSettings refuses them
# (the operator imports no parley_core; a test keeps the two the same).
MIN_INFREQUENT_DAYS = 30
MIN_ARCHIVE_DAYS = 90
MIN_DAYS_IN_INFREQUENT = 30
MAX_TIER_DAYS = 36_500


@dataclass(frozen=True)
class MediaTiers:
    infrequent_after_days: int | None = None
    archive_after_days: int | None = None
    min_object_bytes: int | None = None


@dataclass(frozen=True)
class MediaQuotas:
    daily_upload_bytes: int | None = None
    stored_bytes: int | None = None


@dataclass(frozen=True)
class MediaSpec:
    """svc_media's own settings; present only when the region runs media."""

    quotas: MediaQuotas = MediaQuotas()
    tiers: MediaTiers = MediaTiers()
    max_object_bytes: int | None = None
    gc_grace_seconds: int | None = None
    # A ServiceAccount for the media pods (an IAM role bound to it instead of keys).
    service_account_name: str | None = None


@dataclass(frozen=True)
class RegionSpec:
    name: str
    namespace: str
    region: str
    public_endpoint: str | None
    image: Image
    mongo_uri: SecretKeyRef
    mongo_database: str
    redis_url: SecretKeyRef
    tokens: TokenKeys
    s3: S3Spec | None
    peers: tuple[Peer, ...]
    home_only_data: tuple[str, ...]
    replicate_to: tuple[str, ...]
    conversation_shards: int
    # The services this region runs (the core ones, and media when enabled), in SERVICES order.
    services: Mapping[str, ServiceSpec]
    log_level: str
    extra_config: Mapping[str, Any]
    auth: AuthSecrets = AuthSecrets()
    # This region's number; required once it has peers.
    number: int | None = None
    # The regions that register handles (None: every region).
    handle_registrars: tuple[str, ...] | None = None
    # The region owning ids minted before the deployment had regions.
    legacy_region: str | None = None
    media: MediaSpec | None = None
    # svc_search runs (spec.search.enabled).
    search: bool = False
    # Redis is a Redis Cluster: the URL names one node, these (host:port) more.
    redis_cluster: bool = False
    redis_cluster_nodes: tuple[str, ...] = ()
    # spec.replication: svc_message's message.replication (unset: its defaults).
    replication: ReplicationSpec = field(default_factory=ReplicationSpec)


DEFAULT_TARGETS: Mapping[str, tuple[ScalingTarget, ...]] = {
    "keys": (ScalingTarget("parley_rpc_requests_total", "Rate", 300.0),),
    "message": (
        ScalingTarget("parley_delivery_streams_open", "Gauge", 2000.0),
        ScalingTarget("parley_messages_committed_total", "Rate", 500.0),
    ),
    "presence": (
        ScalingTarget("parley_presence_subscriptions_open", "Gauge", 5000.0),
        ScalingTarget("parley_presence_heartbeats_total", "Rate", 1000.0),
    ),
    # Uploads and downloads go straight to the object store on presigned URLs,
    # so RPCs are cheap, except a multipart CompleteUpload: it reads the whole
    # object back to check its SHA-256, one such stream keeping a core busy.
    "media": (
        ScalingTarget("parley_rpc_requests_total", "Rate", 300.0),
        ScalingTarget("parley_rpc_in_flight", "Gauge", 4.0, {"method": "CompleteUpload"}),
    ),
    # A Search page is up to 16 indexed scans and one call to svc_message.
    "search": (
        ScalingTarget("parley_rpc_requests_total", "Rate", 200.0),
        ScalingTarget("parley_search_queries_total", "Rate", 100.0),
    ),
}
DEFAULT_MIN_REPLICAS = 2
DEFAULT_MAX_REPLICAS: Mapping[str, int] = {
    "keys": 10,
    "message": 20,
    "presence": 10,
    "media": 10,
    "search": 10,
}
DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_PRE_STOP_SECONDS = 5
DEFAULT_CONVERSATION_SHARDS = 64
# The operator's own release (the `parley` distribution it ships in): the
# services' image scripts/build_image.sh tags with the same version, so a
# region without a tag runs the services of the operator's release.
DEFAULT_IMAGE_TAG = version("parley")
DEFAULT_PULL_POLICY = "IfNotPresent"


def _mapping(tree: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = tree.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key} must be an object")
    return value


def _cluster_nodes(redis: Mapping[str, Any]) -> tuple[str, ...]:
    nodes = tuple(str(node) for node in redis.get("clusterNodes") or ())
    if nodes and not redis.get("cluster"):
        raise SpecError("spec.redis.clusterNodes needs spec.redis.cluster: true")
    return nodes


def _secret_ref(tree: Mapping[str, Any], where: str) -> SecretKeyRef:
    if not isinstance(tree, Mapping) or not tree.get("name") or not tree.get("key"):
        raise SpecError(f"{where} needs a secret name and key")
    return SecretKeyRef(name=str(tree["name"]), key=str(tree["key"]))


def _optional_secret_ref(tree: Mapping[str, Any], key: str, where: str) -> SecretKeyRef | None:
    value = tree.get(key)
    return None if value is None else _secret_ref(value, f"{where}.{key}")


def _optional_int(tree: Mapping[str, Any], key: str, where: str, minimum: int) -> int | None:
    value = tree.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}.{key} must be an integer of at least {minimum}")
    return value


def _s3(tree: Mapping[str, Any]) -> S3Spec:
    if not tree.get("bucket"):
        raise SpecError("spec.s3.bucket is required")
    style = str(tree.get("addressingStyle") or "path")
    if style not in S3_ADDRESSING_STYLES:
        raise SpecError(f"spec.s3.addressingStyle must be one of {list(S3_ADDRESSING_STYLES)}")
    credentials = None
    ref = tree.get("credentialsSecretRef")
    if ref is not None:
        if not isinstance(ref, Mapping) or not ref.get("name"):
            raise SpecError("spec.s3.credentialsSecretRef needs a secret name")
        credentials = S3Credentials(
            secret_name=str(ref["name"]),
            access_key_id_key=str(ref.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID"),
            secret_access_key_key=str(ref.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY"),
        )
    return S3Spec(
        bucket=str(tree["bucket"]),
        credentials=credentials,
        endpoint=tree.get("endpoint") or None,
        region=tree.get("region") or None,
        public_endpoint=tree.get("publicEndpoint") or None,
        addressing_style=style,
    )


def _days_or_off(tree: Mapping[str, Any], key: str, where: str, least: int) -> int | None:
    value = _optional_int(tree, key, where, 0)
    if value is not None and (0 < value < least or value > MAX_TIER_DAYS):
        raise SpecError(f"{where}.{key} must be 0 (off) or {least} to {MAX_TIER_DAYS}")
    return value


def _tiers(tree: Mapping[str, Any], where: str) -> MediaTiers:
    """The bucket's tier schedule, refused where S3 could not run it (the CRD's rules)."""
    infrequent = _days_or_off(tree, "infrequentAfterDays", where, MIN_INFREQUENT_DAYS)
    archive = _days_or_off(tree, "archiveAfterDays", where, MIN_ARCHIVE_DAYS)
    if infrequent and archive and archive < infrequent + MIN_DAYS_IN_INFREQUENT:
        raise SpecError(
            f"{where}.archiveAfterDays must be at least infrequentAfterDays + "
            f"{MIN_DAYS_IN_INFREQUENT} (S3 keeps objects {MIN_DAYS_IN_INFREQUENT} days in "
            "STANDARD_IA before archiving them)"
        )
    return MediaTiers(
        infrequent_after_days=infrequent,
        archive_after_days=archive,
        min_object_bytes=_optional_int(tree, "minObjectBytes", where, 0),
    )


def _media(tree: Mapping[str, Any], s3: S3Spec | None, auth: AuthSecrets) -> MediaSpec | None:
    """svc_media's settings when the region runs it, else None."""
    if not tree.get("enabled", False):
        return None
    # svc_message and svc_media call each other with the service token, and
    # media lives in the region's bucket: without either, svc_media cannot work.
    if s3 is None:
        raise SpecError("spec.media.enabled needs spec.s3 (the bucket media is kept in)")
    if auth.service_token is None:
        raise SpecError(
            "spec.media.enabled needs spec.auth.serviceTokenSecretRef "
            "(svc_message and svc_media call each other with it)"
        )
    quotas = _mapping(tree, "quotas")
    where = "spec.media"
    return MediaSpec(
        quotas=MediaQuotas(
            daily_upload_bytes=_optional_int(quotas, "dailyUploadBytes", f"{where}.quotas", 1),
            stored_bytes=_optional_int(quotas, "storedBytes", f"{where}.quotas", 1),
        ),
        tiers=_tiers(_mapping(tree, "tiers"), f"{where}.tiers"),
        max_object_bytes=_optional_int(tree, "maxObjectBytes", where, 1),
        gc_grace_seconds=_optional_int(tree, "gcGraceSeconds", where, 0),
        service_account_name=tree.get("serviceAccountName") or None,
    )


def _search(tree: Mapping[str, Any], auth: AuthSecrets) -> bool:
    """Whether the region runs svc_search."""
    if not tree.get("enabled", False):
        return False
    if auth.service_token is None:
        raise SpecError(
            "spec.search.enabled needs spec.auth.serviceTokenSecretRef "
            "(svc_search asks svc_message about messages with it)"
        )
    return True


def _target(tree: Mapping[str, Any], where: str) -> ScalingTarget:
    kind = tree.get("type", "Gauge")
    if kind not in ("Gauge", "Rate"):
        raise SpecError(f"{where}.type must be Gauge or Rate")
    per_pod = float(tree.get("perPod", 0))
    if per_pod <= 0:
        raise SpecError(f"{where}.perPod must be positive")
    metric = str(tree.get("metric", ""))
    if not metric:
        raise SpecError(f"{where}.metric is required")
    labels = {str(k): str(v) for k, v in (tree.get("labels") or {}).items()}
    return ScalingTarget(metric=metric, kind=kind, per_pod=per_pod, labels=labels)


def _service(name: str, tree: Mapping[str, Any]) -> ServiceSpec:
    where = f"spec.services.{name}"
    min_replicas = int(tree.get("minReplicas", DEFAULT_MIN_REPLICAS))
    max_replicas = int(tree.get("maxReplicas", max(DEFAULT_MAX_REPLICAS[name], min_replicas)))
    if min_replicas < 1:
        raise SpecError(f"{where}.minReplicas must be at least 1")
    if max_replicas < min_replicas:
        raise SpecError(
            f"{where}.maxReplicas ({max_replicas}) is below minReplicas ({min_replicas})"
        )
    scaling = tree.get("scaling") or {}
    raw_targets: Sequence[Mapping[str, Any]] = scaling.get("targets") or ()
    targets = (
        tuple(_target(t, f"{where}.scaling.targets[{i}]") for i, t in enumerate(raw_targets))
        or DEFAULT_TARGETS[name]
    )
    policy = ScalingPolicy(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        targets=targets,
        enabled=bool(scaling.get("enabled", True)),
        scale_up_cooldown_seconds=float(scaling.get("scaleUpCooldownSeconds", 60)),
        scale_down_cooldown_seconds=float(scaling.get("scaleDownCooldownSeconds", 300)),
        tolerance=float(scaling.get("tolerance", 0.1)),
        scale_down_max_step=int(scaling.get("scaleDownMaxStep", 1)),
    )
    if policy.scale_down_max_step < 1:
        raise SpecError(f"{where}.scaling.scaleDownMaxStep must be at least 1")
    return ServiceSpec(
        name=name,
        scaling=policy,
        resources=tree.get("resources") or DEFAULT_RESOURCES,
        shutdown_grace_seconds=float(
            tree.get("shutdownGraceSeconds", DEFAULT_SHUTDOWN_GRACE_SECONDS)
        ),
        pre_stop_seconds=int(tree.get("preStopSeconds", DEFAULT_PRE_STOP_SECONDS)),
    )


def parse_region(name: str, namespace: str, spec: Mapping[str, Any]) -> RegionSpec:
    """The resource's spec with every default filled in, or SpecError naming the field."""
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"metadata.name is longer than {MAX_NAME_LENGTH} characters")
    region = str(spec.get("region") or "")
    if not region:
        raise SpecError("spec.region is required")
    image_tree = _mapping(spec, "image")
    if not image_tree.get("repository"):
        raise SpecError("spec.image.repository is required")
    image = Image(
        repository=str(image_tree["repository"]),
        tag=str(image_tree.get("tag") or DEFAULT_IMAGE_TAG),
        pull_policy=str(image_tree.get("pullPolicy") or DEFAULT_PULL_POLICY),
    )
    mongo = _mapping(spec, "mongo")
    redis = _mapping(spec, "redis")
    tokens_tree = _mapping(spec, "tokens")
    if not tokens_tree.get("secretName"):
        raise SpecError("spec.tokens.secretName is required")
    tokens = TokenKeys(
        secret_name=str(tokens_tree["secretName"]),
        signing_key=str(tokens_tree.get("signingKey") or "signing.pem"),
        verification_keys=tuple(tokens_tree.get("verificationKeys") or ("signing.pub.pem",)),
    )
    s3_tree = _mapping(spec, "s3")
    s3 = _s3(s3_tree) if s3_tree else None
    auth_tree = _mapping(spec, "auth")
    auth = AuthSecrets(
        service_token=_optional_secret_ref(auth_tree, "serviceTokenSecretRef", "spec.auth"),
        operator_tokens=_optional_secret_ref(auth_tree, "operatorTokensSecretRef", "spec.auth"),
    )
    media = _media(_mapping(spec, "media"), s3, auth)
    search = _search(_mapping(spec, "search"), auth)
    links = parse_links(region, spec)
    services_tree = _mapping(spec, "services")
    running = (
        CORE_SERVICES + (("media",) if media is not None else ()) + (("search",) if search else ())
    )
    services = {svc: _service(svc, services_tree.get(svc) or {}) for svc in running}
    routing = _mapping(spec, "routing")
    return RegionSpec(
        name=name,
        namespace=namespace,
        region=region,
        public_endpoint=spec.get("publicEndpoint"),
        image=image,
        mongo_uri=_secret_ref(mongo.get("uriSecretRef") or {}, "spec.mongo.uriSecretRef"),
        mongo_database=str(mongo.get("database") or "parley"),
        redis_url=_secret_ref(redis.get("urlSecretRef") or {}, "spec.redis.urlSecretRef"),
        tokens=tokens,
        s3=s3,
        peers=links.peers,
        home_only_data=links.home_only_data,
        replicate_to=links.replicate_to,
        conversation_shards=int(routing.get("conversationShards", DEFAULT_CONVERSATION_SHARDS)),
        services=services,
        log_level=str(spec.get("logLevel") or "INFO"),
        extra_config=dict(spec.get("config") or {}),
        auth=auth,
        media=media,
        search=search,
        redis_cluster=bool(redis.get("cluster", False)),
        redis_cluster_nodes=_cluster_nodes(redis),
        number=links.number,
        handle_registrars=links.handle_registrars,
        legacy_region=links.legacy_region,
        replication=links.replication,
    )
