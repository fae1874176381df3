"""Metrics of history exports: the queue (unfinished jobs per state, read
from MongoDB by every process) and what this process's worker made."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from svc_message.domain.history_export import ExportWorker

Family = CounterMetricFamily | GaugeMetricFamily


class ExportMetrics(Collector):
    def __init__(self, worker: ExportWorker) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Family]:
        worker = self._worker
        queue = GaugeMetricFamily(
            "parley_history_exports",
            "History export jobs not finished yet, per state (the export queue)",
            labels=["state"],
        )
        if worker.unfinished is not None:
            for state, count in worker.unfinished.items():
                queue.add_metric([state.name.lower()], count)
        yield queue
        yield CounterMetricFamily(
            "parley_history_exports_ready",
            "History exports this process made READY",
            value=worker.ready_total,
        )
        yield CounterMetricFamily(
            "parley_history_export_bytes_written",
            "Bytes of export objects this process wrote (parts and joined exports)",
            value=worker.bytes_written,
        )
