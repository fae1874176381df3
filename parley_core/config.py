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

import copy
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address the gRPC server and the metrics endpoint bind to; 0.0.0.0 is every interface."""
    port: int = Field(default=0, ge=0, le=65535)
    """gRPC port; 0 picks a free port (tests), and the bound port is logged and reported."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; unset disables it."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    """Seconds in-flight RPCs may still run after a shutdown signal before they are cancelled."""
    max_receive_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest request message the server reads, in bytes; a larger one gets gRPC's own
    RESOURCE_EXHAUSTED with no details before the service sees it. svc_message reads at least
    enough to answer a body of up to 4 MiB itself (BODY_TOO_LARGE naming body)."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The asyncio event loop implementation the process runs on."""


class MongoSettings(_Section):
    uri: str = "mongodb://127.0.0.1:27017/"
    """MongoDB (or SecantusDB) connection string, mongodb:// or mongodb+srv://; retryWrites is
    always off whatever it says. It may hold a password: give it through a _FILE secret."""
    database: str = Field(default="parley", min_length=1, max_length=60)
    """Name of the database holding every collection of the services."""
    server_selection_timeout_ms: int = Field(default=5000, ge=100)
    """Milliseconds an operation waits for a usable server before it fails."""

    @field_validator("uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis connection URL (redis://, rediss:// for TLS, or unix://); it may hold a password: give
    it through a _FILE secret. With cluster on, the address of one node of the cluster."""
    socket_timeout_seconds: float = Field(default=2.0, gt=0)
    """Seconds a Redis connect or command may take before it fails (timeouts are not retried)."""
    cluster: bool = False
    """Redis is a Redis Cluster (url and cluster_nodes name some of its nodes; the client
    finds the rest): keys that a script touches together share a hash tag, and channels are sharded
    (SPUBLISH/SSUBSCRIBE). Off, a single server (or a primary with replicas) is used with the same
    key names as before clusters were supported. Every service of a region must agree."""
    cluster_nodes: tuple[str, ...] = ()
    """More nodes of the cluster as host:port, tried at start when the node of url does not
    answer (same credentials and TLS as url). Only with cluster on."""
    cluster_presence_shards: int = Field(default=128, ge=1, le=16384)
    """Hash tags the presence records of a Redis Cluster are spread over: each has its own
    due-for-sweep and due-for-save sets in the slot of its accounts, so the presence sweeper visits
    every one. More spread the load over more masters; changing it forgets who is online (devices
    come back with their next heartbeat or stream refresh)."""

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("cluster_nodes")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for node in value:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{node!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        if self.cluster:
            if self.url.startswith("unix://"):
                raise ValueError("url: a Redis Cluster is reached over TCP, not unix://")
            if urlsplit(self.url).path.strip("/") not in ("", "0"):
                raise ValueError("url: a Redis Cluster has database 0 only")
        elif self.cluster_nodes:
            raise ValueError("cluster_nodes: only with cluster on")
        return self


class AuthSettings(_Section):
    # Several keys allow rotation: sign with the new key while the old one still verifies.
    public_key_files: tuple[Path, ...] = ()
    """PEM Ed25519 public keys that may have signed access tokens; every service needs at least one.
    List several to rotate keys."""
    private_key_file: Path | None = None
    """PEM Ed25519 private key that signs access tokens; only svc_keys (the issuer) needs it."""
    access_token_ttl_seconds: int = Field(default=3600, ge=30, le=86400)
    """Lifetime of an access token in seconds; also how long a revocation is remembered."""
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=300)
    """Lifetime of a device's refresh token in seconds."""
    revocation_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    """Seconds between polls of MongoDB for token revocations; revocations arrive over Redis at
    once, so this bounds how late one is when Redis is down."""
    service_token_file: Path | None = None
    """File holding the deployment's service credential (a random secret of at least 32
    characters, the same for every service): services send it on internal RPCs and require it
    there. Without it, internal RPCs refuse every call."""
    operator_tokens_file: Path | None = None
    """File listing operator credentials for administrative RPCs, one `<name> <sha256 hex of the
    token>` per line; the name is what audit logs record. Without it, no one can call them."""


class KeysServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7101)
    """gRPC server of svc_keys."""
    max_devices_per_account: int = Field(default=5, ge=1, le=64)
    """Devices one account may have registered at once."""
    max_pre_keys_per_device: int = Field(default=1000, ge=100, le=100_000)
    """One-time prekeys a device may hold; uploads beyond it are refused."""
    max_unclaimed_sender_keys_per_device: int = Field(default=10_000, ge=1, le=1_000_000)
    """Sender-key envelopes that may wait for one recipient device; sends beyond it are refused
    until the device claims some."""
    message_target: str = "127.0.0.1:7102"
    """svc_message's gRPC address, for the account erasure job."""
    presence_target: str = "127.0.0.1:7103"
    """svc_presence's gRPC address, for the account erasure job."""
    media_target: str | None = "127.0.0.1:7104"
    """svc_media's gRPC address, for the account erasure job; unset when the deployment runs no
    svc_media (the job then skips that step)."""
    search_target: str | None = "127.0.0.1:7105"
    """svc_search's gRPC address, for the account erasure job (drops the postings of the account's
    messages); unset when the deployment runs no svc_search (the job then skips that step)."""
    handle_cooling_off_days: float = Field(default=30.0, ge=0, le=3650)
    """Days after an account erasure during which its handle cannot be signed up again."""
    cold_erasure_days: float = Field(default=30.0, gt=0, le=365)
    """Days within which archived (cold) history must be rewritten without an erased account's
    messages; the erasure record carries the deadline."""
    erasure_poll_seconds: float = Field(default=5.0, gt=0, le=600)
    """Seconds between each process's looks for erasure jobs to start or resume (one started by
    this process runs at once)."""
    erasure_lease_seconds: float = Field(default=60.0, ge=5, le=3600)
    """Seconds an erasure job is held by the process running it; a process that died loses it
    after this and another one resumes the job."""


