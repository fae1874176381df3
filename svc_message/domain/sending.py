"""Committing changes to conversation feeds: group commit.

Every change (a message, a system message, an edit, a delete, a reaction)
goes through here. Concurrent changes are committed together: one ordered, durable (majority,
journaled) insert per batch, after which every caller in the batch is acked.
The database does ~6k documents/s in batches but ~1k single inserts/s, so this
is what makes durable sends fast; it holds the same way on a sharded cluster,
where a batch becomes one insert per shard.

Versions (and, for history items, seqs) come from a per-process cache of each
conversation's next ones, checked by the unique (conversation_id, version)
index: if another process took a version, the insert stops there, the cache
is reloaded from the log and the rest retried. Only one batch is in flight
per process and batches are ordered, so what commits is always a prefix and
versions and seqs stay gapless. Seqs need no check of their own: they advance
with versions, so a fresh version implies a fresh seq. With several processes,
each conversation's changes are routed to its one owner (ownership.py), so
this check is the safety net rather than the common path.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog

from parley_core.errors import Aborted, ParleyError, Unavailable
from parley_core.ids import new_id
from svc_message.domain.projection import Projector, commits_of
from svc_message.model import (
    CHANNEL,
    DIRECT,
    GROUP,
    HISTORY_KINDS,
    Change,
    ChangeKind,
    Conversation,
    Envelope,
    Message,
)
from svc_message.model.broadcast import Broadcast
from svc_message.model.messages import Conflict, Heads
from svc_message.ports import EventCodec, Publisher
from svc_message.storage.messages import MessageStore
from svc_message.storage.recent import RecentCache

log = structlog.get_logger(__name__)

# Insert rounds of one batch that commit nothing (every position taken by
# another writer) before the rest is answered ABORTED. A round that commits
# something or finds a request already in the log is progress, however many.
MAX_STALLED_ROUNDS = 8


@dataclass(eq=False, slots=True)
class Draft:
    """A change waiting for its place in the feed. ``template`` is complete
    except for its version, id, time and (history items) seq."""

    conversation: Conversation
    template: Change
    # Extra doorbell targets: accounts that must hear of it even when not
    # (or no longer) listening to the conversation (added, removed).
    notify: tuple[str, ...] = ()
    # The sending call's span context, when it is traced: it travels with
    # the doorbell payload so delivery continues the trace.
    trace: bytes | None = None
    future: asyncio.Future[Committed] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def conversation_id(self) -> str:
        return self.conversation.conversation_id


def _first_attempts(batch: list[Draft]) -> tuple[list[Draft], list[Draft]]:
    """The batch split into the first draft of each request id and the later
    copies of one (a client's retries racing each other through the owner).
    Copies get what the first stored; inserted with it, each would cost a
    conflict round, and a burst of retries would run out of rounds."""
    seen: set[tuple[str, str, str]] = set()
    first: list[Draft] = []
    copies: list[Draft] = []
    for draft in batch:
        template = draft.template
        key = (draft.conversation_id, template.account_id, template.request_id)
        if template.request_id and key in seen:
            copies.append(draft)
        else:
            seen.add(key)
            first.append(draft)
    return first, copies


def _fail(drafts: Iterable[Draft], error: ParleyError) -> None:
    for draft in drafts:
        if not draft.future.done():
            draft.future.set_exception(error)


def _store_failed() -> Unavailable:
    return Unavailable(
        "could not store the message; retry with the same request_id", retry_after_seconds=0.5
    )


@dataclass(frozen=True, slots=True)
class Committed:
    """A stored change with its stream event. For history items ``message``
    is the new item; for other changes, the target message's state after it
    (None if the target is gone)."""

    change: Change
    envelope: Envelope
    message: Message | None
    duplicate: bool = False


class SendPipeline:
    def __init__(
        self,
        messages: MessageStore,
        projector: Projector,
        recent: RecentCache,
        publisher: Publisher,
        codec: EventCodec,
        *,
        batch_max: int,
        clock: Callable[[], float],
        position_cache_size: int = 200_000,
        trace_context: Callable[[], bytes | None] | None = None,
    ) -> None:
        self._messages = messages
        self._projector = projector
        self._recent = recent
        self._publisher = publisher
        self._codec = codec
        self._batch_max = batch_max
        self._clock = clock
        self._queue: deque[Draft] = deque()
        self._wake = asyncio.Event()
        # Per conversation, the next (version, seq) to hand out.
        self._next: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._cache_size = position_cache_size
        self._outbox: asyncio.Queue[list[Broadcast]] = asyncio.Queue()
        self.batches = 0
        self.committed = 0
        # Messages (not system messages or other changes) committed, by
        # conversation type.
        self.sent_by_type: dict[int, int] = {DIRECT: 0, GROUP: 0, CHANNEL: 0}
        # Only when tracing is on; otherwise a send costs nothing more.
        self._trace_context = trace_context

    async def submit(self, draft: Draft) -> Committed:
        if self._trace_context is not None:
            # Here, in the caller's task: the committer runs in its own.
            draft.trace = self._trace_context()
        self._queue.append(draft)
        self._wake.set()
        # Shielded: a caller that gives up must not cancel a write that the
        # other callers of the batch are waiting for; its retry finds the change.
        return await asyncio.shield(draft.future)

    async def run(self) -> None:
        """The committer: one batch at a time, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._publish_forever())
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch = [
                        self._queue.popleft() for _ in range(min(len(self._queue), self._batch_max))
                    ]
                    try:
                        await self._commit(batch)
                    except Exception:
                        log.exception("send_batch_crashed", size=len(batch))
                        _fail(batch, _store_failed())

    async def _load_positions(self, conversation_ids: set[str]) -> None:
        missing = [c for c in conversation_ids if c not in self._next]
        if missing:
            heads = await asyncio.gather(*(self._messages.heads(c) for c in missing))
            for conversation_id, (version, seq) in zip(missing, heads, strict=True):
                self._next[conversation_id] = (version + 1, seq + 1)
        for conversation_id in conversation_ids:
            self._next.move_to_end(conversation_id)
        while len(self._next) > self._cache_size:
            self._next.popitem(last=False)

    def forget_positions(self, stale: Callable[[str], bool]) -> None:
        """Drop the cached next positions of the conversations ``stale`` names
        (this process just became their owner: another may have written since),
        so they are read from the log again."""
        for conversation_id in [c for c in self._next if stale(c)]:
            del self._next[conversation_id]

    def _forget(self, drafts: Iterable[Draft]) -> None:
        for draft in drafts:
            self._next.pop(draft.conversation_id, None)

    def _place(self, draft: Draft, created_at: datetime) -> Change:
        version, seq = self._next[draft.conversation_id]
        template = draft.template
        change_id = new_id()
        message = template.message
        if template.kind in HISTORY_KINDS and message is not None:
            message = replace(
                message,
                message_id=change_id,
                seq=seq,
                version=version,
                state_version=version,
                created_at=created_at,
            )
            seq += 1
        self._next[draft.conversation_id] = (version + 1, seq)
        return replace(
            template, version=version, change_id=change_id, created_at=created_at, message=message
        )

    async def _commit(self, batch: list[Draft]) -> None:
        # Millisecond precision, as the database stores it: the ack, the stream
        # and history then show the same timestamp.
        created_at = datetime.fromtimestamp(int(self._clock() * 1000) / 1000, UTC)
        committed: list[tuple[Draft, Change]] = []
        pending, retried = _first_attempts(batch)
        try:
            pending, late = await self._archived_retries(pending)
        except Exception as exc:
            log.warning("archived_retries_failed", size=len(pending), error=str(exc))
            _fail(batch, _store_failed())
            return
        retried += late
        stalled = 0
        while pending and stalled < MAX_STALLED_ROUNDS:
            await self._load_positions({d.conversation_id for d in pending})
            changes = [self._place(draft, created_at) for draft in pending]
            try:
                outcome = await self._messages.insert_ordered(changes)
            except Exception as exc:
                # Some of the batch may be stored; the log is the truth again.
                self._forget(pending)
                log.warning("send_batch_failed", size=len(pending), error=str(exc))
                _fail(pending, _store_failed())
                pending = []
                break
            done = outcome.inserted
            committed.extend(zip(pending[:done], changes[:done], strict=True))
            rest = pending[done:]
            self._forget(rest)
            if outcome.conflict is Conflict.DUPLICATE_REQUEST:
                # A retry of a request the log holds (e.g. committed by an
                # owner that died before answering): its first attempt's change.
                retried.append(rest[0])
                rest = rest[1:]
            elif done == 0:
                stalled += 1
            pending = rest
        _fail(pending, Aborted("too much contention on this conversation; retry"))
        self.batches += 1
        self.committed += len(committed)
        sent = self.sent_by_type
        for draft, change in committed:
            if change.kind == ChangeKind.MESSAGE:
                kind = draft.conversation.type
                sent[kind] = sent.get(kind, 0) + 1

        duplicates = await self._resolve_retries(retried)
        everything = committed + duplicates
        try:
            # Applied to the target messages before the ack. A crash in
            # between is repaired by the client's retry (a duplicate applies
            # it again) or by the projector's replay of a dead process.
            await self._messages.apply(change for _, change in everything)
            targets = await self._targets(change for _, change in everything)
        except Exception as exc:
            log.warning("change_apply_failed", error=str(exc))
            _fail((draft for draft, _ in everything), _store_failed())
            return
        duplicate_drafts = {id(draft) for draft, _ in duplicates}
        acked = [
            (
                draft,
                Committed(
                    change,
                    self._codec.change(change),
                    change.message if change.message is not None else targets.get(change.target_id),
                    duplicate=id(draft) in duplicate_drafts,
                ),
            )
            for draft, change in everything
        ]
        await self._record(acked)
        self._outbox.put_nowait(
            [
                Broadcast(
                    self._codec.encode(result.envelope),
                    conversations=(draft.conversation_id,),
                    accounts=tuple(draft.notify),
                    trace=draft.trace or b"",
                )
                for draft, result in acked
            ]
        )
        for draft, result in acked:
            if not draft.future.done():
                draft.future.set_result(result)

    async def _targets(self, changes: Iterable[Change]) -> dict[str, Message]:
        ids = {c.target_id for c in changes if c.target_id}
        if not ids:
            return {}
        return {m.message_id: m for m in await self._messages.many(sorted(ids))}

    async def _record(self, acked: list[tuple[Draft, Committed]]) -> None:
        """Make readers see the batch: Redis first (before the ack), the
        conversation metadata behind it, or now if Redis cannot take it."""
        commits = commits_of(done.change for _, done in acked)
        # Push notifications are planned behind the ack, with the metadata; a
        # crash in between is repaired by the projector's replay. A retried
        # request was handed over by its first attempt.
        self._projector.hand_over(done.change for _, done in acked if not done.duplicate)
        items: dict[str, list[tuple[int, int, bytes]]] = {}
        updated: dict[str, list[tuple[int, int, bytes]]] = {}
        hides: dict[str, set[str]] = {}
        for _, done in acked:
            change = done.change
            if change.kind in HISTORY_KINDS and done.message is not None:
                items.setdefault(change.conversation_id, []).append(
                    (done.message.seq, done.message.state_version, self._history(done.message))
                )
            elif done.message is not None:
                message = done.message
                updated.setdefault(change.conversation_id, []).append(
                    (message.seq, message.state_version, self._history(message))
                )
                if change.only_for:
                    hides.setdefault(change.conversation_id, set()).add(change.only_for)
        heads = {
            c.conversation_id: Heads(
                items=items.get(c.conversation_id, []),
                sent=c.sent,
                last_version=c.last_version,
                updated=updated.get(c.conversation_id, []),
                hiders=frozenset(hides.get(c.conversation_id, ())),
            )
            for c in commits
        }
        # Before the ack, so a client that reads right after its send sees it,
        # and so Redis knows each conversation's newest seq while the projector
        # writes the conversation metadata behind. If Redis cannot take it, the
        # metadata is written now instead: one of the two is always current.
        if await self._recent.add(heads):
            self._projector.submit(commits)
        else:
            try:
                await self._projector.write_now(commits)
            except Exception as exc:
                log.warning("conversation_metadata_update_failed", error=str(exc))

    def _history(self, message: Message) -> bytes:
        return self._codec.history_entry(self._codec.message(message))

    async def _archived_retries(self, drafts: list[Draft]) -> tuple[list[Draft], list[Draft]]:
        """Drafts split into new ones and retries of entries already archived:
        the log's unique request index no longer holds those, so an insert
        would commit them twice. One lookup per batch."""
        keys = [
            (d.conversation_id, d.template.account_id, d.template.request_id)
            for d in drafts
            if d.template.request_id
        ]
        archived = await self._messages.archived_retries(keys) if keys else set()
        if not archived:
            return drafts, []
        new: list[Draft] = []
        late: list[Draft] = []
        for draft in drafts:
            key = (draft.conversation_id, draft.template.account_id, draft.template.request_id)
            (late if key in archived else new).append(draft)
        return new, late

    async def _resolve_retries(self, retried: list[Draft]) -> list[tuple[Draft, Change]]:
        """A retried request_id gets the change its first attempt stored."""
        found: list[tuple[Draft, Change]] = []
        for draft in retried:
            original = await self._messages.by_request(
                draft.conversation_id, draft.template.account_id, draft.template.request_id
            )
            if original is None:
                _fail(
                    [draft],
                    Aborted("a concurrent attempt with this request_id is in progress; retry"),
                )
            else:
                found.append((draft, original))
        return found

    async def _publish_forever(self) -> None:
        # One publisher keeps the doorbell in commit order per process.
        while True:
            deliveries = await self._outbox.get()
            while not self._outbox.empty():
                deliveries.extend(self._outbox.get_nowait())
            await self._publisher.publish(deliveries)
