"""How svc_message builds its history archive, glacier tier and history exports
(the composition root's helpers, svc_message/app.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from parley_core.config import Settings
from parley_core.ids import random_id
from parley_core.storage.mongo import Database
from svc_message.domain.archiver import Archiver, StepHook
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.glacier import Glacier, GlacierPolicy
from svc_message.domain.history_export import ExportPolicy, ExportWorker, HistoryExports
from svc_message.domain.replica_trim import ReplicaTrimmer
from svc_message.servicer.convert import ProtoEventCodec
from svc_message.storage.archive import ArchiveLedger, ArchiveObjects
from svc_message.storage.archive_lifecycle import transition_days
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.history_export import ExportObjects, ExportStore
from svc_message.storage.hot_log import HotLog
from svc_message.storage.replica_floor import ReplicaFloors, ReplicaHistoryStore
from svc_message.storage.tiered import TieredMessageStore


def build_glacier(settings: Settings, ledger: ArchiveLedger, objects: ArchiveObjects) -> Glacier:
    config = settings.archive
    return Glacier(
        ledger,
        objects,
        GlacierPolicy(
            cold_window_seconds=config.cold_window_seconds,
            transition=config.glacier_transition,
            storage_class=config.glacier_storage_class,
            lifecycle_days=transition_days(
                cold_window_days=config.cold_window_days, hot_window_days=config.hot_window_days
            ),
            restore_tier=config.restore_tier,
            restore_days=config.restore_days,
        ),
    )


async def build_history_exports(
    settings: Settings,
    db: Database,
    store: TieredMessageStore,
    archive_objects: ArchiveObjects,
    conversations: ConversationsHandler,
    publisher: Doorbell,
    codec: ProtoEventCodec,
    *,
    clock: Callable[[], float],
) -> tuple[HistoryExports, ExportWorker, ExportObjects]:
    """The history export requests and their worker (one per deployment by lease)."""
    config = settings.archive
    exports_store = ExportStore(db)
    await exports_store.ensure_indexes()
    objects = await ExportObjects.open(
        settings.s3, prefix=config.export_prefix, timeout_seconds=config.s3_timeout_seconds
    )
    worker = ExportWorker(
        exports_store,
        objects,
        store,
        conversations,
        build_glacier(settings, ArchiveLedger(db), archive_objects),
        publisher,
        codec,
        ExportPolicy(
            ttl_seconds=config.export_ttl_seconds,
            poll_seconds=config.export_poll_seconds,
            lease_seconds=config.export_lease_seconds,
            messages_per_second=config.export_messages_per_second,
            part_messages=config.export_part_messages,
        ),
        instance_id=random_id(),
        clock=clock,
    )
    exports = HistoryExports(
        exports_store,
        objects,
        conversations,
        url_seconds=config.export_url_seconds,
        wake=worker.wake,
    )
    return exports, worker, objects


async def build_archive(
    settings: Settings,
    db: Database,
    *,
    clock: Callable[[], float] = time.time,
    on_step: StepHook | None = None,
    owns: Callable[[str], bool] | None = None,
) -> tuple[TieredMessageStore, Archiver, ArchiveObjects]:
    """The log across its tiers and the archiver that moves it (also used by
    ``python -m svc_message archive`` and the history benchmark, which times
    the archiver's steps through ``on_step``)."""
    config = settings.archive
    ledger = ArchiveLedger(db)
    hot = HotLog(db)
    await ledger.ensure_indexes()
    await hot.ensure_indexes()
    objects = await ArchiveObjects.open(
        settings.s3, prefix=config.prefix, timeout_seconds=config.s3_timeout_seconds
    )
    store: TieredMessageStore
    trimmer: ReplicaTrimmer | None = None
    if owns is None:
        store = TieredMessageStore(db, ledger, hot, objects)
    else:
        # With regions the log also holds copies of others' conversations:
        # trimmed below the hot window here, read below that from the owner.
        floors = ReplicaFloors(db)
        store = ReplicaHistoryStore(db, ledger, hot, objects, floors=floors, owns=owns)
        trimmer = ReplicaTrimmer(
            hot,
            floors,
            retention_seconds=config.hot_window_seconds + config.replica_margin_seconds,
            entries_per_conversation=config.entries_per_conversation,
            messages_per_second=config.messages_per_second,
        )
    await store.ensure_indexes()
    glacier = build_glacier(settings, ledger, objects)
    archiver = Archiver(
        hot,
        ledger,
        objects,
        store,
        instance_id=random_id(),
        hot_window_seconds=config.hot_window_seconds,
        target_object_bytes=config.target_object_bytes,
        messages_per_second=config.messages_per_second,
        conversations_per_pass=config.conversations_per_pass,
        entries_per_conversation=config.entries_per_conversation,
        interval_seconds=config.interval_seconds,
        lease_seconds=config.lease_seconds,
        request_ids_seconds=config.request_ids_seconds,
        clock=clock,
        on_step=on_step,
        glacier=glacier,
        owns=owns,
        trimmer=trimmer,
    )
    return store, archiver, objects