class WebhookPushSettings(_Section):
    url: str | None = None
    """http(s) URL the webhook provider POSTs notifications to; unset: webhook tokens are accepted
    but their notifications dead-letter."""
    secret: str | None = Field(default=None, min_length=16, repr=False)
    """HMAC-SHA256 key of the webhook signature header; give it through
    PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE, never in the YAML."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Seconds one webhook request may take before the attempt fails."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class ApnsPushSettings(_Section):
    endpoint: str = "https://api.push.apple.com"
    """APNs base URL: production; https://api.sandbox.push.apple.com for development builds."""
    team_id: str | None = None
    """Apple developer team id, the issuer of the provider token; APNs push needs team_id, key_id,
    private_key_file and topic together."""
    key_id: str | None = None
    """Id of the APNs signing key (the provider token's kid)."""
    private_key_file: Path | None = None
    """The .p8 APNs signing key from the Apple developer account."""
    topic: str | None = None
    """The app's bundle id, sent as apns-topic."""
    ca_file: Path | None = None
    """CA bundle to trust instead of the system's (tests with a local server)."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """Seconds one APNs request may take before the attempt fails."""


class FcmPushSettings(_Section):
    endpoint: str = "https://fcm.googleapis.com"
    """FCM base URL the HTTP v1 send requests go to."""
    service_account_file: Path | None = None
    """The Firebase service account JSON (client_email, private_key, token_uri); setting it turns
    FCM push on."""
    project_id: str | None = None
    """Firebase project id; unset: the service account's project_id."""
    ca_file: Path | None = None
    """CA bundle to trust instead of the system's (tests with a local server)."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """Seconds one FCM request (or token exchange) may take before the attempt fails."""


class PushSettings(_Section):
    worker: bool = True
    """Run a push outbox worker in this process; any number of processes may."""
    collapse_seconds: float = Field(default=2.0, ge=0, le=300)
    """Messages for one device within this many seconds become one notification."""
    max_attempts: int = Field(default=8, ge=1, le=100)
    """Delivery attempts before a notification is dead-lettered."""
    # Full jitter: the wait is uniform below the bound, so the retries of many
    # notifications failing together (a provider outage) do not come in waves.
    backoff_base_seconds: float = Field(default=1.0, gt=0, le=600)
    """Bound of the wait after the first failed attempt, in seconds; the bound doubles with each
    further attempt."""
    backoff_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    """Largest bound of the wait between two attempts, in seconds (a provider's Retry-After may
    still ask for longer)."""
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Seconds after which a claimed notification whose worker vanished is retried."""
    poll_seconds: float = Field(default=0.5, gt=0, le=60)
    """Seconds between an idle worker's looks for due notifications."""
    concurrency: int = Field(default=16, ge=1, le=1000)
    """Notifications one worker sends at once."""
    retention_seconds: int = Field(default=7 * 86400, ge=60)
    """Seconds delivered and dead-lettered notifications are kept."""
    webhook: WebhookPushSettings = WebhookPushSettings()
    """Push through a signed HTTP webhook (your own push gateway)."""
    apns: ApnsPushSettings = ApnsPushSettings()
    """Push to iOS devices through Apple Push Notification service."""
    fcm: FcmPushSettings = FcmPushSettings()
    """Push to Android devices through Firebase Cloud Messaging."""


# svc_message reads a message body up to this size, so that a body over
# max_body_bytes is answered by the service (INVALID_ARGUMENT/BODY_TOO_LARGE
# naming `body`) rather than by gRPC without details; 4 times the largest
# max_body_bytes allowed. It also bounds the memory one request can take.
ANSWERED_BODY_BYTES = 4 << 20
# Room for the rest of a request beside its body (ids, flags).
REQUEST_HEADROOM_BYTES = 64 << 10


