"""The history archiver: moves the log's old weeks to Parquet objects on S3.

A leased worker inside svc_message: every process runs the loop, the one
holding the lease in ``archive_control`` does the work, so the archive has
one writer however many processes run (``parley up``, the operator and the
chart start it with svc_message). An operator pauses it for every process
through the same document (``python -m svc_message archive pause``).

What moves: per conversation, the oldest entries of the log (history items
and feed entries alike) whose ISO week ended before the hot window began,
never the week of the conversation's newest entry, so the log keeps its
head (``MessageStore.heads`` and the send pipeline read the newest entry)
and the archive always holds a prefix of the log by version and by seq.

Order, per object: write it -> read it back, check its SHA-256 and row
counts -> record the manifest (and the moved entries' request ids, so a late
retry of a send is still recognised) -> advance the conversations' cold
heads -> delete the moved entries from the log. Keys and bytes derive from the rows
(content addressed), so a crash at any step followed by a rerun writes the
same objects and records the same chunk ids: nothing lost (the log keeps
an entry until the head is past it), nothing twice (readers split the tiers
at the head; the manifest is keyed by chunk id).

A change whose target is already archived is folded into the target's
chunk (a rewrite) before the change itself leaves the log, so no overlay is
ever lost: ``rewrite_weeks_with`` is the same machinery with a transform,
which account erasure uses to tombstone what an account sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import structlog

from svc_message.domain.archive_transforms import Transform
from svc_message.domain.glacier import Glacier
from svc_message.domain.replica_trim import ReplicaTrimmer
from svc_message.model import HISTORY_KINDS, ChangeKind
from svc_message.model.archive import (
    ArchiveState,
    ArchiveStatus,
    ColdHead,
    ManifestEntry,
    Tier,
    restore_pending,
)
from svc_message.storage.archive import ArchiveLedger, ArchiveObjects, request_key
from svc_message.storage.archive_format import Chunk, encode, iso_week, row_group_sizes
from svc_message.storage.hot_log import HotLog
from svc_message.storage.tiered import TieredMessageStore

log = structlog.get_logger(__name__)

# Steps of a move, in order; a test hook may stop the archiver after any.
STEPS = ("written", "verified", "recorded", "advanced", "deleted")
# Before the moves of a pass: the log's candidates have been read (the
# benchmark times the pass's reads apart from its writes by it).
PREPARED = "prepared"

StepHook = Callable[[str], Awaitable[None]]
# Log entries one read of a conversation's candidates takes.
READ_BATCH = 500
# Seconds between two sweeps for objects no chunk names.
ORPHAN_SWEEP_SECONDS = 86400.0


class VerifyFailed(Exception):
    """An object read back is not what was written: nothing is recorded."""


def id_floor(at_seconds: float) -> str:
    """The smallest UUIDv7 of that millisecond: ids below it are older."""
    hex_ms = f"{int(at_seconds * 1000):012x}"
    return f"{hex_ms[:8]}-{hex_ms[8:12]}-7000-8000-000000000000"


def _at(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_history(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS


def movable_prefix(
    docs: Sequence[Mapping[str, Any]], *, cutoff: datetime, newest_at: datetime
) -> list[Mapping[str, Any]]:
    """The leading entries (by version) whose week ended before ``cutoff``
    and is older than the week of the conversation's newest entry."""
    boundary = min(iso_week(cutoff), iso_week(newest_at))
    moved: list[Mapping[str, Any]] = []
    for doc in docs:
        if iso_week(_at(doc["created_at"])) >= boundary:
            break
        moved.append(doc)
    return moved


def chunks_of(conversation_id: str, docs: Sequence[Mapping[str, Any]]) -> list[Chunk]:
    return [
        Chunk(conversation_id, week, list(group))
        for week, group in groupby(docs, key=lambda d: iso_week(_at(d["created_at"])))
    ]


