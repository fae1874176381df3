"""History exports ("download my history"): the requests, and the worker
that makes them (docs/ARCHITECTURE.md, History export).

A request is a job in MongoDB. One worker per deployment (a lease, like the
archiver's) takes the oldest unfinished job through its states:

- QUEUED: plan it: per conversation, the seqs the account may read (its
  member window, up to the newest message when the plan is made) in parts of
  at most ``part_messages`` seqs; the glacier objects among them are asked for.
- RESTORING: until the store reports every glacier object readable.
- RUNNING: each part is read across every tier, kept to what the account
  may read (not deleted for everyone, not deleted for itself) and written as
  a part object; then the parts are joined into the export object.
- READY: a presigned GET until ``expire_at``; the requesting device is told
  on its stream. Then EXPIRED: the object is removed.

Each step is recorded before the next, and redoing one is harmless (a part
is written to the same key again), so a process killed anywhere resumes
where the job stands. Progress (parts and bytes) only rises, and reaches
its totals in the same write that makes the job READY: the joined object
counts as the last part, and bytes stay below the estimate until then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from parley_core.errors import FailedPrecondition, NotFound, Reason
from parley_core.ids import new_id
from svc_message.domain.conversations import ConversationsHandler, visible_window
from svc_message.domain.glacier import Glacier
from svc_message.model import Message
from svc_message.model.broadcast import Broadcast
from svc_message.model.history_export import (
    ACTIVE_STATES,
    EXPORT_FORMAT,
    ExportJob,
    ExportPart,
    ExportState,
)
from svc_message.ports import EventCodec, Publisher
from svc_message.storage.archive import CorruptObject, MissingObject
from svc_message.storage.history_export import ExportObjects, ExportStore
from svc_message.storage.tiered import TieredMessageStore

log = structlog.get_logger(__name__)

# Estimated export bytes per message (a record's JSON around its body).
BYTES_PER_ROW = 400
# Conversations an "all" export covers at most.
MAX_CONVERSATIONS = 100_000
# Jobs per pass the worker expires, notifies or cleans up.
BATCH = 100


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def eta_seconds(job: ExportJob, now: float) -> float | None:
    """Seconds left at the rate so far; None unless RUNNING with progress."""
    if job.state is not ExportState.RUNNING or job.running_at is None or job.bytes_done <= 0:
        return None
    elapsed = max(now - job.running_at.timestamp(), 0.001)
    rate = job.bytes_done / elapsed
    return max(job.bytes_total - job.bytes_done, 0) / rate


def record(message: Message) -> bytes:
    """One line of the export: the message as stored (the body is ciphertext)."""
    line = {
        "format": EXPORT_FORMAT,
        "conversation_id": message.conversation_id,
        "message_id": message.message_id,
        "seq": message.seq,
        "sender_account_id": message.sender_account_id,
        "sender_device_id": message.sender_device_id,
        "type": message.type,
        "system": message.system is not None,
        "create_time": message.created_at.astimezone(UTC).isoformat(),
        "edit_time": message.edited_at.astimezone(UTC).isoformat() if message.edited_at else None,
        "reply_to_message_id": message.reply_to_message_id,
        "forwarded": message.forwarded,
        "body": base64.b64encode(message.body).decode(),
        "media_ids": list(message.media_ids),
        "reactions": {emoji: list(accounts) for emoji, accounts in message.reactions},
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def readable(messages: Sequence[Message], account_id: str) -> list[Message]:
    """What the account may read of them: not deleted for everyone, not
    deleted for itself."""
    return [m for m in messages if not m.deleted and account_id not in m.hidden_for]


class HistoryExports:
    """The requests: start, look at, list and cancel one's own exports."""

    def __init__(
        self,
        store: ExportStore,
        objects: ExportObjects,
        conversations: ConversationsHandler,
        *,
        url_seconds: int,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._objects = objects
        self._conversations = conversations
        self._url_seconds = url_seconds
        self._wake = wake

    async def request(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        now: float,
    ) -> ExportJob:
        retried = await self._store.by_request(account_id, request_id)
        if retried is not None:
            return retried
        if conversation_id:
            await self._conversations.require_reader(conversation_id, account_id)
        running = await self._store.active(account_id, conversation_id)
        if running is not None:
            return running
        job = await self._store.create(
            ExportJob(
                export_id=new_id(),
                account_id=account_id,
                device_id=device_id,
                request_id=request_id,
                conversation_id=conversation_id,
                state=ExportState.QUEUED,
                created_at=_at(now),
                updated_at=_at(now),
            )
        )
        self._wake()
        return job

    async def get(self, *, account_id: str, export_id: str) -> ExportJob:
        job = await self._store.get(export_id)
        # Someone else's export is answered as if it did not exist.
        if job is None or job.account_id != account_id:
            raise NotFound("no such history export", reason=Reason.EXPORT_NOT_FOUND)
        return job

    def download_url(self, job: ExportJob, now: float) -> str:
        if job.state is not ExportState.READY or job.expire_at is None:
            return ""
        left = int(job.expire_at.timestamp() - now)
        if left <= 0:
            return ""
        return self._objects.presign_get(job.object_key, expires_in=min(left, self._url_seconds))

    async def page(self, *, account_id: str, offset: int, limit: int) -> list[ExportJob]:
        return await self._store.of_account(account_id, offset=offset, limit=limit)

    async def cancel(self, *, account_id: str, export_id: str, now: float) -> ExportJob:
        job = await self.get(account_id=account_id, export_id=export_id)
        if job.state is ExportState.CANCELLED:
            return job
        cancelled = await self._store.update(
            export_id,
            states=ACTIVE_STATES,
            fields={"state": ExportState.CANCELLED, "updated_at": _at(now)},
        )
        if cancelled is None:
            raise FailedPrecondition(
                "the export is over (ready, expired or failed); it can no longer be cancelled",
                reason=Reason.EXPORT_OVER,
            )
        self._wake()
        return cancelled


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    ttl_seconds: float
    poll_seconds: float
    lease_seconds: float
    messages_per_second: float = 0.0
    part_messages: int = 1000
    # Seconds one pass may spend writing parts before it looks at the rest.
    pass_seconds: float = 5.0


class ExportWorker:
    def __init__(
        self,
        store: ExportStore,
        objects: ExportObjects,
        messages: TieredMessageStore,
        conversations: ConversationsHandler,
        glacier: Glacier,
        publisher: Publisher,
        codec: EventCodec,
        policy: ExportPolicy,
        *,
        instance_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._objects = objects
        self._messages = messages
        self._conversations = conversations
        self._glacier = glacier
        self._publisher = publisher
        self._codec = codec
        self._policy = policy
        self._instance_id = instance_id
        self._clock = clock
        self._woken = asyncio.Event()
        # For the metrics: the queue as last sampled, and this process's own work.
        self.unfinished: dict[ExportState, int] | None = None
        self.ready_total = 0
        self.bytes_written = 0

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        while True:
            busy = False
            try:
                busy = await self.tick(self._clock())
            except Exception:
                # A store outage: the job stays where it is, the next pass retries.
                log.exception("history_export_pass_failed")
            if busy:
                continue
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._policy.poll_seconds)

    async def sample_forever(self, seconds: float) -> None:
        while True:
            try:
                self.unfinished = await self._store.unfinished()
            except Exception as exc:
                # The last value stays: a gauge that vanishes looks like an empty queue.
                log.warning("history_export_sample_failed", error=str(exc))
            await asyncio.sleep(seconds)

    async def release(self) -> None:
        await self._store.release_lease(self._instance_id)

    async def tick(self, now: float) -> bool:
        """One pass; whether a job has more to do at once."""
        if not await self._store.take_lease(
            self._instance_id, now=now, seconds=self._policy.lease_seconds
        ):
            return False
        await self._expire(now)
        await self._notify()
        await self._clean()
        job = await self._store.next_active()
        if job is None:
            return False
        try:
            if job.state is ExportState.QUEUED:
                return await self._plan(job, now)
            if job.state is ExportState.RESTORING:
                return await self._restore(job, now)
            return await self._write(job, now)
        except (CorruptObject, MissingObject) as exc:
            # Not a passing outage: rerunning would meet it again.
            log.error("history_export_failed", export_id=job.export_id, error=repr(exc))
            await self._store.update(
                job.export_id,
                states=ACTIVE_STATES,
                fields={
                    "state": ExportState.FAILED,
                    "failure": "an archived object of this history could not be read",
                    "updated_at": _at(now),
                },
            )
            return True

    # -- the states ------------------------------------------------------------------

    async def _plan(self, job: ExportJob, now: float) -> bool:
        ids = (
            [job.conversation_id]
            if job.conversation_id
            else await self._store.conversation_ids_of(job.account_id, limit=MAX_CONVERSATIONS)
        )
        memberships = await self._conversations.memberships(job.account_id, ids)
        fresh = {
            c.conversation_id: c
            for c in await self._conversations.fresh([m.conversation for m in memberships.values()])
        }
        parts: list[ExportPart] = []
        glacier: set[str] = set()
        for conversation_id in sorted(memberships):
            floor, ceiling = visible_window(memberships[conversation_id])
            last = fresh[conversation_id].last_seq
            lo, hi = max(floor, 1), min(ceiling, last) if ceiling else last
            if lo > hi:
                continue
            glacier |= set(await self._messages.glacier_keys(conversation_id, lo, hi))
            step = self._policy.part_messages
            for start in range(lo, hi + 1, step):
                end = min(start + step - 1, hi)
                parts.append(
                    ExportPart(len(parts), conversation_id, start, end, rows=end - start + 1)
                )
        await self._store.save_plan(job.export_id, parts)
        rows = sum(p.rows for p in parts)
        state = ExportState.RESTORING if glacier else ExportState.RUNNING
        planned = await self._store.update(
            job.export_id,
            states=[ExportState.QUEUED],
            fields={
                "state": state,
                # The joined object is the last part.
                "objects_total": len(parts) + 1,
                "bytes_total": max(rows * BYTES_PER_ROW, 1),
                "glacier_keys": sorted(glacier),
                "running_at": _at(now),
                "updated_at": _at(now),
            },
        )
        log.info(
            "history_export_planned",
            export_id=job.export_id,
            parts=len(parts),
            glacier=len(glacier),
        )
        return planned is not None

    async def _restore(self, job: ExportJob, now: float) -> bool:
        keys = job.glacier_keys
        if await self._glacier.unreadable(keys, now):
            return False
        done = await self._store.update(
            job.export_id,
            states=[ExportState.RESTORING],
            fields={"state": ExportState.RUNNING, "running_at": _at(now), "updated_at": _at(now)},
        )
        return done is not None

    async def _write(self, job: ExportJob, now: float) -> bool:
        started = self._clock()
        while True:
            found = await self._store.parts(job.export_id, start=job.next_part, limit=1)
            if not found:
                return await self._finish(job, self._clock())
            part = found[0]
            items = await self._messages.whole_range(
                part.conversation_id,
                part.seq_lo,
                part.seq_hi,
                unreadable=lambda keys: self._glacier.unreadable(keys, self._clock()),
            )
            if items is None:
                return False  # a restore again (a copy expired, or a new glacier object)
            data = b"".join(record(m) for m in readable(items, job.account_id))
            await self._objects.put(self._objects.part_key(job.export_id, part.index), data)
            self.bytes_written += len(data)
            moved = await self._store.update(
                job.export_id,
                states=[ExportState.RUNNING],
                next_part=part.index,
                fields={
                    "next_part": part.index + 1,
                    "objects_done": job.objects_done + 1,
                    # Below the estimate until READY.
                    "bytes_done": min(job.bytes_done + len(data), job.bytes_total - 1),
                    "message_count": job.message_count + data.count(b"\n"),
                    "updated_at": _at(self._clock()),
                },
            )
            if moved is None:
                return True  # cancelled meanwhile: cleaned up next pass
            job = moved
            if self._policy.messages_per_second > 0:
                await asyncio.sleep(data.count(b"\n") / self._policy.messages_per_second)
            if self._clock() - started > self._policy.pass_seconds:
                return True
            # Renewed per part, so a short lease never lapses mid-pass.
            if not await self._store.take_lease(
                self._instance_id, now=self._clock(), seconds=self._policy.lease_seconds
            ):
                return False

    async def _finish(self, job: ExportJob, now: float) -> bool:
        chunks: list[bytes] = []
        for index in range(job.next_part):
            chunks.append(await self._objects.get(self._objects.part_key(job.export_id, index)))
        data = b"".join(chunks)
        key = self._objects.export_key(job.export_id)
        await self._objects.put(key, data)
        self.bytes_written += len(data)
        ready = await self._store.update(
            job.export_id,
            states=[ExportState.RUNNING],
            next_part=job.next_part,
            fields={
                "state": ExportState.READY,
                "objects_done": job.objects_total,
                "bytes_done": len(data),
                "bytes_total": len(data),
                "object_key": key,
                "expire_at": _at(now + self._policy.ttl_seconds),
                "notified": False,
                "updated_at": _at(now),
            },
        )
        if ready is None:
            await self._objects.delete(key)
            return True
        self.ready_total += 1
        await self._clean()
        log.info(
            "history_export_ready",
            export_id=job.export_id,
            bytes=len(data),
            expire_at=ready.expire_at.isoformat() if ready.expire_at else None,
        )
        await self._notify()
        return True

    # -- after the end ---------------------------------------------------------------

    async def _notify(self) -> None:
        for job in await self._store.unnotified(limit=BATCH):
            if job.expire_at is None:
                continue
            envelope = self._codec.export_notice(job.device_id, job.export_id, job.expire_at)
            if not await self._publisher.publish(
                [Broadcast(self._codec.encode(envelope), accounts=(job.account_id,))]
            ):
                return  # the bus did not take it: next pass
            await self._store.update(
                job.export_id, states=[ExportState.READY], fields={"notified": True}
            )

    async def _expire(self, now: float) -> None:
        for job in await self._store.expired(_at(now), limit=BATCH):
            if job.object_key:
                await self._objects.delete(job.object_key)
            await self._store.update(
                job.export_id,
                states=[ExportState.READY],
                fields={"state": ExportState.EXPIRED, "updated_at": _at(now)},
            )

    async def _clean(self) -> None:
        """Parts and plans of finished jobs (READY ones keep their export)."""
        for job in await self._store.uncleaned(limit=BATCH):
            await self._objects.delete_parts(job.export_id)
            if job.state in (ExportState.CANCELLED, ExportState.FAILED):
                await self._objects.delete(self._objects.export_key(job.export_id))
            await self._store.drop_plan(job.export_id)
            await self._store.update(job.export_id, states=[job.state], fields={"cleaned": True})