class OwnershipSettings(_Section):
    """Conversation owners across svc_message processes: each conversation's feed changes are
    sequenced by the one process holding its shard's lease (in MongoDB); the others forward."""

    address: str = ""
    """host:port at which the other svc_message processes of the region reach this one (the pod IP
    and gRPC port); empty: the server's host and port, where binding every interface means the
    address the machine's host name resolves to (a pod's IP in Kubernetes)."""
    shards: int = Field(default=64, ge=1, le=4096)
    """Shards conversations are split into for ownership when no topology is loaded (with one,
    its routing.conversationShards). Every process of a region must use the same count."""
    lease_seconds: float = Field(default=4.0, ge=1, le=120)
    """Seconds a shard lease lasts unless renewed: a process that died stops owning its shards
    this long after its last renewal, and another takes them over."""
    renew_seconds: float = Field(default=1.0, gt=0, le=30)
    """Seconds between a process's lease renewals, which also rebalance shards over the live
    processes; must be well below lease_seconds."""
    owner_wait_seconds: float = Field(default=6.0, ge=0, le=60)
    """Seconds a feed change waits for a conversation without a reachable owner (taken over after
    a crash) before it is answered UNAVAILABLE, which clients retry."""
    forward_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Longest wait for the owner's answer to a forwarded request (less when the caller's deadline
    is nearer); then the caller gets UNAVAILABLE and retries with the same request_id."""

    @model_validator(mode="after")
    def _renewed_before_expiry(self) -> OwnershipSettings:
        # A lease must survive a missed renewal or two, or owners flap.
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError("renew_seconds must be at most half of lease_seconds")
        return self


class MessageServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7102)
    """gRPC server of svc_message."""
    keys_target: str = "127.0.0.1:7101"
    """host:port where svc_message reaches svc_keys (peer account checks)."""
    media_target: str = "127.0.0.1:7104"
    """host:port where svc_message reaches svc_media, with the service credential
    (auth.service_token_file): sends that name media reserve them there, deletes for everyone
    release them. Sends without media never call it, so messaging works while it is down."""
    max_body_bytes: int = Field(default=65536, ge=1, le=1 << 20)
    """Largest message body (ciphertext included) a send or edit may carry, in bytes."""
    stream_queue_events: int = Field(default=4096, ge=16)
    """Events buffered per delivery stream before the stream counts as a slow consumer and is closed
    (it resumes from its watermarks on reconnect)."""
    # Without a byte bound, large messages could make one slow stream hold
    # hundreds of megabytes.
    stream_queue_bytes: int = Field(default=8 << 20, ge=1 << 16)
    """Encoded bytes buffered per delivery stream before it counts as a slow consumer and is
    closed."""
    send_batch_max: int = Field(default=512, ge=1, le=10000)
    """Most sends committed by one group-commit write."""
    # Every online device acks every delivery, so this bounds those writes to
    # one per (conversation, member) per interval.
    ack_flush_seconds: float = Field(default=0.25, gt=0, le=5)
    """Seconds delivered-watermark acks from streams are coalesced before they are written; also the
    delay of delivery ticks."""
    # Each group message moves every member's delivered watermark, so a longer
    # interval coalesces more messages per write.
    group_ack_flush_seconds: float = Field(default=2.0, gt=0, le=30)
    """Seconds delivered-watermark acks of group messages are coalesced before they are written."""
    group_delivered_persist_seconds: float = Field(default=30.0, gt=0, le=600)
    """Seconds between database writes of group delivered watermarks, which are raised in Redis at
    each flush (they are also written at shutdown)."""
    # A crash makes such a device get up to this much again, which it drops by version.
    cursor_flush_seconds: float = Field(default=30.0, gt=0, le=300)
    """Seconds between writes of devices' acked positions (used when a device resumes without giving
    its own); a position is also written when the device's stream ends."""
    ack_write_rate: float = Field(default=500.0, gt=0, le=1_000_000)
    """Most delivered-watermark and device-position updates written per second when their periodic
    flushes come due (in chunks of 32): a flush of many devices spreads out instead of holding the
    database while sends wait. A real MongoDB deployment can raise it."""
    replay_page_size: int = Field(default=200, ge=1, le=5000)
    """Messages replayed per database page while a stream catches up."""
    recent_cache_messages: int = Field(default=200, ge=0, le=10000)
    """Newest messages kept in Redis per conversation being read; history pages within them are
    served without the database. 0 turns the cache off."""
    recent_cache_ttl_seconds: int = Field(default=3600, ge=10)
    """Seconds a conversation's cached messages stay in Redis after the cache last added to them."""
    projector_heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    """Seconds between the conversation projector's progress records; a process silent for three of
    these is presumed dead and its tail is replayed."""
    # Every conversation touched meanwhile costs one write per flush however
    # many messages it got.
    projector_interval_seconds: float = Field(default=0.25, ge=0, le=60)
    """Pause between projector flushes, in seconds: inbox order trails by about this much (unread
    counts and last_seq do not)."""
    typing_expires_seconds: float = Field(default=6.0, gt=0, le=60)
    """Seconds a recipient shows a typing indicator unless it is renewed."""
    typing_min_interval_seconds: float = Field(default=2.0, ge=0, le=60)
    """Least seconds between two forwarded typing starts per device and conversation."""
    typing_burst: int = Field(default=5, ge=1, le=100)
    """Burst of the per-device typing token bucket over all conversations."""
    typing_per_second: float = Field(default=2.0, gt=0, le=100)
    """Refill rate of the per-device typing token bucket, in indicators per second."""
    identity_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    """Seconds between an idle worker's looks for identity changes to announce in conversations."""
    identity_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Seconds a claimed identity change is held before another process may redo it (a redo writes
    nothing twice)."""
    push: PushSettings = PushSettings()
    """Push notifications to offline devices."""
    ownership: OwnershipSettings = OwnershipSettings()
    """Which process sequences which conversations when several run."""

    @property
    def receive_limit_bytes(self) -> int:
        """gRPC's receive limit for svc_message: the server setting, raised to
        fit a body of ANSWERED_BODY_BYTES (see there for why)."""
        return max(
            self.server.max_receive_message_bytes, ANSWERED_BODY_BYTES + REQUEST_HEADROOM_BYTES
        )


class PresenceServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7103)
    """gRPC server of svc_presence."""
    device_ttl_seconds: float = Field(default=45.0, ge=1, le=3600)
    """Seconds a device counts as online after its last heartbeat or stream refresh; streams are
    refreshed every third of it."""
    sweep_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    """Seconds between each process's looks for users whose devices all expired."""
    last_seen_persist_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Seconds between writes of an online user's last seen to MongoDB (it is also written when the
    user goes offline), so a Redis restart loses at most this much of it."""
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    """Seconds the Redis calls of presence RPCs may take before they give up (fail fast when Redis
    is down)."""
    max_contacts: int = Field(default=5000, ge=1, le=100_000)
    """Accounts one contact list may hold."""
    max_subscriptions: int = Field(default=10_000, ge=1)
    """Open SubscribePresence streams per process."""
    max_subscriptions_per_account: int = Field(default=32, ge=1, le=10_000)
    """Open SubscribePresence streams per account per process, so one user cannot take them all."""


MIB = 1 << 20
GIB = 1 << 30


class MediaQuotaSettings(_Section):
    """Per-account media quotas, in ciphertext bytes. A forward (a message naming media someone
    else uploaded) uploads nothing and is charged to no quota of the forwarder."""

    daily_upload_bytes: int = Field(default=4 * GIB, ge=1)
    """Bytes one account may start uploading per UTC day (counted when an upload starts and
    checked again when it completes)."""
    stored_bytes: int = Field(default=20 * GIB, ge=1)
    """Bytes of the objects one account uploaded that may be stored at once (media it uploaded
    that is still kept)."""


# What real S3 allows or bills (docs/ARCHITECTURE.md, Media: tiers): no
# transition to STANDARD_IA before day 30, and 30 days there before a further
# transition; Glacier bills 90 days at least, so archiving sooner costs more.
MIN_INFREQUENT_DAYS = 30
MIN_ARCHIVE_DAYS = 90
MIN_DAYS_IN_INFREQUENT = 30


class MediaTierSettings(_Section):
    """Storage tiers of the media bucket: svc_media sets them as the bucket's lifecycle rules
    when it starts (objects of 128 KiB or less never move). A store without lifecycle
    transitions (SeaweedFS) keeps everything in STANDARD; svc_media logs it once and carries
    on. Archived objects must be restored (RestoreMedia) before they download."""

    infrequent_after_days: int = Field(default=30, ge=0, le=36_500)
    """Days after upload an object moves to STANDARD_IA; 0 never. At least 30 (S3 refuses
    earlier)."""
    archive_after_days: int = Field(default=0, ge=0, le=36_500)
    """Days after upload an object moves to GLACIER (downloads then need RestoreMedia); 0 never.
    At least 90 (Glacier bills 90 days at least), and at least infrequent_after_days + 30 when
    both are on (S3 keeps objects 30 days in STANDARD_IA before a further transition)."""
    min_object_bytes: int = Field(default=128 * 1024, ge=0, le=5 * 1024 * GIB)
    """Objects of at most this many bytes never move (S3 transitions nothing under 128 KiB by
    default, and a thumbnail in Glacier would need a restore for a few kilobytes)."""
    restore_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    """S3 retrieval tier of the restores RestoreMedia starts: Expedited (minutes, dearest),
    Standard (3-5 hours) or Bulk (5-12 hours, cheapest)."""
    restore_poll_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Seconds between each process's passes over restores: it starts queued ones, HEADs running
    ones (one request per object), tells the requesting devices of ready ones and marks expired
    ones."""
    restore_batch: int = Field(default=100, ge=1, le=1000)
    """Restores one pass handles at most."""
    max_active_restores_per_account: int = Field(default=20, ge=1, le=10_000)
    """Restores one account may have queued or running at once (asking for one already running
    for someone else counts too); one more is RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) until one is
    ready. Each is a paid retrieval from the archive."""

    @model_validator(mode="after")
    def _schedule_s3_can_run(self) -> MediaTierSettings:
        infrequent, archive = self.infrequent_after_days, self.archive_after_days
        if infrequent and infrequent < MIN_INFREQUENT_DAYS:
            raise ValueError(
                f"infrequent_after_days must be 0 (off) or at least {MIN_INFREQUENT_DAYS}: "
                "S3 moves nothing to STANDARD_IA sooner"
            )
        if archive and archive < MIN_ARCHIVE_DAYS:
            raise ValueError(
                f"archive_after_days must be 0 (off) or at least {MIN_ARCHIVE_DAYS}: Glacier "
                f"bills {MIN_ARCHIVE_DAYS} days at least"
            )
        if infrequent and archive and archive < infrequent + MIN_DAYS_IN_INFREQUENT:
            raise ValueError(
                f"archive_after_days must be at least infrequent_after_days + "
                f"{MIN_DAYS_IN_INFREQUENT} ({infrequent + MIN_DAYS_IN_INFREQUENT}): S3 keeps "
                f"objects {MIN_DAYS_IN_INFREQUENT} days in STANDARD_IA before archiving them"
            )
        return self


class MediaServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7104)
    """gRPC server of svc_media."""
    message_target: str = "127.0.0.1:7102"
    """host:port where svc_media reaches svc_message's internal service (access checks, reference
    counts, device notices)."""
    max_object_bytes: int = Field(default=2 * GIB, ge=1, le=5 * 1024 * GIB)
    """Largest ciphertext one upload may carry, in bytes."""
    max_thumbnail_bytes: int = Field(default=64 << 10, ge=1, le=16 * MIB)
    """Largest upload of content class THUMBNAIL, in bytes."""
    multipart_threshold_bytes: int = Field(default=8 * MIB, ge=MIB, le=5 * GIB)
    """Uploads larger than this use multipart (one presigned URL per part, resumable); smaller
    ones one presigned PUT."""
    min_part_bytes: int = Field(default=5 * MIB, ge=5 * MIB, le=5 * GIB)
    """Smallest part size a client may choose (S3 refuses smaller parts but the last)."""
    max_part_bytes: int = Field(default=64 * MIB, ge=5 * MIB, le=5 * GIB)
    """Largest part size a client may choose."""
    default_part_bytes: int = Field(default=8 * MIB, ge=5 * MIB, le=5 * GIB)
    """Part size used when the client leaves part_size at 0."""
    upload_session_seconds: int = Field(default=24 * 3600, ge=5, le=7 * 86400)
    """Seconds an upload session lasts; then an unfinished one is aborted and its parts removed,
    and a completed media nothing references yet gets its first garbage-collection check."""
    put_url_seconds: int = Field(default=900, ge=5, le=3600)
    """Seconds a presigned PUT (or part) URL stays valid; GetUpload hands out fresh ones."""
    get_url_seconds: int = Field(default=300, ge=5, le=300)
    """Seconds a presigned GET URL stays valid (at most 5 minutes)."""
    max_pending_uploads_per_account: int = Field(default=16, ge=1, le=10_000)
    """Upload sessions one account may have open (created, not completed or aborted) at once."""
    gc_grace_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 86400)
    """Seconds media stays after it was last referenced or released before garbage collection
    checks whether any message still names it."""
    gc_max_backoff_seconds: int = Field(default=30 * 86400, ge=60, le=30 * 86400)
    """Longest wait between two garbage-collection checks of media still referenced (the wait
    doubles from gc_grace_seconds), so nothing unreferenced is kept for longer than this."""
    sweep_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    """Seconds between each process's sweeps for expired upload sessions and media due for a
    garbage-collection check."""
    sweep_batch: int = Field(default=100, ge=1, le=1000)
    """Sessions or media one sweep handles at most before the next pass."""
    s3_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Seconds one call to the object store may take before the RPC answers UNAVAILABLE."""
    quotas: MediaQuotaSettings = MediaQuotaSettings()
    """Per-account upload and storage quotas."""
    tiers: MediaTierSettings = MediaTierSettings()
    """Storage tiers (bucket lifecycle rules) and restores of archived media."""

    @model_validator(mode="after")
    def _part_bounds(self) -> MediaServiceSettings:
        if not self.min_part_bytes <= self.default_part_bytes <= self.max_part_bytes:
            raise ValueError("need min_part_bytes <= default_part_bytes <= max_part_bytes")
        return self


class SearchServiceSettings(_Section):
    server: ServerSettings = ServerSettings(port=7105)
    """gRPC server of svc_search."""
    message_target: str = "127.0.0.1:7102"
    """host:port where svc_search reaches svc_message's internal service (who sent a message,
    who may read the hits of a page, whether a conversation's server search is on)."""
    groups_per_query: int = Field(default=4, ge=1, le=16)
    """Token groups every SearchRequest carries (real ones plus decoys): one shape for every
    query, so the request tells the server nothing of how many terms or conversations it holds."""
    tokens_per_group: int = Field(default=4, ge=1, le=16)
    """Tokens every group carries (a group's real tokens repeated or padded up to it)."""
    min_token_bytes: int = Field(default=4, ge=2, le=32)
    """Shortest token accepted, in bytes."""
    max_token_bytes: int = Field(default=32, ge=2, le=32)
    """Longest token accepted, in bytes (a full HMAC-SHA256)."""
    max_tokens_per_message: int = Field(default=256, ge=1, le=4096)
    """Most tokens (postings) one message may have."""
    response_bucket_bytes: int = Field(default=1024, ge=256, le=1 << 20)
    """Smallest padded SearchResponse, in bytes; larger ones are padded to the next power of two,
    so a response's size tells an observer only its bucket."""
    sweep_interval_seconds: float = Field(default=300.0, gt=0, le=86400)
    """Seconds between each process's passes over the indexed conversations, dropping the
    postings of those whose server search was turned off (queries drop them on sight too)."""
    sweep_batch: int = Field(default=64, ge=1, le=64)
    """Conversations one sweep asks svc_message about per call."""

    @model_validator(mode="after")
    def _token_bounds(self) -> SearchServiceSettings:
        if self.min_token_bytes > self.max_token_bytes:
            raise ValueError("need min_token_bytes <= max_token_bytes")
        return self


