"""Domain metrics of svc_media, read from plain counters at scrape time, and an
inventory (objects, bytes, references, GC lag) the sweeper refreshes, so a
scrape never scans the media collection."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_media.model import MediaStats
from svc_media.ports import MediaDocs

# Seconds between two scans of the media collection for the inventory gauges.
INVENTORY_SECONDS = 30.0


class Inventory:
    def __init__(self, media: MediaDocs, *, every_seconds: float = INVENTORY_SECONDS) -> None:
        self._media = media
        self._every = every_seconds
        self._last = float("-inf")
        self.objects = 0
        self.stored_bytes = 0
        self.references = 0
        self.oldest_overdue: float | None = None

    async def refresh(self, now: float) -> None:
        # The lag is cheap (one indexed read) and what alerts watch: every pass.
        self.oldest_overdue = await self._media.oldest_overdue(now=now)
        if now - self._last < self._every:
            return
        self._last = now
        self.objects, self.stored_bytes, self.references = await self._media.totals()


class MediaMetrics(Collector):
    def __init__(
        self,
        stats: MediaStats,
        inventory: Inventory,
        store_available: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.time,
        region_forwards: Mapping[str, int] | None = None,
        region_refusals: Mapping[str, int] | None = None,
    ) -> None:
        # Live dictionaries of the region router, by peer region.
        self._region_forwards = region_forwards if region_forwards is not None else {}
        self._region_refusals = region_refusals if region_refusals is not None else {}
        self._stats = stats
        self._inventory = inventory
        self._store_available = store_available
        self._clock = clock

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats
        inv = self._inventory

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, text, value=value)

        yield counter("parley_media_uploads_started", "Upload sessions created.", s.uploads_started)
        yield counter(
            "parley_media_uploads_completed",
            "Uploads completed into a new object.",
            s.uploads_completed,
        )
        yield counter(
            "parley_media_uploaded_bytes",
            "Ciphertext bytes of completed uploads (verified), dedup races included.",
            s.bytes_uploaded,
        )
        yield counter(
            "parley_media_dedup_completions",
            "Completed uploads whose ciphertext was stored already (the new copy was deleted).",
            s.dedup_completions,
        )
        yield counter(
            "parley_media_already_stored",
            "CreateUpload calls answered already_stored: nothing uploaded.",
            s.already_stored,
        )
        yield counter(
            "parley_media_downloads_granted", "Presigned GETs handed out.", s.downloads_granted
        )
        yield counter(
            "parley_media_download_granted_bytes",
            "Object bytes of the presigned GETs handed out (what clients may download).",
            s.bytes_granted,
        )
        yield counter(
            "parley_media_references_reserved",
            "Media references made by sends (ReserveReferences, per media id).",
            s.reserved_ids,
        )
        yield counter(
            "parley_media_references_released",
            "Media references released by deletes for everyone (per media id).",
            s.releases,
        )
        yield counter(
            "parley_media_orphans_collected",
            "Media removed by garbage collection (no message referenced it).",
            s.orphans_collected,
        )
        yield counter(
            "parley_media_collected_bytes",
            "Bytes of the media removed by garbage collection.",
            s.bytes_collected,
        )
        yield counter(
            "parley_media_sessions_expired",
            "Upload sessions that expired unfinished (their parts removed).",
            s.sessions_expired,
        )
        yield counter(
            "parley_media_verification_failures",
            "Completions whose object did not match the declared size or SHA-256.",
            s.verification_failures,
        )
        refusals = CounterMetricFamily(
            "parley_media_quota_refusals", "Uploads refused by a quota.", labels=["quota"]
        )
        for quota in ("daily_upload_bytes", "stored_bytes"):
            refusals.add_metric([quota], s.quota_refusals.get(quota, 0))
        yield refusals
        yield counter("parley_media_sweeps", "Sweeps of sessions and due media.", s.sweeps)
        yield counter(
            "parley_media_sweep_failures",
            "Sweeps cut short (the object store or svc_message did not answer).",
            s.sweep_failures,
        )
        yield GaugeMetricFamily(
            "parley_media_objects", "Media objects stored (ready).", value=inv.objects
        )
        yield GaugeMetricFamily(
            "parley_media_stored_bytes",
            "Bytes of the media objects stored.",
            value=inv.stored_bytes,
        )
        yield GaugeMetricFamily(
            "parley_media_references_per_object",
            "References made per stored object (the dedup ratio: above 1, forwards saved uploads).",
            value=inv.references / inv.objects if inv.objects else 0.0,
        )
        lag = 0.0
        if inv.oldest_overdue is not None:
            lag = max(0.0, self._clock() - inv.oldest_overdue)
        yield GaugeMetricFamily(
            "parley_media_gc_lag_seconds",
            "How long the most overdue garbage-collection check has waited (0: none overdue).",
            value=lag,
        )
        yield counter(
            "parley_media_restores_started",
            "Restores of archived media the object store started (RestoreObject accepted).",
            s.restores_started,
        )
        yield counter(
            "parley_media_restores_ready",
            "Restores whose copy the object store reported readable.",
            s.restores_ready,
        )
        yield counter(
            "parley_media_restore_notices",
            "Restore-ready notices svc_message took for the requesting devices.",
            s.restore_notices,
        )
        yield counter(
            "parley_media_restore_refusals",
            "RestoreMedia calls refused because the account had its most restores running.",
            s.restore_refusals,
        )
        yield GaugeMetricFamily(
            "parley_media_restore_queue",
            "Restores of archived media queued or running (counted by each process's poller).",
            value=s.restore_queue,
        )
        yield GaugeMetricFamily(
            "parley_media_store_available",
            "1 while the object store answers, 0 while media RPCs answer UNAVAILABLE.",
            value=1 if self._store_available() else 0,
        )
        forwards = CounterMetricFamily(
            "parley_media_region_forwards",
            "Media requests forwarded to the region holding their object (or the caller's "
            "home, for uploads) and answered by it, by that peer region.",
            # "peer", not "region": Prometheus owns "region" (docs/ARCHITECTURE.md, Metrics).
            labels=["peer"],
        )
        for region, count in sorted(self._region_forwards.items()):
            forwards.add_metric([region], count)
        yield forwards
        refusals = CounterMetricFamily(
            "parley_media_region_refusals",
            "Media requests answered UNAVAILABLE (REGION_UNAVAILABLE) because the region "
            "holding their object could not be reached, by that peer region.",
            labels=["peer"],
        )
        for region, count in sorted(self._region_refusals.items()):
            refusals.add_metric([region], count)
        yield refusals
