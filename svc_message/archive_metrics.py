"""Metrics of the history archive: the log's size per tier, the archiver's
lag behind the hot window, what it moved. Every process exports the tier
sizes and the lag (read from MongoDB); the counters are this process's own,
so only the lease holder's rise."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.archiver import Archiver

Family = CounterMetricFamily | GaugeMetricFamily


class ArchiveMetrics(Collector):
    def __init__(self, archiver: Archiver, *, clock: Callable[[], float] = time.time) -> None:
        self._archiver = archiver
        self._clock = clock

    def collect(self) -> Iterator[Family]:
        archiver = self._archiver
        sampled = archiver.sampled
        entries = GaugeMetricFamily(
            "parley_history_entries",
            "Conversation log entries per tier (hot: MongoDB, estimated; cold: readable "
            "archive rows; glacier: archive rows in the glacier class)",
            labels=["tier"],
        )
        size = GaugeMetricFamily(
            "parley_history_bytes",
            "Bytes of the conversation log per tier (hot: MongoDB documents, uncompressed; "
            "cold, glacier: archive objects on S3 by their tier)",
            labels=["tier"],
        )
        objects = GaugeMetricFamily(
            "parley_history_objects", "Archive objects (Parquet on S3) the manifest names"
        )
        if sampled is not None:
            # Absent, not 0, until a pass has measured the hot log.
            if sampled.hot_entries is not None:
                entries.add_metric(["hot"], sampled.hot_entries)
            if sampled.hot_bytes is not None:
                size.add_metric(["hot"], sampled.hot_bytes)
            entries.add_metric(["cold"], sampled.cold_rows)
            entries.add_metric(["glacier"], sampled.glacier_rows)
            size.add_metric(["cold"], sampled.cold_bytes)
            size.add_metric(["glacier"], sampled.glacier_bytes)
            objects.add_metric([], sampled.cold_objects + sampled.glacier_objects)
        yield entries
        yield size
        yield objects
        yield GaugeMetricFamily(
            "parley_archiver_lag_seconds",
            "How far the archive is behind the hot window: the oldest entry due that the "
            "last pass could not move, or how long no pass has run",
            value=archiver.lag_seconds(self._clock()),
        )
        yield GaugeMetricFamily(
            "parley_archiver_paused",
            "1 while an operator has paused the archiver (every process)",
            value=1 if sampled is not None and sampled.state.paused else 0,
        )
        yield CounterMetricFamily(
            "parley_archiver_moved_entries",
            "Log entries this process moved to the archive",
            value=archiver.moved_total,
        )
        yield CounterMetricFamily(
            "parley_archiver_trimmed_entries",
            "Log entries of conversations owned by another region this process deleted from "
            "this region's copy (older than the hot window plus the replica margin)",
            value=archiver.trimmed_total,
        )
        yield CounterMetricFamily(
            "parley_archiver_objects_written",
            "Archive objects this process wrote (moves and rewrites)",
            value=archiver.objects_total,
        )
        yield CounterMetricFamily(
            "parley_archiver_bytes_written",
            "Bytes of archive objects this process wrote",
            value=archiver.bytes_total,
        )
        yield CounterMetricFamily(
            "parley_archiver_glacier_objects",
            "Archive objects this process recorded as moved to the glacier class",
            value=archiver.to_glacier_total,
        )
        yield CounterMetricFamily(
            "parley_archiver_pass_failures",
            "Archiver passes that failed (S3 or MongoDB unavailable)",
            value=archiver.failures,
        )