class S3Settings(_Section):
    """The S3-compatible object store holding media (AWS S3, MinIO, Ceph RGW, SeaweedFS), one
    bucket per region. Credentials come from files only (Kubernetes Secrets)."""

    endpoint_url: str = ""
    """http(s) URL of the S3 API the services call; empty: AWS S3 of `region`."""
    public_endpoint_url: str = ""
    """http(s) URL clients reach the store at, used in presigned URLs (they sign the host);
    empty: endpoint_url."""
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    """The store's region name, used in request signatures."""
    bucket: str = Field(default="parley-media", min_length=3, max_length=63)
    """The region's media bucket."""
    access_key_id_file: Path | None = None
    """File holding the access key id; unset: the default AWS credential chain (instance or pod
    role)."""
    secret_access_key_file: Path | None = None
    """File holding the secret access key; needed with access_key_id_file."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """Bucket addressing in URLs: path (endpoint/bucket/key, works everywhere) or virtual
    (bucket.endpoint/key)."""

    @field_validator("endpoint_url", "public_endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _keys_together(self) -> S3Settings:
        if (self.access_key_id_file is None) != (self.secret_access_key_file is None):
            raise ValueError("access_key_id_file and secret_access_key_file go together")
        return self


class LimitRate(_Section):
    """A token bucket: ``burst`` requests at once, refilled at ``per_minute``."""

    burst: int = Field(ge=1, le=1_000_000_000)
    """Requests allowed at once: the bucket's size, full when unused."""
    per_minute: float = Field(gt=0, le=1_000_000_000)
    """Tokens the bucket regains a minute (a steady rate of that many requests a minute)."""