def bundles(chunks: Sequence[Chunk], *, target_bytes: int) -> list[list[Chunk]]:
    """Chunks in order, cut into objects of at least ``target_bytes`` (by the
    size of their bodies and fields; the last one may be smaller)."""
    out: list[list[Chunk]] = []
    current: list[Chunk] = []
    size = 0
    for chunk in chunks:
        current.append(chunk)
        size += sum(len(d.get("body") or b"") + 200 for d in chunk.docs)
        if size >= target_bytes:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def manifest_entry(chunk: Chunk, key: str, row_group: int, sha256: str) -> ManifestEntry:
    seqs = [int(d["seq"]) for d in chunk.docs if _is_history(d)]
    media = sorted({m for d in chunk.docs if _is_history(d) for m in d.get("media") or ()})
    ids = [str(d["_id"]) for d in chunk.docs]
    return ManifestEntry(
        chunk_id=chunk.chunk_id,
        conversation_id=chunk.conversation_id,
        week=chunk.week,
        object_key=key,
        row_group=row_group,
        rows=len(chunk.docs),
        seq_lo=min(seqs, default=0),
        seq_hi=max(seqs, default=0),
        version_lo=chunk.first_version,
        version_hi=int(chunk.docs[-1]["version"]),
        id_lo=min(ids),
        id_hi=max(ids),
        sha256=sha256,
        media_ids=tuple(media),
    )


@dataclass(slots=True)
class PassReport:
    conversations: int = 0
    moved: int = 0
    objects: int = 0
    bytes: int = 0
    rewritten: int = 0
    orphans: int = 0
    to_glacier: int = 0
    lag_seconds: float = 0.0
    trimmed: int = 0


