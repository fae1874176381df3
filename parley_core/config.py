"""Typed configuration: defaults, then a YAML file, then environment overrides.

Sources, later ones winning:
1. the defaults below;
2. a YAML file (``--config PATH`` or ``PARLEY_CONFIG``);
3. environment variables ``PARLEY_<SECTION>__<KEY>`` (``PARLEY_MONGO__URI``);
4. secrets from files: ``PARLEY_<SECTION>__<KEY>_FILE=/path`` reads the value
   from that file (the Kubernetes/Docker secret convention), so secrets never
   sit in the environment or the YAML.

Any bad value fails at start with a ConfigError naming the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "PARLEY_"
NESTED = "__"
FILE_SUFFIX = "_FILE"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    # 0 picks a free port (tests); the bound port is logged and reported.
    port: int = Field(default=0, ge=0, le=65535)
    # Prometheus /metrics; None disables the endpoint.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # How long in-flight RPCs may run after a shutdown signal.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # Largest request message gRPC reads; a larger one gets gRPC's own
    # RESOURCE_EXHAUSTED with no details, before the service sees it. A service
    # whose legal requests come close (svc_message: bodies) reads more, see
    # MessageServiceSettings.receive_limit_bytes.
    max_receive_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class MongoSettings(_Section):
    uri: str = "mongodb://127.0.0.1:27017/"
    database: str = Field(default="parley", min_length=1, max_length=60)
    server_selection_timeout_ms: int = Field(default=5000, ge=100)

    @field_validator("uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout_seconds: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class AuthSettings(_Section):
    # PEM Ed25519 public keys that may have signed access tokens. Several allow
    # key rotation: sign with the new key while the old one still verifies.
    public_key_files: tuple[Path, ...] = ()
    # PEM Ed25519 private key; only the service that issues tokens needs it.
    private_key_file: Path | None = None
    access_token_ttl_seconds: int = Field(default=3600, ge=30, le=86400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=300)
    # Revocations arrive over Redis at once; this poll of MongoDB bounds how late
    # one can be when Redis is down.
    revocation_poll_seconds: float = Field(default=5.0, gt=0, le=300)


class KeysServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7101)
    max_devices_per_account: int = Field(default=5, ge=1, le=64)
    # One-time prekeys a device may hold; uploads beyond it are refused.
    max_pre_keys_per_device: int = Field(default=1000, ge=100, le=100_000)
    # Token buckets on GetPreKeyBundles: each fetch consumes the target's
    # one-time prekeys, so draining them is the attack. One bucket per
    # (requester, target account), and a looser one per requester so a client
    # can still start sessions with every member of a new large group.
    bundle_fetch_burst: int = Field(default=20, ge=1, le=10_000)
    bundle_fetch_per_minute: float = Field(default=20.0, gt=0, le=100_000)
    bundle_fetch_requester_burst: int = Field(default=1100, ge=1, le=100_000)
    bundle_fetch_requester_per_minute: float = Field(default=300.0, gt=0, le=1_000_000)
    # Sender-key envelopes waiting for one recipient device; sends beyond it
    # are refused until the device claims some.
    max_unclaimed_sender_keys_per_device: int = Field(default=10_000, ge=1, le=1_000_000)


class WebhookPushSettings(_Section):
    # Unset: webhook tokens are accepted but their notifications dead-letter.
    url: str | None = None
    # HMAC-SHA256 key for the signature header; give it through
    # PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE, never in the YAML.
    secret: str | None = Field(default=None, min_length=16, repr=False)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class ApnsPushSettings(_Section):
    # Production; https://api.sandbox.push.apple.com for development builds.
    endpoint: str = "https://api.push.apple.com"
    team_id: str | None = None
    key_id: str | None = None
    # The .p8 signing key from the Apple developer account.
    private_key_file: Path | None = None
    # The app's bundle id (apns-topic).
    topic: str | None = None
    # CA bundle to trust instead of the system's (tests with a local server).
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)


class FcmPushSettings(_Section):
    endpoint: str = "https://fcm.googleapis.com"
    # The Firebase service account JSON (client_email, private_key, token_uri).
    service_account_file: Path | None = None
    project_id: str | None = None
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)


class PushSettings(_Section):
    # Run an outbox worker in this process; any number of processes may.
    worker: bool = True
    # Messages for one device within this window become one notification.
    collapse_seconds: float = Field(default=2.0, ge=0, le=300)
    # Delivery attempts before a notification is dead-lettered.
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Exponential backoff with full jitter between attempts.
    backoff_base_seconds: float = Field(default=1.0, gt=0, le=600)
    backoff_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    # A claimed notification whose worker vanished is retried after this.
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How often an idle worker looks for due notifications.
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    # Notifications worked on at once per worker.
    concurrency: int = Field(default=16, ge=1, le=1000)
    # Delivered and dead-lettered notifications are kept this long.
    retention_seconds: int = Field(default=7 * 86400, ge=60)
    webhook: WebhookPushSettings = WebhookPushSettings()
    apns: ApnsPushSettings = ApnsPushSettings()
    fcm: FcmPushSettings = FcmPushSettings()


# svc_message reads a message body up to this size, so that a body over
# max_body_bytes is answered by the service (INVALID_ARGUMENT/BODY_TOO_LARGE
# naming `body`) rather than by gRPC without details; 4 times the largest
# max_body_bytes allowed. It also bounds the memory one request can take.
ANSWERED_BODY_BYTES = 4 << 20
# Room for the rest of a request beside its body (ids, flags).
REQUEST_HEADROOM_BYTES = 64 << 10


class MessageServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7102)
    # Where svc_message reaches svc_keys (peer account checks).
    keys_target: str = "127.0.0.1:7101"
    max_body_bytes: int = Field(default=65536, ge=1, le=1 << 20)
    # Events buffered per delivery stream before the stream counts as a slow
    # consumer and is closed (it resumes from its watermarks on reconnect).
    stream_queue_events: int = Field(default=4096, ge=16)
    # The same bound in encoded bytes, so large messages cannot make one slow
    # stream hold hundreds of megabytes.
    stream_queue_bytes: int = Field(default=8 << 20, ge=1 << 16)
    # Most sends committed by one group-commit write.
    send_batch_max: int = Field(default=512, ge=1, le=10000)
    # Delivered-watermark acks from streams are coalesced for this long: every
    # online device acks every delivery, so this bounds those writes to one per
    # (conversation, member) per interval. It is also the delay of delivery ticks.
    ack_flush_seconds: float = Field(default=0.25, gt=0, le=5)
    # The same for groups, where each message moves every member's delivered
    # watermark: a longer interval coalesces more messages per write.
    group_ack_flush_seconds: float = Field(default=2.0, gt=0, le=30)
    # Group delivered watermarks are raised in Redis at each flush and
    # written to the database this often (and at shutdown).
    group_delivered_persist_seconds: float = Field(default=30.0, gt=0, le=600)
    # Devices' acked positions (used when a device resumes without giving its
    # own) are written this often and when the device's stream ends; a crash
    # makes such a device get up to this much again, which it drops by version.
    cursor_flush_seconds: float = Field(default=30.0, gt=0, le=300)
    # Messages replayed per database page while a stream catches up.
    replay_page_size: int = Field(default=200, ge=1, le=5000)
    # Newest messages kept in Redis per conversation being read; history pages
    # within it are served without the database. 0 turns the cache off.
    recent_cache_messages: int = Field(default=200, ge=0, le=10000)
    recent_cache_ttl_seconds: int = Field(default=3600, ge=10)
    # How often the conversation projector records its progress; a process
    # silent for three of these is presumed dead and its tail is replayed.
    projector_heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    # Pause between projector flushes: every conversation touched meanwhile
    # costs one write per flush however many messages it got, and inbox order
    # trails by about this much (unread counts and last_seq do not trail).
    projector_interval_seconds: float = Field(default=0.25, ge=0, le=60)
    # Typing indicators: how long a recipient shows one unless renewed, the
    # least time between two forwarded starts per device and conversation, and
    # a per-device token bucket over all conversations (burst, then per second).
    typing_expires_seconds: float = Field(default=6.0, gt=0, le=60)
    typing_min_interval_seconds: float = Field(default=2.0, ge=0, le=60)
    typing_burst: int = Field(default=5, ge=1, le=100)
    typing_per_second: float = Field(default=2.0, gt=0, le=100)
    # Identity-change system messages: how often an idle worker looks for
    # changes to announce, and how long a claimed change is held before
    # another process may redo it (a redo writes nothing twice).
    identity_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    identity_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    push: PushSettings = PushSettings()

    @property
    def receive_limit_bytes(self) -> int:
        """gRPC's receive limit for svc_message: the server setting, raised to
        fit a body of ANSWERED_BODY_BYTES (see there for why)."""
        return max(
            self.server.max_receive_message_bytes, ANSWERED_BODY_BYTES + REQUEST_HEADROOM_BYTES
        )


class PresenceServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7103)
    # A device counts as online this long after its last heartbeat or stream
    # refresh; streams are refreshed every third of it.
    device_ttl_seconds: float = Field(default=45.0, ge=1, le=3600)
    # How often each process looks for users whose devices all expired.
    sweep_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # Last seen is written to MongoDB when a user goes offline and at most this
    # often while online, so a Redis restart loses at most this much of it.
    last_seen_persist_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Redis calls of presence RPCs give up after this (fail fast when it is down).
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    max_contacts: int = Field(default=5000, ge=1, le=100_000)
    # Open SubscribePresence streams per process.
    max_subscriptions: int = Field(default=10_000, ge=1)
    # ... and per account per process, so one user cannot take every slot.
    max_subscriptions_per_account: int = Field(default=32, ge=1, le=10_000)


class TracingSettings(_Section):
    # OpenTelemetry traces of every RPC, of svc_message's calls to svc_keys, and
    # of a message from SendMessage to its delivery on each recipient's stream.
    enabled: bool = False
    # OTLP over gRPC, e.g. http://127.0.0.1:4317 (a Jaeger all-in-one or an
    # OpenTelemetry Collector); https:// for TLS.
    otlp_endpoint: str = ""
    # Share of new traces kept; a call from a traced caller follows the
    # caller's decision (parent-based).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # The traces' service.name; empty: the process's own (svc_keys, ...).
    service_name: str = Field(default="", max_length=64)
    export_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> TracingSettings:
        if self.enabled and not self.otlp_endpoint:
            raise ValueError("otlp_endpoint is needed when tracing is enabled")
        return self


class TelemetrySettings(_Section):
    tracing: TracingSettings = TracingSettings()


class TopologySettings(_Section):
    # The operator's topology.json (/etc/parley/topology/topology.json in its
    # pods); empty: no topology, one region. A missing file means the same.
    path: str = ""
    # How often the file is re-read; a changed document applies without a restart.
    poll_seconds: float = Field(default=5.0, gt=0, le=300)


class Settings(_Section):
    region: str = Field(default="local", min_length=1, max_length=32)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    mongo: MongoSettings = MongoSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    keys: KeysServiceSettings = KeysServiceSettings()
    message: MessageServiceSettings = MessageServiceSettings()
    presence: PresenceServiceSettings = PresenceServiceSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    topology: TopologySettings = TopologySettings()


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    # Lists and sections come as JSON; scalars stay strings for pydantic to coerce.
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides: list[tuple[list[str], Any]] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key.upper().endswith(FILE_SUFFIX):
            key = key[: -len(FILE_SUFFIX)]
            try:
                value: Any = Path(raw).read_text().strip()
            except OSError as exc:
                dotted = key.replace(NESTED, ".")
                raise ConfigError(
                    f"config key {dotted}: cannot read secret file {raw}: {exc}"
                ) from None
        else:
            value = _parse_env_value(raw)
        overrides.append((key.split(NESTED), value))
    return overrides


def load_settings(
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from the YAML file and the environment, or fail naming the key."""
    env = os.environ if environ is None else environ
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    tree: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        tree = loaded
    for key_path, value in _env_overrides(env):
        _set_path(tree, key_path, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
