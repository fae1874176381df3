"""Sending: membership and reply checks, then group commit.

Concurrent sends are committed together: one ordered, durable (majority,
journaled) insert per batch, after which every caller in the batch is acked.
The database does ~6k documents/s in batches but ~1k single inserts/s, so this
is what makes durable sends fast; it holds the same way on a sharded cluster,
where a batch becomes one insert per shard.

Seqs come from a per-process cache of each conversation's next seq, checked by
the unique (conversation_id, seq) index: if another process took a seq, the
insert stops there, the cache is reloaded from the log and the rest retried.
Only one batch is in flight per process and batches are ordered, so what
commits is always a prefix and seqs stay gapless.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from parley_core.errors import Aborted, ParleyError, Unavailable
from parley_core.ids import new_id
from svc_message.domain.ports import EventCodec, Publisher
from svc_message.domain.projection import Projector, commits_of
from svc_message.model import Conversation, Message, Sent
from svc_message.storage.messages import Conflict, MessageStore
from svc_message.storage.recent import Heads, RecentCache

log = structlog.get_logger(__name__)

MAX_CONFLICT_ROUNDS = 8


@dataclass(eq=False, slots=True)
class Draft:
    conversation: Conversation
    sender_account_id: str
    sender_device_id: str
    type: int
    body: bytes
    reply_to_message_id: str
    request_id: str
    future: asyncio.Future[Sent] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _fail(drafts: Iterable[Draft], error: ParleyError) -> None:
    for draft in drafts:
        if not draft.future.done():
            draft.future.set_exception(error)


def _store_failed() -> Unavailable:
    return Unavailable(
        "could not store the message; retry with the same request_id", retry_after_seconds=0.5
    )


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
        seq_cache_size: int = 200_000,
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
        self._next_seq: OrderedDict[str, int] = OrderedDict()
        self._seq_cache_size = seq_cache_size
        self._outbox: asyncio.Queue[list[tuple[tuple[str, ...], bytes]]] = asyncio.Queue()
        self.batches = 0
        self.committed = 0

    async def send(self, draft: Draft) -> Sent:
        self._queue.append(draft)
        self._wake.set()
        # Shielded: a caller that gives up must not cancel a write that the
        # other callers of the batch are waiting for; its retry finds the message.
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
                        _fail(
                            batch,
                            Unavailable(
                                "could not store the message; retry with the same request_id"
                            ),
                        )

    async def _load_next_seqs(self, conversation_ids: set[str]) -> None:
        missing = [c for c in conversation_ids if c not in self._next_seq]
        if missing:
            maxima = await asyncio.gather(*(self._messages.max_seq(c) for c in missing))
            for conversation_id, highest in zip(missing, maxima, strict=True):
                self._next_seq[conversation_id] = highest + 1
        for conversation_id in conversation_ids:
            self._next_seq.move_to_end(conversation_id)
        while len(self._next_seq) > self._seq_cache_size:
            self._next_seq.popitem(last=False)

    def _forget(self, drafts: Iterable[Draft]) -> None:
        for draft in drafts:
            self._next_seq.pop(draft.conversation.conversation_id, None)

    async def _commit(self, batch: list[Draft]) -> None:
        # Millisecond precision, as the database stores it: the ack, the stream
        # and history then show the same timestamp.
        created_at = datetime.fromtimestamp(int(self._clock() * 1000) / 1000, UTC)
        committed: list[tuple[Draft, Message]] = []
        retried: list[Draft] = []
        pending = batch
        for _round in range(MAX_CONFLICT_ROUNDS):
            if not pending:
                break
            await self._load_next_seqs({d.conversation.conversation_id for d in pending})
            messages = []
            for draft in pending:
                conversation_id = draft.conversation.conversation_id
                seq = self._next_seq[conversation_id]
                self._next_seq[conversation_id] = seq + 1
                messages.append(
                    Message(
                        message_id=new_id(),
                        conversation_id=conversation_id,
                        seq=seq,
                        sender_account_id=draft.sender_account_id,
                        sender_device_id=draft.sender_device_id,
                        type=draft.type,
                        body=draft.body,
                        reply_to_message_id=draft.reply_to_message_id,
                        created_at=created_at,
                        request_id=draft.request_id,
                    )
                )
            try:
                outcome = await self._messages.insert_ordered(messages)
            except Exception as exc:
                # Some of the batch may be stored; the log is the truth again.
                self._forget(pending)
                log.warning("send_batch_failed", size=len(pending), error=str(exc))
                _fail(
                    pending,
                    Unavailable(
                        "could not store the message; retry with the same request_id",
                        retry_after_seconds=0.5,
                    ),
                )
                pending = []
                break
            done = outcome.inserted
            committed.extend(zip(pending[:done], messages[:done], strict=True))
            rest = pending[done:]
            self._forget(rest)
            if outcome.conflict is Conflict.DUPLICATE_REQUEST:
                retried.append(rest[0])
                rest = rest[1:]
            pending = rest
        _fail(pending, Aborted("too much contention on this conversation; retry"))
        self.batches += 1
        self.committed += len(committed)

        duplicates = await self._resolve_retries(retried)
        acked = [
            (draft, Sent(message, self._codec.message(message)))
            for draft, message in committed + duplicates
        ]
        commits = commits_of(sent.message for _, sent in acked)
        items: dict[str, list[tuple[int, bytes]]] = {}
        for _, sent in acked:
            items.setdefault(sent.message.conversation_id, []).append(
                (sent.message.seq, self._codec.history_entry(sent.envelope))
            )
        heads = {c.conversation_id: Heads(items[c.conversation_id], c.sent) for c in commits}
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
        self._outbox.put_nowait(
            [
                (draft.conversation.member_ids, self._codec.encode(sent.envelope))
                for draft, sent in acked
            ]
        )
        for draft, sent in acked:
            if not draft.future.done():
                draft.future.set_result(sent)

    async def _resolve_retries(self, retried: list[Draft]) -> list[tuple[Draft, Message]]:
        """A retried request_id gets the message its first attempt stored."""
        found: list[tuple[Draft, Message]] = []
        for draft in retried:
            original = await self._messages.by_request(
                draft.conversation.conversation_id, draft.sender_account_id, draft.request_id
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
