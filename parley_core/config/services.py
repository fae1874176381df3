"""Per-service settings: svc_keys, svc_message (with conversation ownership),
svc_presence and svc_search."""

from __future__ import annotations

from pydantic import (
    Field,
    model_validator,
)

from parley_core.config._section import Section
from parley_core.config.infra import ServerSettings
from parley_core.config.push import PushSettings


class KeysServiceSettings(Section):
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


# svc_message reads a message body up to this size, so that a body over
# max_body_bytes is answered by the service (INVALID_ARGUMENT/BODY_TOO_LARGE
# naming `body`) rather than by gRPC without details; 4 times the largest
# max_body_bytes allowed. It also bounds the memory one request can take.
ANSWERED_BODY_BYTES = 4 << 20
# Room for the rest of a request beside its body (ids, flags).
REQUEST_HEADROOM_BYTES = 64 << 10


class OwnershipSettings(Section):
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


class ReplicationSettings(Section):
    """Region replication: the replicator each region's svc_message runs per peer region
    (docs/design/regions.md, part 3). Only used when the topology has peers."""

    batch_changes: int = Field(default=200, ge=1, le=10_000)
    """Most feed changes sent to a peer in one Apply; also the page of a snapshot's sends."""
    # Batches form on their own while the previous one is at the peer (group
    # commit); a wait only makes them fuller, at the cost of that much lag.
    batch_seconds: float = Field(default=0.0, ge=0, le=60)
    """Seconds a batch waits, after its first change, for more (0: it takes what arrived while
    the previous batch was at the peer and goes)."""
    lease_seconds: float = Field(default=10.0, ge=1, le=3600)
    """Seconds a process holds the lease of replicating to one peer unless it renews it (at a
    third of it): when the holder dies, another process takes over after at most this long."""
    retry_seconds: float = Field(default=0.5, gt=0, le=300)
    """Pause, in seconds, before the next try after a peer did not answer an Apply."""
    snapshot_page: int = Field(default=200, ge=1, le=10_000)
    """Conversations read per page while a snapshot asks a peer for its high-water marks."""
    tombstone_window_days: float = Field(default=30.0, gt=0, le=3650)
    """Days an erasure's tombstones are promised to peers: a peer that last acknowledged a batch
    longer ago than this (a partition) is resynced from a snapshot, which removes what was erased
    meanwhile, instead of resuming the stream (docs/design/regions.md, part 7)."""
    # Tests run the services as processes and cannot pass them a clock; this
    # moves the replicators' clock (the tombstone window's) without a sleep.
    clock_offset_file: str | None = None
    """Test hook, never set in production: a file holding seconds added to the replicators'
    clock (read again when the file changes; missing or empty means 0)."""


class MessageServiceSettings(Section):
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
    replication: ReplicationSettings = ReplicationSettings()
    """How conversation changes are sent to peer regions."""
    settings_clock_skew_ms: int = Field(default=0, ge=-86_400_000, le=86_400_000)
    """For tests only: milliseconds added to the physical time the inbox settings' hybrid logical
    clock reads (docs/design/crdt.md), to run one region's clock off. Leave 0 in production."""

    @property
    def receive_limit_bytes(self) -> int:
        """gRPC's receive limit for svc_message: the server setting, raised to
        fit a body of ANSWERED_BODY_BYTES (see there for why)."""
        return max(
            self.server.max_receive_message_bytes, ANSWERED_BODY_BYTES + REQUEST_HEADROOM_BYTES
        )


class PresenceServiceSettings(Section):
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


class SearchServiceSettings(Section):
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
