"""The Parley dashboards as data: panels and their PromQL (scripts/gen_dashboards.py
renders them). Every selector has ``region=~"$region"``; the region label is
added by Prometheus when it scrapes. The shared pieces are in dashboard_parts.py."""

from __future__ import annotations

from dashboard_media import MEDIA
from dashboard_parts import (
    Dashboard,
    Panel,
    backends,
    error_ratio,
    quantile,
    rate,
    rate_limit_panel,
    rpc_panels,
    sel,
)
from dashboard_regions import REGIONS
from dashboard_search import SEARCH

__all__ = ["DASHBOARDS", "Dashboard", "Panel"]

OVERVIEW = Dashboard(
    "overview",
    "Overview",
    "RED metrics per service and the message path, per region.",
    [
        Panel(
            "RPC rate by service",
            "Every RPC handled, all status codes.",
            [
                (
                    f"sum by (region, service) ({rate('parley_rpc_requests_total')})",
                    "{{region}} {{service}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Server-side error ratio",
            "Share of RPCs ending INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED or DATA_LOSS.",
            [(error_ratio("region, service"), "{{region}} {{service}}")],
            unit="percentunit",
        ),
        Panel(
            "SendMessage latency",
            "The ack waits for the majority-journaled write (group commit).",
            [
                (
                    quantile(
                        0.5, "parley_rpc_duration_seconds", service="message", method="SendMessage"
                    ),
                    "{{region}} p50",
                ),
                (
                    quantile(
                        0.99, "parley_rpc_duration_seconds", service="message", method="SendMessage"
                    ),
                    "{{region}} p99",
                ),
            ],
            unit="s",
        ),
        Panel(
            "Messages sent by conversation type",
            "Messages committed (system messages, edits and reactions not counted).",
            [
                (
                    f"sum by (region, conversation_type) ({rate('parley_messages_sent_total')})",
                    "{{region}} {{conversation_type}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        Panel(
            "Delivery lag",
            "From a message's commit to its write on a recipient's live stream.",
            [
                (quantile(0.5, "parley_delivery_lag_seconds"), "{{region}} p50"),
                (quantile(0.99, "parley_delivery_lag_seconds"), "{{region}} p99"),
            ],
            unit="s",
        ),
        Panel(
            "Delivery streams and presence subscriptions",
            "Open now, all processes.",
            [
                (f"sum by (region) ({sel('parley_delivery_streams_open')})", "{{region}} streams"),
                (
                    f"sum by (region) ({sel('parley_presence_subscriptions_open')})",
                    "{{region}} presence subscriptions",
                ),
            ],
        ),
        Panel(
            "Backlogs",
            "Work committed but not finished: conversation metadata, push planning, the push "
            "outbox and identity changes to announce.",
            [
                (
                    f"sum by (region) ({sel('parley_projection_pending_conversations')})",
                    "{{region}} projection",
                ),
                (
                    f"sum by (region) ({sel('parley_push_planning_pending_messages')})",
                    "{{region}} push planning",
                ),
                (f"max by (region) ({sel('parley_push_outbox_depth')})", "{{region}} push outbox"),
                (
                    f"max by (region) ({sel('parley_identity_changes_pending')})",
                    "{{region}} identity changes",
                ),
            ],
        ),
        rate_limit_panel(),
        Panel(
            "MongoDB and Redis reachable",
            "Lowest of every process's last ping, per service (1 up, 0 down).",
            [
                (
                    f"min by (region, service) ({sel('parley_mongo_up')})",
                    "{{region}} {{service}} MongoDB",
                ),
                (
                    f"min by (region, service) ({sel('parley_redis_up')})",
                    "{{region}} {{service}} Redis",
                ),
            ],
            max_value=1,
        ),
    ],
)

MESSAGING = Dashboard(
    "messaging",
    "Messaging",
    "svc_message's send path: group commit, the projector, the recent cache, push.",
    [
        Panel(
            "Messages sent by conversation type",
            "Messages committed (system messages, edits and reactions not counted).",
            [
                (
                    f"sum by (region, conversation_type) ({rate('parley_messages_sent_total')})",
                    "{{region}} {{conversation_type}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        Panel(
            "Changes committed and batch size",
            "Every feed entry committed, and entries per group-commit write.",
            [
                (
                    f"sum by (region) ({rate('parley_messages_committed_total')})",
                    "{{region}} committed/s",
                ),
                (
                    f"sum by (region) ({rate('parley_messages_committed_total')}) / "
                    f"sum by (region) ({rate('parley_send_batches_total')})",
                    "{{region}} per batch",
                ),
            ],
        ),
        *rpc_panels("message"),
        Panel(
            "Recent-cache hit ratio",
            "History reads served from Redis without the database.",
            [
                (
                    f"sum by (region) ({rate('parley_recent_cache_reads_total', result='hit')}) / "
                    f"sum by (region) ({rate('parley_recent_cache_reads_total')})",
                    "{{region}}",
                )
            ],
            unit="percentunit",
            max_value=1,
        ),
        Panel(
            "Projection backlog",
            "Conversations whose metadata waits for the projector, and messages waiting "
            "for push planning.",
            [
                (
                    f"sum by (region) ({sel('parley_projection_pending_conversations')})",
                    "{{region}} conversations",
                ),
                (
                    f"sum by (region) ({sel('parley_push_planning_pending_messages')})",
                    "{{region}} push planning",
                ),
            ],
        ),
        Panel(
            "Database writes by collection",
            "Write commands sent to MongoDB by every service (each collection belongs to one).",
            [
                (
                    f"sum by (region, collection) ({rate('parley_db_write_commands_total')})",
                    "{{region}} {{collection}}",
                )
            ],
            unit="wps",
        ),
        Panel(
            "Push notifications",
            "Sent, retried and dead-lettered by the workers; the outbox depth (pending).",
            [
                (f"sum by (region) ({rate('parley_push_sent_total')})", "{{region}} sent"),
                (f"sum by (region) ({rate('parley_push_retried_total')})", "{{region}} retried"),
                (f"sum by (region) ({rate('parley_push_dead_total')})", "{{region}} dead"),
                (f"max by (region) ({sel('parley_push_outbox_depth')})", "{{region}} outbox"),
            ],
        ),
        Panel(
            "Identity changes",
            "Waiting to be announced (all processes, sampled), and announced per second.",
            [
                (
                    f"max by (region) ({sel('parley_identity_changes_pending')})",
                    "{{region}} pending",
                ),
                (
                    f"sum by (region) ({rate('parley_identity_changes_announced_total')})",
                    "{{region}} announced/s",
                ),
            ],
        ),
        Panel(
            "Typing indicators",
            "Received from devices, forwarded, and dropped by reason.",
            [
                (
                    f"sum by (region) ({rate('parley_typing_events_received_total')})",
                    "{{region}} received",
                ),
                (
                    f"sum by (region) ({rate('parley_typing_events_forwarded_total')})",
                    "{{region}} forwarded",
                ),
                (
                    f"sum by (region, reason) ({rate('parley_typing_events_dropped_total')})",
                    "{{region}} dropped {{reason}}",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "History per tier",
            "Conversation log entries in MongoDB (hot, estimated) and in the Parquet archive "
            "on S3 (cold rows, and glacier rows: objects past the cold window, which need a "
            "restore); every process reports the same region-wide numbers.",
            [
                (
                    f"max by (region, tier) ({sel('parley_history_entries')})",
                    "{{region}} {{tier}}",
                ),
            ],
        ),
        Panel(
            "History archiver",
            "How far the archive is behind the hot window (the alert ParleyArchiverBehind "
            "fires above its threshold), and entries moved per second by the lease holder.",
            [
                (f"max by (region) ({sel('parley_archiver_lag_seconds')})", "{{region}} lag s"),
                (
                    f"sum by (region) ({rate('parley_archiver_moved_entries_total')})",
                    "{{region}} moved/s",
                ),
            ],
        ),
        rate_limit_panel("message"),
        backends("message"),
    ],
)

DELIVERY = Dashboard(
    "delivery",
    "Delivery",
    "Delivery streams: lag from commit to stream, fan-out, the doorbell, stream ends.",
    [
        Panel(
            "Delivery lag",
            "From a message's commit to its write on a recipient's live stream (replays to "
            "devices that were offline are not counted).",
            [
                (quantile(0.5, "parley_delivery_lag_seconds"), "{{region}} p50"),
                (quantile(0.9, "parley_delivery_lag_seconds"), "{{region}} p90"),
                (quantile(0.99, "parley_delivery_lag_seconds"), "{{region}} p99"),
            ],
            unit="s",
        ),
        Panel(
            "Messages written to streams",
            "Live message events written to delivery streams per second.",
            [
                (
                    f"sum by (region) ({rate('parley_delivery_lag_seconds_count')})",
                    "{{region}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Open delivery streams per process",
            "The operator scales svc_message on this.",
            [
                (
                    f"sum by (region, instance) ({sel('parley_delivery_streams_open')})",
                    "{{region}} {{instance}}",
                )
            ],
        ),
        Panel(
            "Fan-out per doorbell event",
            "Streams of one process one doorbell event was handed to.",
            [
                (quantile(0.5, "parley_fanout_streams"), "{{region}} p50"),
                (quantile(0.99, "parley_fanout_streams"), "{{region}} p99"),
                (
                    f"sum by (region) ({rate('parley_fanout_streams_sum')}) / "
                    f"sum by (region) ({rate('parley_fanout_streams_count')})",
                    "{{region}} mean",
                ),
            ],
        ),
        Panel(
            "Stream ends by status",
            "Connect streams ending per second: RESOURCE_EXHAUSTED are slow consumers, "
            "UNAVAILABLE shutdowns, UNAUTHENTICATED expired or revoked tokens.",
            [
                (
                    "sum by (region, code) "
                    f"({rate('parley_rpc_requests_total', service='message', method='Connect')})",
                    "{{region}} {{code}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Doorbell publish failures",
            "Publishes Redis did not take: delivery then relies on the next sync.",
            [
                (
                    f"sum by (region) ({rate('parley_doorbell_publish_failures_total')})",
                    "{{region}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Devices kept online by streams",
            "Presence leases held by delivery streams, and lease writes Redis refused.",
            [
                (
                    f"sum by (region) ({sel('parley_stream_lease_devices')})",
                    "{{region}} devices",
                ),
                (
                    f"sum by (region) ({rate('parley_stream_lease_failures_total')})",
                    "{{region}} failures/s",
                ),
            ],
        ),
        backends("message"),
    ],
)

PRESENCE = Dashboard(
    "presence",
    "Presence",
    "svc_presence: heartbeats, online/offline transitions, subscriptions, the sweeper.",
    [
        Panel(
            "Heartbeats",
            "Heartbeats taken per second.",
            [(f"sum by (region) ({rate('parley_presence_heartbeats_total')})", "{{region}}")],
            unit="ops",
        ),
        Panel(
            "Transitions",
            "Users going online and offline per second.",
            [
                (
                    f"sum by (region, to) ({rate('parley_presence_transitions_total')})",
                    "{{region}} {{to}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Subscriptions",
            "SubscribePresence streams open and the accounts they watch.",
            [
                (
                    f"sum by (region) ({sel('parley_presence_subscriptions_open')})",
                    "{{region}} streams",
                ),
                (
                    f"sum by (region) ({sel('parley_presence_watched_accounts')})",
                    "{{region}} watched accounts",
                ),
            ],
        ),
        Panel(
            "Events pushed",
            "PresenceEvents sent to subscribers per second (snapshots included).",
            [
                (
                    f"sum by (region) ({rate('parley_presence_events_pushed_total')})",
                    "{{region}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Sweep cost",
            "Mean time of one sweep for expired devices.",
            [
                (
                    f"sum by (region) ({rate('parley_presence_sweep_seconds_total')}) / "
                    f"sum by (region) ({rate('parley_presence_sweeps_total')})",
                    "{{region}}",
                )
            ],
            unit="s",
        ),
        Panel(
            "Last seen writes",
            "Records written to MongoDB and batches it refused.",
            [
                (
                    f"sum by (region) ({rate('parley_presence_last_seen_written_total')})",
                    "{{region}} written",
                ),
                (
                    f"sum by (region) ({rate('parley_presence_last_seen_write_failures_total')})",
                    "{{region}} failed batches",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "Redis",
            "Failed presence Redis calls per second, and the pub/sub link (1 up).",
            [
                (
                    f"sum by (region) ({rate('parley_presence_redis_errors_total')})",
                    "{{region}} errors/s",
                ),
                (
                    f"min by (region) ({sel('parley_presence_channels_connected')})",
                    "{{region}} pub/sub connected",
                ),
            ],
        ),
        *rpc_panels("presence"),
        rate_limit_panel("presence"),
        backends("presence"),
    ],
)

KEYS = Dashboard(
    "keys",
    "Keys",
    "svc_keys: accounts, tokens and the end-to-end encryption key directory.",
    [
        *rpc_panels("keys"),
        Panel(
            "Prekey bundles",
            "Bundles handed out per second, with a one-time prekey or the signed prekey only.",
            [
                (
                    f"sum by (region, pre_key) ({rate('parley_prekey_bundles_total')})",
                    "{{region}} {{pre_key}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        Panel(
            "Signed-prekey fallback ratio",
            "Share of bundles without a one-time prekey: devices not replenishing, or "
            "someone draining them.",
            [
                (
                    "sum by (region) "
                    f"({rate('parley_prekey_bundles_total', pre_key='signed_fallback')}) / "
                    f"sum by (region) ({rate('parley_prekey_bundles_total')})",
                    "{{region}}",
                )
            ],
            unit="percentunit",
            max_value=1,
        ),
        Panel(
            "Devices low on one-time prekeys",
            "Devices below the low-water mark (20), sampled from pre_key_lows.",
            [(f"max by (region) ({sel('parley_prekey_low_devices')})", "{{region}}")],
        ),
        rate_limit_panel("keys"),
        backends("keys"),
    ],
)

DASHBOARDS = (OVERVIEW, MESSAGING, DELIVERY, PRESENCE, KEYS, MEDIA, SEARCH, REGIONS)