class Archiver:
    def __init__(
        self,
        hot: HotLog,
        ledger: ArchiveLedger,
        objects: ArchiveObjects,
        tiered: TieredMessageStore,
        *,
        instance_id: str,
        hot_window_seconds: float,
        target_object_bytes: int,
        messages_per_second: float,
        conversations_per_pass: int,
        entries_per_conversation: int,
        interval_seconds: float,
        lease_seconds: float,
        request_ids_seconds: float = 90 * 86400.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_step: StepHook | None = None,
        glacier: Glacier | None = None,
        owns: Callable[[str], bool] | None = None,
        trimmer: ReplicaTrimmer | None = None,
    ) -> None:
        # Which conversations this region owns (None: all, one region).
        # Archive objects are written only by the owner region, into its own
        # store; the others' copies are trimmed by ``trimmer`` instead.
        self._owns = owns
        self._trimmer = trimmer
        self._hot = hot
        self._ledger = ledger
        self._objects = objects
        self._tiered = tiered
        self._instance_id = instance_id
        self._window = hot_window_seconds
        self._target_bytes = target_object_bytes
        self._rate = messages_per_second
        self._conversations_per_pass = conversations_per_pass
        self._entries_per_conversation = entries_per_conversation
        self._interval = interval_seconds
        self._lease_seconds = lease_seconds
        self._request_ids_seconds = request_ids_seconds
        self._clock = clock
        self._sleep = sleep
        self._on_step = on_step
        self.glacier = glacier
        self.last = PassReport()
        self.moved_total = 0
        self.objects_total = 0
        self.bytes_total = 0
        self.to_glacier_total = 0
        self.failures = 0
        self.sampled: ArchiveStatus | None = None
        self._swept_at = 0.0
        # The oldest entry id of the last candidate of a pass that could not
        # take them all; the next pass goes on from there.
        self._turn = ""

    @property
    def trimmed_total(self) -> int:
        return self._trimmer.trimmed_total if self._trimmer is not None else 0

    async def _step(self, name: str) -> None:
        if self._on_step is not None:
            await self._on_step(name)

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Passes every interval while this process holds the lease and the
        archiver is not paused, until cancelled."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # S3 or MongoDB unavailable: the log keeps everything, the
                # next pass starts over where the heads are.
                self.failures += 1
                log.warning("archiver_pass_failed", error=repr(exc))
            await self._sleep(self._interval)

    async def tick(self) -> PassReport | None:
        now = self._clock()
        if (await self._ledger.state()).paused:
            return None
        if not await self._ledger.take_lease(
            self._instance_id, now=now, seconds=self._lease_seconds
        ):
            return None
        return await self.run_pass(now)

    async def sweep_orphans(self, now: float, *, min_age_seconds: float) -> int:
        """Delete objects under the prefix that no chunk names and that were
        written more than ``min_age_seconds`` ago: written by a move that
        crashed before recording them and was then bundled differently, or
        by a rewrite that lost its race. The age spares objects a move or a
        rewrite is recording right now."""
        named = await self._ledger.object_keys()
        deleted = 0
        for key, (_, written_at) in (await self._objects.keys()).items():
            if key not in named and now - written_at > min_age_seconds:
                await self._objects.delete(key)
                deleted += 1
        if deleted:
            log.info("archive_orphans_deleted", count=deleted)
        return deleted

    async def set_paused(self, paused: bool) -> None:
        await self._ledger.set_paused(paused)

    async def release(self) -> None:
        await self._ledger.release_lease(self._instance_id)

    async def sample_forever(self, interval_seconds: float) -> None:
        """Keep ``sampled`` current for the metrics (the totals read the
        manifest, too much for every scrape)."""
        while True:
            try:
                self.sampled = await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("archive_status_failed", error=repr(exc))
            await self._sleep(interval_seconds)

    def lag_seconds(self, now: float) -> float:
        """How far the archive is behind the window: the last pass's lag, or
        for how long no pass has run beyond its interval (paused, failing,
        or no process holding the lease)."""
        sampled = self.sampled
        if sampled is None:
            return 0.0
        state = sampled.state
        idle = now - state.last_pass_at - self._interval if state.last_pass_at else 0.0
        return max(state.lag_seconds, idle, 0.0)

    async def sample(self) -> ArchiveStatus:
        """The status for the metrics: the hot log's size as the last pass
        measured it, not read again by every process every interval."""
        state = await self._ledger.state()
        return await self._with_tiers(state, state.hot_entries, state.hot_bytes)

    async def status(self) -> ArchiveStatus:
        """The status with the hot log measured now (``python -m svc_message archive status``)."""
        return await self._with_tiers(
            await self._ledger.state(), await self._hot.count(), await self._hot.size_bytes()
        )

    async def _with_tiers(
        self, state: ArchiveState, hot_entries: int | None, hot_bytes: int | None
    ) -> ArchiveStatus:
        tiers = await self._ledger.tier_totals()
        rows, objects, size = tiers[Tier.COLD]
        glacier_rows, glacier_objects, glacier_bytes = tiers[Tier.GLACIER]
        return ArchiveStatus(
            state=state,
            hot_entries=hot_entries,
            hot_bytes=hot_bytes,
            cold_rows=rows,
            cold_objects=objects,
            cold_bytes=size,
            glacier_rows=glacier_rows,
            glacier_objects=glacier_objects,
            glacier_bytes=glacier_bytes,
        )

    # -- one pass ----------------------------------------------------------------

    async def run_pass(self, now: float) -> PassReport:
        report = PassReport()
        cutoff = datetime.fromtimestamp(now - self._window, UTC)
        # Quiet conversations keep their newest week in the log past the
        # window and stay candidates; passes go through the candidates in
        # turns (by oldest entry), so they cannot crowd the others out.
        found = await self._hot.conversations_before(
            id_floor(cutoff.timestamp()), after=self._turn, limit=self._conversations_per_pass
        )
        behind = len(found) >= self._conversations_per_pass
        self._turn = found[-1][1] if behind else ""
        owns = self._owns or (lambda _: True)
        candidates = [c for c, _ in found if owns(c)]
        if self._trimmer is not None:
            others = [c for c, _ in found if not owns(c)]
            report.trimmed = await self._trimmer.trim_all(others, now=now)
        pending: list[Chunk] = []
        for conversation_id in sorted(candidates):
            chunks, truncated = await self._prepare(conversation_id, cutoff, report, now)
            behind = behind or truncated
            if chunks:
                report.conversations += 1
                pending += chunks
        await self._step(PREPARED)
        await self._move_all(bundles(pending, target_bytes=self._target_bytes), report, now=now)
        # Behind: this pass could not take everything due. The lag is then
        # how far past the window the oldest entry it found was (more may wait).
        oldest = min((_at(c.docs[0]["created_at"]) for c in pending), default=None)
        report.lag_seconds = (
            max(0.0, (cutoff - oldest).total_seconds()) if behind and oldest else 0.0
        )
        if self.glacier is not None:
            report.to_glacier = await self.glacier.run(now)
            self.to_glacier_total += report.to_glacier
        if now - self._swept_at >= ORPHAN_SWEEP_SECONDS:
            # Listing the prefix costs one request per 1,000 objects: daily.
            report.orphans = await self.sweep_orphans(now, min_age_seconds=self._lease_seconds)
            self._swept_at = now
        self.last = report
        # The log's size, region-wide, for every process's metrics: measured
        # here by the one lease holder, once a pass, because SecantusDB
        # answers both reads by walking the whole collection under its global
        # lock, stalling every send for as long (~0.1-0.5 s at 2,000 entries).
        await self._ledger.finish_pass(
            now=now,
            lag_seconds=report.lag_seconds,
            moved=report.moved,
            hot_entries=await self._hot.count(),
            hot_bytes=await self._hot.size_bytes(),
        )
        return report

    async def _prepare(
        self, conversation_id: str, cutoff: datetime, report: PassReport, now: float
    ) -> tuple[list[Chunk], bool]:
        """The chunks to move, and whether entries due were left for a later pass."""
        head = await self._ledger.head(conversation_id)
        # A move that stopped after advancing the head left entries behind.
        await self._hot.delete_through(conversation_id, head.version)
        newest = await self._hot.newest(conversation_id)
        if newest is None:
            return [], False
        # In batches, up to the first entry that stays: the hot part of a busy
        # conversation's log is not read at all.
        moved: list[Mapping[str, Any]] = []
        after = head.version
        while len(moved) < self._entries_per_conversation:
            wanted = min(READ_BATCH, self._entries_per_conversation - len(moved))
            docs = await self._hot.entries(conversation_id, after_version=after, limit=wanted)
            prefix = movable_prefix(docs, cutoff=cutoff, newest_at=_at(newest["created_at"]))
            moved += prefix
            if len(prefix) < len(docs) or len(docs) < wanted:
                break
            after = int(docs[-1]["version"])
        if not moved:
            return [], False
        truncated = len(moved) == self._entries_per_conversation
        folded = {
            int(d.get("target_seq") or 0)
            for d in moved
            if not _is_history(d) and 0 < int(d.get("target_seq") or 0) <= head.seq
        }
        if folded:
            entries = await self._ledger.by_seq(conversation_id, min(folded), max(folded))
            targets = [e for e in entries if any(e.seq_lo <= s <= e.seq_hi for s in folded)]
            rewritten, waiting = await self._rewrite(targets, transform=None, now=now)
            report.rewritten += rewritten
            if waiting:
                # A change whose target's object is being restored stays in
                # the log (its overlay with it) until the fold can be made.
                held = [(e.seq_lo, e.seq_hi) for e in targets if e.object_key in waiting]
                keep = next(
                    (
                        i
                        for i, d in enumerate(moved)
                        if not _is_history(d)
                        and any(lo <= int(d.get("target_seq") or 0) <= hi for lo, hi in held)
                    ),
                    len(moved),
                )
                moved, truncated = moved[:keep], True
        return chunks_of(conversation_id, moved), truncated

    async def _move_all(
        self, objects: Sequence[Sequence[Chunk]], report: PassReport, *, now: float
    ) -> None:
        """Move the objects in order, the next one written and verified while
        the database records this one and deletes its entries: each object
        still goes write -> verify -> record -> delete, and an object written
        ahead of a crash is the same object a rerun writes (or an orphan the
        sweep takes)."""
        ahead: asyncio.Task[tuple[list[ManifestEntry], int]] | None = None
        try:
            for i, bundle in enumerate(objects):
                written = await (ahead if ahead is not None else self._write(bundle))
                ahead = None
                if i + 1 < len(objects):
                    ahead = asyncio.create_task(self._write(objects[i + 1]))
                moved = await self._move(bundle, written, report, now=now)
                if self._rate > 0:
                    await self._sleep(moved / self._rate)
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _write(self, chunks: Sequence[Chunk]) -> tuple[list[ManifestEntry], int]:
        """Write and verify one object holding ``chunks``: its manifest entries
        and size. Nothing is recorded yet."""
        # Off the event loop: encoding is CPU work that can run while the
        # database works on the previous object.
        encoded = await asyncio.to_thread(encode, chunks)
        key = self._objects.key_for(chunks[0].chunk_id, encoded.sha256)
        await self._objects.put(key, encoded.data)
        await self._step("written")
        back = await self._objects.get(key, sha256=encoded.sha256, cached=False)
        if row_group_sizes(back) != [rows for _, rows in encoded.row_groups]:
            raise VerifyFailed(key)
        await self._step("verified")
        entries = [
            manifest_entry(chunk, key, group, encoded.sha256)
            for chunk, (group, _) in zip(chunks, encoded.row_groups, strict=True)
        ]
        return entries, len(encoded.data)

    async def _move(
        self,
        bundle: Sequence[Chunk],
        written: tuple[list[ManifestEntry], int],
        report: PassReport,
        *,
        now: float,
    ) -> int:
        entries, size = written
        await self._ledger.record(entries, size)
        # Before the log forgets them: the send pipeline's late-retry check.
        await self._ledger.remember_requests(
            {
                request_key(chunk.conversation_id, str(d["sender_id"]), str(d["request_id"])): int(
                    d["version"]
                )
                for chunk in bundle
                for d in chunk.docs
                if d.get("request_id")
            },
            expire_at=datetime.fromtimestamp(now + self._request_ids_seconds, UTC),
        )
        await self._step("recorded")
        heads: dict[str, ColdHead] = {}
        for entry in entries:
            was = heads.get(entry.conversation_id, ColdHead())
            heads[entry.conversation_id] = ColdHead(
                version=max(was.version, entry.version_hi), seq=max(was.seq, entry.seq_hi)
            )
        for conversation_id, head in heads.items():
            await self._ledger.advance(conversation_id, head)
        await self._step("advanced")
        for conversation_id, head in heads.items():
            await self._hot.delete_through(conversation_id, head.version)
        await self._step("deleted")
        moved = sum(e.rows for e in entries)
        report.moved += moved
        report.objects += 1
        report.bytes += size
        self.moved_total += moved
        self.objects_total += 1
        self.bytes_total += size
        return moved

    # -- rewrites ----------------------------------------------------------------

    async def _rewrite(
        self, entries: Iterable[ManifestEntry], *, transform: Transform | None, now: float
    ) -> tuple[int, set[str]]:
        """Rewrite chunks with the log's overlay folded in and ``transform``
        applied. An object with any chunk changed is rewritten whole (its other
        chunks copied), so the old object, which still holds the old rows,
        can be deleted; objects nothing changes are left alone. Objects in
        the glacier tier are read from a restored copy; those the store has
        not restored yet are left for a later call (a restore is asked for).
        Returns chunks rewritten and the keys of the objects left."""
        entries = list(entries)
        frozen = {e.object_key for e in entries if e.tier is Tier.GLACIER}
        waiting: set[str] = set()
        if frozen:
            assert self.glacier is not None, "glacier objects without a glacier tier"
            waiting = await self.glacier.unreadable(frozen, now)
        changed_keys: set[str] = set()
        prepared: dict[str, Chunk] = {}
        for entry in entries:
            if entry.object_key in waiting:
                continue
            chunk = await self._changed(entry, transform)
            if chunk is not None:
                prepared[entry.chunk_id] = chunk
                changed_keys.add(entry.object_key)
        rewritten: list[tuple[ManifestEntry, Chunk]] = []
        for entry in await self._ledger.in_objects(sorted(changed_keys)):
            chunk = prepared.get(entry.chunk_id) or await self._changed(
                entry, transform, always=True
            )
            assert chunk is not None
            rewritten.append((entry, chunk))
        count = 0
        for group in bundles([c for _, c in rewritten], target_bytes=self._target_bytes):
            # Rewritten chunks are written anew (STANDARD, the cold tier); the
            # glacier pass moves them again while their weeks are that old.
            olds = {c.chunk_id: e for e, c in rewritten if any(c is g for g in group)}
            new_entries, size = await self._write(group)
            for entry in new_entries:
                old = olds[entry.chunk_id]
                if await self._ledger.repoint(entry, was=old.object_key, object_bytes=size):
                    count += 1
                if not await self._ledger.references(old.object_key):
                    await self._objects.delete(old.object_key)
            if not await self._ledger.references(new_entries[0].object_key):
                await self._objects.delete(new_entries[0].object_key)
        return count, waiting

    async def _changed(
        self, entry: ManifestEntry, transform: Transform | None, *, always: bool = False
    ) -> Chunk | None:
        """The chunk as rewritten, or None when nothing would change."""
        restored = entry.tier is Tier.GLACIER
        before = await self._tiered.chunk_docs(entry, restored=restored)
        docs = await self._tiered.current_docs(entry, restored=restored)
        changed = docs != before
        if transform is not None:
            for doc in docs:
                changed = transform(doc) or changed
        if not (changed or always):
            return None
        return Chunk(entry.conversation_id, entry.week, docs)

    async def rewrite_weeks_with(
        self, transform: Transform, *, conversation_ids: Sequence[str] | None, limit: int = 100_000
    ) -> int:
        """Rewrite the archived chunks of ``conversation_ids`` (None: every
        chunk, at most ``limit``) through ``transform``, which edits a
        document in place and says whether it changed it; overlays are folded
        in too. Idempotent; returns the chunks rewritten. Account erasure:
        ``rewrite_weeks_with(tombstone_sender(account_id), conversation_ids=...)``.
        Chunks in the glacier tier are restored first: while any is still
        being restored, the others are rewritten and then UNAVAILABLE
        (retry later) says the work is not done."""
        entries = await self._ledger.of_conversations(conversation_ids, limit=limit)
        count, waiting = await self._rewrite(entries, transform=transform, now=self._clock())
        if waiting:
            raise restore_pending(len(waiting))
        return count
