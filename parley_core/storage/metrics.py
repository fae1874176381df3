"""Database write accounting on every service's /metrics.

``WriteCounter`` (a pymongo command listener, in ``mongo``) keeps plain ints;
this collector reads them at scrape time, so the write path never touches a
Prometheus lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from parley_core.storage.mongo import WriteCounter

LABELS = ("collection", "op")


class DbWriteMetrics(Collector):
    def __init__(self, writes: WriteCounter) -> None:
        self._writes = writes

    def collect(self) -> Iterator[CounterMetricFamily]:
        commands = CounterMetricFamily(
            "parley_db_write_commands",
            "Write commands sent to MongoDB (insert/update/delete/findAndModify), "
            "by collection and op.",
            labels=LABELS,
        )
        documents = CounterMetricFamily(
            "parley_db_documents_written",
            "Documents carried by those write commands (inserted documents, update "
            "and delete statements; findAndModify counts one).",
            labels=LABELS,
        )
        for collection, op, command_count, document_count in self._writes.counts():
            commands.add_metric([collection, op], command_count)
            documents.add_metric([collection, op], document_count)
        yield commands
        yield documents