class LimitsSettings(_Section):
    """Abuse limits of every service: token buckets shared through Redis (one script call per
    request), per this process while Redis does not answer. A refusal is RESOURCE_EXHAUSTED with
    reason RATE_LIMITED, a RetryInfo and the limit's name. The table of limits, what each keys on
    and why, is in docs/ARCHITECTURE.md (Abuse limits)."""

    enabled: bool = True
    """Apply the limits below; off, no request is refused and Redis is not asked."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDR blocks (10.0.0.0/8, fd00::/8) of the load balancers in front of the
    services: only a request whose peer is one of them has its client address taken from
    x-forwarded-for (the rightmost hop not in this list). Empty: the peer is the client."""
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    """Seconds a take may wait for Redis before this process uses its own buckets instead."""
    fallback_seconds: float = Field(default=2.0, gt=0, le=300)
    """Seconds this process keeps to its own buckets after Redis failed before asking it again."""
    refusal_hold_seconds: float = Field(default=0.25, ge=0, le=5)
    """Seconds a refused call is held before its answer (at most its RetryInfo delay, which is
    shortened by as much, so a client that waits as told loses nothing): a client that ignores
    RetryInfo and resends as soon as an answer comes back is slowed to a few calls a second per
    call it keeps open, instead of taking a core in refusals. 0 answers at once."""
    signup_per_address: LimitRate = LimitRate(burst=20, per_minute=1)
    """SignUp per client address (IPv6: per /64)."""
    signup_overall: LimitRate = LimitRate(burst=1000, per_minute=600)
    """SignUp over the whole region, one bucket."""
    refresh_per_address: LimitRate = LimitRate(burst=600, per_minute=600)
    """RefreshToken per client address (IPv6: per /64)."""
    refresh_per_device: LimitRate = LimitRate(burst=10, per_minute=2)
    """RefreshToken per device named by the refresh token."""
    device_register_per_account: LimitRate = LimitRate(burst=10, per_minute=0.2)
    """RegisterDevice per account."""
    key_upload_per_device: LimitRate = LimitRate(burst=30, per_minute=10)
    """PublishKeys and UploadPreKeys per device."""
    sender_keys_per_device: LimitRate = LimitRate(burst=300, per_minute=60)
    """SendSenderKeys per device."""
    bundle_fetch_per_target: LimitRate = LimitRate(burst=20, per_minute=20)
    """GetPreKeyBundles per (requester, target account): draining one user's one-time prekeys is
    the attack."""
    bundle_fetch_per_requester: LimitRate = LimitRate(burst=1100, per_minute=300)
    """GetPreKeyBundles per requester over all targets; large enough to start sessions with every
    member of a new 1,024-member group at once."""
    send_per_device: LimitRate = LimitRate(burst=60, per_minute=120)
    """SendMessage per device."""
    send_per_account: LimitRate = LimitRate(burst=120, per_minute=240)
    """SendMessage per account, all its devices together."""
    send_per_conversation: LimitRate = LimitRate(burst=200, per_minute=600)
    """SendMessage per group or channel, all senders together (direct conversations have only the
    per-account limits)."""
    edit_per_account: LimitRate = LimitRate(burst=30, per_minute=30)
    """EditMessage per account."""
    delete_per_account: LimitRate = LimitRate(burst=100, per_minute=60)
    """DeleteMessage (for me and for everyone) per account."""
    react_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """ReactToMessage per account."""
    direct_create_per_account: LimitRate = LimitRate(burst=50, per_minute=10)
    """CreateDirectConversation per account."""
    group_create_per_account: LimitRate = LimitRate(burst=10, per_minute=1)
    """CreateGroup and CreateChannel per account."""
    add_members_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """AddMembers calls per account."""
    group_admin_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """UpdateConversationInfo, SetServerSearch, RemoveMember and SetMemberRole per account."""
    channel_subscribe_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """SubscribeChannel per account."""
    push_token_per_device: LimitRate = LimitRate(burst=10, per_minute=2)
    """RegisterPushToken and RemovePushToken per device."""
    contact_add_per_account: LimitRate = LimitRate(burst=30, per_minute=10)
    """AddContacts calls (up to 256 accounts each) per account."""
    presence_subscribe_per_account: LimitRate = LimitRate(burst=30, per_minute=30)
    """SubscribePresence streams opened per account."""
    media_upload_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """CreateUpload per account."""
    media_download_per_account: LimitRate = LimitRate(burst=600, per_minute=600)
    """GetDownload per account."""
    search_index_per_account: LimitRate = LimitRate(burst=120, per_minute=240)
    """IndexMessage and RemoveMessage per account (about one per message sent or edited)."""
    search_query_per_account: LimitRate = LimitRate(burst=60, per_minute=60)
    """Search per account (each page is one call)."""
    media_restore_per_account: LimitRate = LimitRate(burst=10, per_minute=2)
    """RestoreMedia per account (each may start a paid retrieval from the archive)."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR block") from None
        return value


class TracingSettings(_Section):
    enabled: bool = False
    """Export OpenTelemetry traces of every RPC, of svc_message's calls to svc_keys, and of each
    message from SendMessage to its delivery on every recipient's stream."""
    otlp_endpoint: str = ""
    """OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (a Jaeger all-in-one or an OpenTelemetry
    Collector); https:// for TLS. Needed when tracing is enabled."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of new traces kept, 0 to 1; a call from a traced caller follows the caller's decision
    (parent-based)."""
    service_name: str = Field(default="", max_length=64)
    """The traces' service.name; empty: the process's own (svc_keys, ...)."""
    export_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Seconds one export of a batch of spans to the collector may take."""

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
    """OpenTelemetry tracing."""


class TopologySettings(_Section):
    path: str = ""
    """The operator's topology.json (/etc/parley/topology/topology.json in its pods); empty or a
    missing file: no topology, one region."""
    poll_seconds: float = Field(default=5.0, gt=0, le=300)
    """Seconds between re-reads of the topology file; a changed document applies at once."""


class ArchiveSettings(_Section):
    """svc_message's history archive: the log's old weeks as Parquet objects in the `s3`
    section's bucket, read through transparently (docs/ARCHITECTURE.md, History tiers)."""

    enabled: bool = True
    """Run the archiver (one svc_message process at a time holds its lease). Reads of archived
    history work either way."""
    hot_window_days: float = Field(default=30.0, gt=0, le=3650)
    """Entries stay in MongoDB at least this long; a conversation's older ISO weeks move to the
    archive (never the week of its newest entry). Fractions are allowed (tests use seconds)."""
    prefix: str = Field(default="history/", min_length=1, max_length=200, pattern=r"^[^/].*/$")
    """Key prefix of archive objects in the bucket, ending in '/'."""
    target_object_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    """Objects bundle the weeks of quiet conversations until they reach this size (the last
    of a pass may be smaller)."""
    messages_per_second: float = Field(default=2000.0, ge=0, le=1_000_000)
    """Rate limit of the archiver, in log entries moved per second; 0: unlimited."""
    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    """Seconds between two passes of the archiver."""
    lease_seconds: float = Field(default=300.0, gt=0, le=86400)
    """The archiver's lease: another process takes over this long after the holder stops."""
    conversations_per_pass: int = Field(default=1000, ge=1, le=1_000_000)
    """Conversations one pass considers at most (the oldest first); the rest wait for the
    next pass and count as lag."""
    entries_per_conversation: int = Field(default=20_000, ge=10, le=1_000_000)
    """Log entries of one conversation one pass reads at most."""
    s3_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Seconds one call to the object store may take."""
    cold_window_days: float = Field(default=365.0, ge=0, le=36_500)
    """Archive objects whose newest week ended longer ago than this go to the glacier class
    (reads of them answer HISTORY_ARCHIVED; a history export restores them first); 0 never. At
    least hot_window_days + 90 when on (Glacier bills 90 days at least)."""
    glacier_transition: Literal["lifecycle", "copy"] = "lifecycle"
    """How objects reach the glacier class: `lifecycle`, a bucket lifecycle rule svc_message puts
    beside the others (the store moves them; cold_window_days - hot_window_days after an
    object is written) and the archiver records the class the store reports; `copy`, the
    archiver copies each due object onto itself with the class (stores without lifecycle
    transitions, tests)."""
    glacier_storage_class: Literal["GLACIER", "DEEP_ARCHIVE"] = "GLACIER"
    """The S3 storage class of the glacier tier."""
    restore_tier: Literal["Expedited", "Standard", "Bulk"] = "Standard"
    """S3 retrieval tier of the restores of glacier objects (history exports, rewrites)."""
    restore_days: int = Field(default=2, ge=1, le=30)
    """Days a restored copy of a glacier object stays readable."""

    @property
    def hot_window_seconds(self) -> float:
        return self.hot_window_days * 86400

    @property
    def cold_window_seconds(self) -> float:
        return self.cold_window_days * 86400

    @model_validator(mode="after")
    def _glacier_after_hot(self) -> ArchiveSettings:
        cold, hot = self.cold_window_days, self.hot_window_days
        if cold and cold < hot + MIN_ARCHIVE_DAYS:
            raise ValueError(
                f"cold_window_days must be 0 (off) or at least hot_window_days + "
                f"{MIN_ARCHIVE_DAYS}: Glacier bills {MIN_ARCHIVE_DAYS} days at least"
            )
        return self


class Settings(_Section):
    region: str = Field(default="local", min_length=1, max_length=32)
    """Name of the region this process serves, reported as cloud.region in traces."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severity of the log records written."""
    log_format: Literal["json", "console"] = "json"
    """Log records as one JSON object a line, or plain text for a terminal."""
    mongo: MongoSettings = MongoSettings()
    """The MongoDB (SecantusDB) database."""
    redis: RedisSettings = RedisSettings()
    """Redis: fan-out, presence, rate limits and caches."""
    auth: AuthSettings = AuthSettings()
    """Access and refresh tokens."""
    keys: KeysServiceSettings = KeysServiceSettings()
    """svc_keys: accounts, devices and keys."""
    message: MessageServiceSettings = MessageServiceSettings()
    """svc_message: conversations, messages, delivery streams and push."""
    presence: PresenceServiceSettings = PresenceServiceSettings()
    """svc_presence: online state, last seen and contacts."""
    media: MediaServiceSettings = MediaServiceSettings()
    """svc_media: encrypted attachments on S3-compatible storage."""
    search: SearchServiceSettings = SearchServiceSettings()
    """svc_search: the opt-in server blind index over encrypted history."""
    s3: S3Settings = S3Settings()
    """The S3-compatible object store of the region's media."""
    archive: ArchiveSettings = ArchiveSettings()
    """svc_message's history archive on the `s3` section's store."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Traces (metrics are per server)."""
    topology: TopologySettings = TopologySettings()
    """The multi-region topology file."""
    limits: LimitsSettings = LimitsSettings()
    """Abuse limits (rate limits) of every service."""


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
    tree = read_config_file(path) if path else {}
    return settings_from_tree(tree, env)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The YAML config file as a tree, unchecked; a ConfigError if it is no mapping."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return loaded


def settings_from_tree(tree: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Settings from a loaded config tree with ``environ``'s overrides applied, or
    a ConfigError naming the key (what a service started with them would do)."""
    merged: dict[str, Any] = copy.deepcopy(dict(tree))
    for key_path, value in _env_overrides(environ):
        _set_path(merged, key_path, value)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
