"""The conversation log across its tiers: hot in MongoDB, cold in the archive.

Per conversation the archive holds a prefix of the log: every entry at or
below its cold head (``archive_heads``), the hot log everything above. The
reads that page or replay the log (history pages by seq, feed replay by
version, lookups by id) ask the tier that holds each position, so callers
cannot tell the tiers apart. The archiver advances the head before it
deletes the entries from the log, so a position is always in at least one
tier; a read that sees the head move under it reads again.

Changes made to an archived message after it was archived (edits, deletes,
hides, reactions) stay in the log as feed entries, where they are (they are
newer); they name the seq they target, so a read of cold rows applies them
on top (the overlay). Applying one again is harmless (each sets a state, or
is guarded by a version), which is what lets a rewrite fold them into the
object while they are still in the log. A message deleted for everyone has
no body in either tier.

Writes are unchanged: they go to the hot log; a mutation of an archived
message there matches no document and only its feed entry stays. The log's
unique request index cannot see archived entries: the archiver keeps their
request ids (hashed) in ``archive_requests`` for a while, and the send
pipeline asks ``archived_retries`` before it inserts, so a late retry gets
its first attempt's change (``by_request`` reads it from the archive).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from parley_core.storage.mongo import Database, Document
from svc_message.model import HISTORY_KINDS, NEWEST, Change, ChangeKind, Message
from svc_message.model.archive import ColdHead, ManifestEntry, Tier, history_archived
from svc_message.model.media import MediaReference
from svc_message.storage.archive import (
    ArchivedObject,
    ArchiveLedger,
    ArchiveObjects,
    MissingObject,
    request_key,
)
from svc_message.storage.archive_format import iso_week, read_row_group
from svc_message.storage.hot_log import HotLog
from svc_message.storage.messages import MessageStore, change_from_doc, message_from_doc

# Reads that saw the cold head move under them try again at most this often.
_HEAD_RETRIES = 3
# Decoded row groups kept for pages (a chunk is a conversation's week, ~100s
# of rows): decoding one costs more than the rest of a cold page.
_DECODED_CHUNKS = 64


def _is_history(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS


def apply_overlay(doc: dict[str, Any], change: Mapping[str, Any]) -> None:
    """Apply one feed entry to the archived message it targets, as
    storage.messages.mutation does to a hot one."""
    kind = change.get("kind")
    version = int(change["version"])
    if kind == ChangeKind.EDIT:
        if doc.get("deleted") or int(doc.get("edit_version") or 0) >= version:
            return
        doc["body"] = bytes(change.get("body") or b"")
        doc["edited_at"] = change["created_at"]
        doc["edit_version"] = version
    elif kind == ChangeKind.DELETE:
        doc["deleted"] = True
        doc["body"] = b""
        doc["deleted_by"] = change["sender_id"]
        doc.pop("media", None)
    elif kind == ChangeKind.HIDE:
        hidden = list(doc.get("hidden_for") or ())
        if change.get("only_for") and change["only_for"] not in hidden:
            hidden.append(change["only_for"])
        doc["hidden_for"] = hidden
        return
    elif kind == ChangeKind.REACTION:
        key = str(change.get("emoji", "")).encode().hex()
        reactions = dict(doc.get("reactions") or {})
        accounts = list(reactions.get(key) or ())
        account = change["sender_id"]
        if change.get("removed"):
            accounts = [a for a in accounts if a != account]
        elif account not in accounts:
            accounts.append(account)
        reactions[key] = accounts
        doc["reactions"] = reactions
    else:
        return
    doc["state_version"] = max(int(doc.get("state_version") or 0), version)


def overlaid(docs: Iterable[dict[str, Any]], changes: Iterable[Mapping[str, Any]]) -> None:
    """Apply ``changes`` (oldest first) to the history items among ``docs``."""
    by_id = {doc["_id"]: doc for doc in docs if _is_history(doc)}
    for change in changes:
        target = by_id.get(change.get("target", ""))
        if target is not None:
            apply_overlay(target, change)


def _glacier_run(entries: Sequence[ManifestEntry], start: int) -> list[ManifestEntry]:
    """The glacier chunks from ``start`` on, up to the first readable one: the
    whole range a read cannot pass, named in one error."""
    run: list[ManifestEntry] = []
    for entry in entries[start:]:
        if entry.tier is not Tier.GLACIER:
            break
        run.append(entry)
    return run


def _weeks_around(message_id: str) -> list[str]:
    """ISO weeks a UUIDv7 id's creation time may have been filed under (the id
    and created_at are taken a moment apart)."""
    try:
        ms = int(message_id.replace("-", "")[:12], 16)
        at = datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        # Not a UUIDv7 of this era (a client's made-up id): filed nowhere.
        return []
    return sorted({iso_week(at + timedelta(hours=h)) for h in (-1, 0, 1)})


class TieredMessageStore(MessageStore):
    def __init__(
        self, db: Database, ledger: ArchiveLedger, hot: HotLog, objects: ArchiveObjects
    ) -> None:
        super().__init__(db)
        self._ledger = ledger
        self._hot = hot
        self._objects = objects
        # Keyed by (object key, row group): keys name the bytes' SHA-256, so
        # an entry never goes stale; a rewrite's chunk has a new key.
        self._decoded: OrderedDict[tuple[str, int], tuple[dict[str, Any], ...]] = OrderedDict()

    # -- cold rows ---------------------------------------------------------------

    async def chunk_docs(
        self, entry: ManifestEntry, *, restored: bool = False
    ) -> list[dict[str, Any]]:
        """The chunk's documents as archived (no overlay). A chunk in the
        glacier tier is FAILED_PRECONDITION HISTORY_ARCHIVED unless
        ``restored`` (the caller restored its object first)."""
        if entry.tier is Tier.GLACIER and not restored:
            raise history_archived(entry)
        try:
            data = await self._read(entry)
        except MissingObject:
            # A rewrite moved the chunk after this read found it: where it is now.
            moved = await self._ledger.entry(entry.chunk_id)
            if moved is None or moved.object_key == entry.object_key:
                raise
            if moved.tier is Tier.GLACIER and not restored:
                raise history_archived(moved) from None
            entry = moved
            data = await self._read(entry)
        return read_row_group(data, entry.row_group)

    async def _read(self, entry: ManifestEntry) -> bytes:
        try:
            return await self._objects.get(entry.object_key, sha256=entry.sha256)
        except ArchivedObject:
            # The store moved it (a lifecycle rule) before the archiver saw it.
            await self._ledger.set_tier(entry.object_key, Tier.GLACIER)
            raise history_archived(entry) from None

    async def _page_docs(self, entry: ManifestEntry) -> list[dict[str, Any]]:
        """The chunk's documents as archived, for a page: decoded once per
        process, handed out as shallow copies (an overlay replaces a
        document's fields, it never changes a value in place)."""
        key = (entry.object_key, entry.row_group)
        decoded = self._decoded.get(key)
        if decoded is None:
            self._decoded[key] = decoded = tuple(await self.chunk_docs(entry))
            while len(self._decoded) > _DECODED_CHUNKS:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(key)
        return [dict(doc) for doc in decoded]

    async def current_docs(
        self, entry: ManifestEntry, *, restored: bool = False, for_page: bool = False
    ) -> list[dict[str, Any]]:
        """The chunk's documents with the changes still in the log applied
        (``for_page``: from the decoded chunks, for reads that only look)."""
        if for_page and not restored:
            docs = await self._page_docs(entry)
        else:
            docs = await self.chunk_docs(entry, restored=restored)
        if entry.seq_hi:
            overlaid(
                docs, await self._hot.overlays(entry.conversation_id, entry.seq_lo, entry.seq_hi)
            )
        return docs

    async def _cold_items(
        self,
        conversation_id: str,
        lo: int,
        hi: int,
        *,
        forward: bool,
        limit: int,
        hidden_for: str,
    ) -> list[Message]:
        if lo > hi or limit <= 0:
            return []
        entries = await self._ledger.by_seq(conversation_id, lo, hi)
        if not forward:
            entries.reverse()
        found: list[Message] = []
        for i, entry in enumerate(entries):
            if entry.tier is Tier.GLACIER:
                raise history_archived(*_glacier_run(entries, i))
            docs = [
                d
                for d in await self.current_docs(entry, for_page=True)
                if _is_history(d) and lo <= int(d["seq"]) <= hi
            ]
            docs.sort(key=lambda d: int(d["seq"]), reverse=not forward)
            for doc in docs:
                if hidden_for and hidden_for in (doc.get("hidden_for") or ()):
                    continue
                found.append(message_from_doc(doc))
                if len(found) >= limit:
                    return found
        return found

    # -- reads across the tiers ------------------------------------------------------

    async def page(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        forward: bool,
        limit: int,
        hidden_for: str = "",
        floor_seq: int = 0,
        ceiling_seq: int = 0,
    ) -> list[Message]:
        hot = await self._hot_page(
            conversation_id,
            start_seq=start_seq,
            forward=forward,
            limit=limit,
            hidden_for=hidden_for,
            floor_seq=floor_seq,
            ceiling_seq=ceiling_seq,
        )
        if hot is not None:
            return hot
        items: list[Message] = []
        for _ in range(_HEAD_RETRIES):
            head = await self._ledger.head(conversation_id)
            items = await self._page(
                head,
                conversation_id,
                start_seq=start_seq,
                forward=forward,
                limit=limit,
                hidden_for=hidden_for,
                floor_seq=floor_seq,
                ceiling_seq=ceiling_seq,
            )
            if await self._ledger.head(conversation_id) == head:
                break
        return items

    async def _hot_page(
        self,
        conversation_id: str,
        *,
        start_seq: int,
        forward: bool,
        limit: int,
        hidden_for: str,
        floor_seq: int,
        ceiling_seq: int,
    ) -> list[Message] | None:
        """The page from one read of the log when the log alone holds all of
        it, else None (the caller then reads across the tiers).

        No cold head is read: the archiver deletes an entry from the log only
        after the head is past it, and the log's copy of a history item is
        its current state, so the rows the log still has are right whatever
        the head. The page is whole when its window's seqs are all there (seq
        is gapless), or, forward, when they run from the first seq and stop
        early: the log holds a suffix of the seqs, so nothing is newer."""
        if forward:
            lo = max(start_seq, floor_seq, 1)
            hi = lo + limit - 1
            if ceiling_seq:
                hi = min(hi, ceiling_seq)
        else:
            if start_seq >= NEWEST:
                # Where the newest is needs a read of its own: the tiered path's.
                return None
            hi = min(start_seq, ceiling_seq) if ceiling_seq else start_seq
            lo = max(hi - limit + 1, floor_seq, 1)
        if lo > hi:
            return None
        docs = await self._seq_range(conversation_id, lo, hi, forward=forward)
        seqs = [int(d["seq"]) for d in docs]
        wanted = range(lo, hi + 1) if forward else range(hi, lo - 1, -1)
        whole = len(seqs) == len(wanted) or (forward and 0 < len(seqs) < len(wanted))
        if not whole or seqs != list(wanted[: len(seqs)]):
            return None
        visible = [
            d for d in docs if not hidden_for or hidden_for not in (d.get("hidden_for") or ())
        ]
        if len(visible) < len(docs) and len(seqs) == len(wanted):
            # Rows hidden from the reader: the rest of the page lies further on.
            return None
        return [message_from_doc(d) for d in visible]

    async def _page(
        self,
        head: ColdHead,
        conversation_id: str,
        *,
        start_seq: int,
        forward: bool,
        limit: int,
        hidden_for: str,
        floor_seq: int,
        ceiling_seq: int,
    ) -> list[Message]:
        hot_floor = max(floor_seq, head.seq + 1)
        top = min(head.seq, ceiling_seq) if ceiling_seq else head.seq

        async def hot(start: int, wanted: int) -> list[Message]:
            return await super(TieredMessageStore, self).page(
                conversation_id,
                start_seq=start,
                forward=forward,
                limit=wanted,
                hidden_for=hidden_for,
                floor_seq=hot_floor,
                ceiling_seq=ceiling_seq,
            )

        if forward:
            items = await self._cold_items(
                conversation_id,
                max(start_seq, floor_seq, 1),
                top,
                forward=True,
                limit=limit,
                hidden_for=hidden_for,
            )
            if len(items) < limit:
                items += await hot(max(start_seq, hot_floor), limit - len(items))
            return items
        items = await hot(start_seq, limit) if start_seq > head.seq else []
        if len(items) < limit:
            items += await self._cold_items(
                conversation_id,
                max(floor_seq, 1),
                min(start_seq, top),
                forward=False,
                limit=limit - len(items),
                hidden_for=hidden_for,
            )
        return items

    async def changes(
        self, conversation_id: str, *, after_version: int, until_version: int | None, limit: int
    ) -> list[Change]:
        found: list[Change] = []
        for _ in range(_HEAD_RETRIES):
            head = await self._ledger.head(conversation_id)
            found = []
            if after_version < head.version:
                hi = head.version if until_version is None else min(until_version, head.version)
                docs: list[dict[str, Any]] = []
                entries = await self._ledger.by_version(conversation_id, after_version + 1, hi)
                for i, entry in enumerate(entries):
                    if entry.tier is Tier.GLACIER:
                        raise history_archived(*_glacier_run(entries, i))
                    docs += [
                        d
                        for d in await self.current_docs(entry)
                        if after_version < int(d["version"]) <= hi
                    ]
                    if len(docs) >= limit:
                        break
                docs.sort(key=lambda d: int(d["version"]))
                found = [change_from_doc(d) for d in docs[:limit]]
            if len(found) < limit and (until_version is None or until_version > head.version):
                found += await super().changes(
                    conversation_id,
                    after_version=max(after_version, head.version),
                    until_version=until_version,
                    limit=limit - len(found),
                )
            if await self._ledger.head(conversation_id) == head:
                break
        return found

    async def archived_retries(
        self, requests: Sequence[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        keys = {request_key(*request): request for request in requests}
        found = await self._ledger.archived_requests(sorted(keys))
        return {keys[key] for key in found}

    async def by_request(
        self, conversation_id: str, sender_id: str, request_id: str
    ) -> Change | None:
        found = await super().by_request(conversation_id, sender_id, request_id)
        if found is not None:
            return found
        versions = await self._ledger.archived_requests(
            [request_key(conversation_id, sender_id, request_id)]
        )
        if not versions:
            return None
        (version,) = versions.values()
        for entry in await self._ledger.by_version(conversation_id, version, version):
            for doc in await self.current_docs(entry):
                if int(doc["version"]) == version:
                    return change_from_doc(doc)
        return None

    async def _cold_by_id(self, message_id: str) -> Message | None:
        entries = await self._ledger.by_message_id(_weeks_around(message_id), message_id)
        # Chunks of other conversations share the week's id range: the
        # readable ones first, and a glacier chunk stops the lookup only when
        # the message may be in it.
        entries.sort(key=lambda e: e.tier is Tier.GLACIER)
        for entry in entries:
            for doc in await self.current_docs(entry):
                if doc["_id"] == message_id:
                    return message_from_doc(doc) if _is_history(doc) else None
        return None

    async def by_id(self, message_id: str) -> Message | None:
        found = await super().by_id(message_id)
        if found is not None:
            return found
        return await self._cold_by_id(message_id)

    async def many(self, message_ids: Sequence[str]) -> list[Message]:
        found = await super().many(message_ids)
        missing = set(message_ids) - {m.message_id for m in found}
        for message_id in sorted(missing):
            cold = await self._cold_by_id(message_id)
            if cold is not None:
                found.append(cold)
        return found

    async def hidden_seqs(
        self, conversation_id: str, account_id: str, lo: int, hi: int
    ) -> set[int]:
        hidden = await super().hidden_seqs(conversation_id, account_id, lo, hi)
        head = await self._ledger.head(conversation_id)
        if lo <= head.seq:
            for entry in await self._ledger.by_seq(conversation_id, lo, min(hi, head.seq)):
                hidden |= {
                    int(d["seq"])
                    for d in await self.current_docs(entry)
                    if _is_history(d)
                    and lo <= int(d["seq"]) <= hi
                    and account_id in (d.get("hidden_for") or ())
                }
        return hidden

    # -- whole ranges, glacier included (history exports) ------------------------------

    async def glacier_keys(self, conversation_id: str, lo: int, hi: int) -> list[str]:
        """Glacier objects holding some of the conversation's seqs [lo, hi]."""
        entries = await self._ledger.by_seq(conversation_id, lo, hi)
        return sorted({e.object_key for e in entries if e.tier is Tier.GLACIER})

    async def whole_range(
        self,
        conversation_id: str,
        lo: int,
        hi: int,
        *,
        unreadable: Callable[[list[str]], Awaitable[set[str]]],
    ) -> list[Message] | None:
        """The history items of seqs [lo, hi] in seq order, from every tier;
        None while ``unreadable`` reports glacier objects of the range still
        waiting for their restore."""
        items: list[Message] = []
        for _ in range(_HEAD_RETRIES):
            head = await self._ledger.head(conversation_id)
            docs: list[dict[str, Any]] = []
            top = min(hi, head.seq)
            if lo <= top:
                entries = await self._ledger.by_seq(conversation_id, lo, top)
                frozen = [e.object_key for e in entries if e.tier is Tier.GLACIER]
                if frozen and await unreadable(frozen):
                    return None
                for entry in entries:
                    docs += [
                        d
                        for d in await self.current_docs(entry, restored=True)
                        if _is_history(d) and lo <= int(d["seq"]) <= top
                    ]
            docs.sort(key=lambda d: int(d["seq"]))
            items = [message_from_doc(d) for d in docs]
            start = max(lo, head.seq + 1)
            if start <= hi:
                items += await super().page(
                    conversation_id,
                    start_seq=start,
                    forward=True,
                    limit=hi - start + 1,
                    floor_seq=start,
                    ceiling_seq=hi,
                )
            if await self._ledger.head(conversation_id) == head:
                break
        return items

    # -- media named by archived messages -----------------------------------------------

    async def _cold_media_docs(
        self, media_ids: Sequence[str]
    ) -> tuple[list[Document], list[ManifestEntry]]:
        """Archived messages naming ``media_ids``, and the glacier chunks that
        name some (unread: their rows need a restore)."""
        asked = set(media_ids)
        docs: list[Document] = []
        frozen: list[ManifestEntry] = []
        for entry in await self._ledger.with_media(list(asked)):
            if entry.tier is Tier.GLACIER:
                frozen.append(entry)
                continue
            docs += [
                d
                for d in await self.current_docs(entry)
                if _is_history(d) and asked & set(d.get("media") or ())
            ]
        return docs, frozen

    async def media_references(
        self, media_ids: Sequence[str], *, limit: int, batch: int = 500
    ) -> AsyncGenerator[list[MediaReference]]:
        seen = 0
        async for found in super().media_references(media_ids, limit=limit, batch=batch):
            seen += len(found)
            yield found
        if seen >= limit:
            return
        asked = frozenset(media_ids)
        cold = [
            MediaReference(
                conversation_id=d["conversation_id"],
                seq=int(d.get("seq", 0)),
                media_ids=tuple(m for m in d.get("media") or () if m in asked),
                hidden_for=tuple(d.get("hidden_for") or ()),
            )
            for d in (await self._cold_media_docs(media_ids))[0]
        ][: limit - seen]
        for i in range(0, len(cold), batch):
            yield cold[i : i + batch]

    async def media_reference_counts(self, media_ids: Sequence[str]) -> dict[str, int]:
        counts = await super().media_reference_counts(media_ids)
        asked = set(media_ids)
        docs, frozen = await self._cold_media_docs(media_ids)
        for doc in docs:
            for media_id in set(doc.get("media") or ()) & asked:
                counts[media_id] = counts.get(media_id, 0) + 1
        # A glacier chunk's rows are not read: the manifest's media ids keep
        # what it names referenced (garbage collection must not take them).
        for entry in frozen:
            for media_id in set(entry.media_ids) & asked:
                counts[media_id] = counts.get(media_id, 0) + 1
        return counts
