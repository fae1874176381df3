"""The media dashboard (scripts/gen_dashboards.py renders it with the others).

svc_media hands out presigned URLs, so the bytes themselves never pass
through it: "uploaded" counts the ciphertext of verified uploads and
"downloaded" the size of the objects behind each presigned GET it granted.
The stock gauges (objects, stored bytes, references per object, GC lag,
restore queue) describe the whole region, and every svc_media process may
report them, so the panels take the highest reading rather than a sum.
"""

from __future__ import annotations

from dashboard_parts import (
    Dashboard,
    Panel,
    backends,
    rate,
    rate_limit_panel,
    rpc_panels,
    sel,
)

__all__ = ["MEDIA"]


def _region_gauge(name: str) -> str:
    return f"max by (region) ({sel(name)})"


MEDIA = Dashboard(
    "media",
    "Media",
    "svc_media: end-to-end encrypted attachments in the region's S3 bucket (bytes, objects, "
    "deduplication, garbage collection, quotas, restores).",
    [
        Panel(
            "Bytes uploaded and downloaded",
            "Ciphertext of uploads verified by CompleteUpload, and the size of the objects "
            "behind the presigned GETs handed out; the bytes travel between clients and the "
            "object store, not through svc_media.",
            [
                (
                    f"sum by (region) ({rate('parley_media_uploaded_bytes_total')})",
                    "{{region}} up",
                ),
                (
                    f"sum by (region) ({rate('parley_media_download_granted_bytes_total')})",
                    "{{region}} down",
                ),
            ],
            unit="Bps",
        ),
        Panel(
            "Objects stored",
            "Media kept in the bucket: completed uploads not yet collected.",
            [(_region_gauge("parley_media_objects"), "{{region}}")],
            width=6,
        ),
        Panel(
            "Bytes stored",
            "Ciphertext of the objects kept in the bucket.",
            [(_region_gauge("parley_media_stored_bytes"), "{{region}}")],
            unit="bytes",
            width=6,
        ),
        Panel(
            "Uploads",
            "Upload sessions started and completed into a new object per second; CreateUpload "
            "calls answered already stored (nothing uploaded: the ciphertext is kept already); "
            "completions that lost a race to the same ciphertext (their copy deleted); and "
            "completions whose object did not match its declared size or SHA-256.",
            [
                (
                    f"sum by (region) ({rate('parley_media_uploads_started_total')})",
                    "{{region}} started",
                ),
                (
                    f"sum by (region) ({rate('parley_media_uploads_completed_total')})",
                    "{{region}} completed",
                ),
                (
                    f"sum by (region) ({rate('parley_media_already_stored_total')})",
                    "{{region}} already stored",
                ),
                (
                    f"sum by (region) ({rate('parley_media_dedup_completions_total')})",
                    "{{region}} dedup race",
                ),
                (
                    f"sum by (region) ({rate('parley_media_verification_failures_total')})",
                    "{{region}} verification failed",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "References made and released",
            "Media ids named by sends (ReserveReferences) and released by deletes for "
            "everyone, per second.",
            [
                (
                    f"sum by (region) ({rate('parley_media_references_reserved_total')})",
                    "{{region}} reserved",
                ),
                (
                    f"sum by (region) ({rate('parley_media_references_released_total')})",
                    "{{region}} released",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "References per object (deduplication)",
            "Messages naming one stored object, on average: 1 is no sharing; a file forwarded "
            "1,000 times is one object with 1,000 references, uploaded once.",
            [(_region_gauge("parley_media_references_per_object"), "{{region}}")],
        ),
        Panel(
            "Garbage-collection lag",
            "How long the oldest media due for a check (last reference gone a grace period "
            "ago, or its upload session expired) has waited; the sweeps keep it near zero.",
            [(_region_gauge("parley_media_gc_lag_seconds"), "{{region}}")],
            unit="s",
        ),
        Panel(
            "Orphans collected",
            "Objects garbage collection deleted per second: no message named them any more, "
            "or their upload was never referenced.",
            [
                (
                    f"sum by (region) ({rate('parley_media_orphans_collected_total')})",
                    "{{region}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Sweeps",
            "Sweeps of expired upload sessions and media due for a check, sweeps cut short "
            "(the object store or svc_message did not answer), and sessions that expired "
            "unfinished (their parts removed).",
            [
                (f"sum by (region) ({rate('parley_media_sweeps_total')})", "{{region}} sweeps"),
                (
                    f"sum by (region) ({rate('parley_media_sweep_failures_total')})",
                    "{{region}} failed",
                ),
                (
                    f"sum by (region) ({rate('parley_media_sessions_expired_total')})",
                    "{{region}} sessions expired",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "Quota refusals",
            "Uploads refused per second by quota (RESOURCE_EXHAUSTED, QUOTA_EXCEEDED): "
            "daily_upload_bytes or stored_bytes.",
            [
                (
                    f"sum by (region, quota) ({rate('parley_media_quota_refusals_total')})",
                    "{{region}} {{quota}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Restore queue",
            "Restores of archived media requested and not yet ready.",
            [(_region_gauge("parley_media_restore_queue"), "{{region}}")],
        ),
        Panel(
            "Object store reachable",
            "Lowest over svc_media processes (1: the object store answers; 0: media RPCs "
            "answer UNAVAILABLE). Messages without media are unaffected.",
            [(f"min by (region) ({sel('parley_media_store_available')})", "{{region}}")],
            max_value=1,
        ),
        *rpc_panels("media"),
        rate_limit_panel("media"),
        backends("media"),
    ],
)
