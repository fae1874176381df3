"""Stream acks, coalesced into few writes (see ``AckBatcher``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import structlog

from svc_message.model import DIRECT, Watermarks
from svc_message.model.broadcast import Broadcast
from svc_message.ports import EventCodec, Publisher
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.delivered import DeliveredMarks

log = structlog.get_logger(__name__)

# Watermark and cursor updates per database write: small enough that a send's
# insert does not wait long behind one.
WRITE_CHUNK = 32
# Default pace of those writes when they come due periodically (documents per
# second), so that a flush of a thousand devices' cursors or a big group's
# watermarks spreads over seconds instead of holding the database for them.
WRITE_RATE = 500.0

T = TypeVar("T")


class AckBatcher:
    """Coalesces stream acks into few writes.

    Every online device acks every delivery. Raising watermarks with $max is
    idempotent, so only the highest ack per (conversation, account) is written,
    once per ``flush_seconds``, and its receipt goes out then. In groups every
    message moves every member's delivered watermark, so their acks are
    coalesced longer (``group_flush_seconds``), raised in Redis
    (``DeliveredMarks``) and written to the database only every
    ``group_persist_seconds``. Device positions only serve a device that
    resumes without saying where it is, so they are written every
    ``cursor_flush_seconds``: after a crash such a device gets a few changes
    again, and drops them by version.

    Periodic writes go in chunks of ``chunk`` at most ``write_rate`` documents
    per second: the sends' inserts get through in between, and the next
    flush of a kind waits for the last (its pending marks coalesce
    meanwhile). ``flush`` (at shutdown) writes everything at once.
    """

    def __init__(
        self,
        store: ConversationStore,
        publisher: Publisher,
        codec: EventCodec,
        *,
        flush_seconds: float,
        cursor_flush_seconds: float,
        clock: Callable[[], float],
        group_flush_seconds: float | None = None,
        group_persist_seconds: float = 30.0,
        delivered: DeliveredMarks | None = None,
        chunk: int = WRITE_CHUNK,
        write_rate: float = WRITE_RATE,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._flush_seconds = flush_seconds
        self._cursor_flush_seconds = cursor_flush_seconds
        self._group_flush_seconds = group_flush_seconds or flush_seconds
        self._group_persist_seconds = group_persist_seconds
        self._delivered = delivered
        # Group delivered watermarks raised in Redis, not yet in the database.
        self._durable_pending: dict[tuple[str, str], int] = {}
        self._clock = clock
        self._chunk = chunk
        self._chunk_pause = chunk / write_rate
        # Off while flushing at shutdown, where the grace period is short.
        self._paced = True
        # Direct conversations, and groups, each by (conversation, account).
        self._members: dict[tuple[str, str], int] = {}
        self._group_members: dict[tuple[str, str], int] = {}
        self._devices: dict[tuple[str, str], int] = {}

    def ack(
        self,
        *,
        account_id: str,
        device_id: str,
        conversation_id: str,
        position: int,
        delivered: int,
        kind: int = DIRECT,
    ) -> None:
        """``position`` is the device's feed version, ``delivered`` the seq
        the account's delivered watermark may rise to (0: none)."""
        if delivered:
            key = (conversation_id, account_id)
            pending = self._members if kind == DIRECT else self._group_members
            pending[key] = max(pending.get(key, 0), delivered)
        device_key = (device_id, conversation_id)
        self._devices[device_key] = max(self._devices.get(device_key, 0), position)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._every(self._flush_seconds, self.flush_watermarks))
            tasks.create_task(self._every(self._group_flush_seconds, self.flush_group_watermarks))
            tasks.create_task(
                self._every(self._group_persist_seconds, self.persist_group_watermarks)
            )
            tasks.create_task(self._every(self._cursor_flush_seconds, self.flush_cursors))

    @staticmethod
    async def _every(seconds: float, flush: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await flush()

    async def flush(self) -> None:
        """Write everything pending now, unpaced (at shutdown)."""
        self._paced = False
        try:
            await asyncio.gather(self.flush_watermarks(), self.flush_cursors())
            await self.flush_group_watermarks()
            await self.persist_group_watermarks()
        finally:
            self._paced = True

    async def _in_chunks(
        self, items: Sequence[T], write: Callable[[Sequence[T]], Awaitable[None]]
    ) -> None:
        for i in range(0, len(items), self._chunk):
            if i and self._paced:
                await asyncio.sleep(self._chunk_pause)
            await write(items[i : i + self._chunk])

    async def flush_device(self, device_id: str) -> None:
        """Write one device's positions now: its stream ended, and it may come
        back at once without saying where it is."""
        mine = {key: seq for key, seq in self._devices.items() if key[0] == device_id}
        for key in mine:
            del self._devices[key]
        await self._write_cursors(mine)

    async def flush_cursors(self) -> None:
        devices, self._devices = self._devices, {}
        await self._write_cursors(devices)

    async def _write_cursors(self, devices: dict[tuple[str, str], int]) -> None:
        if not devices:
            return
        try:
            items = [(d, c, seq) for (d, c), seq in devices.items()]
            await self._in_chunks(items, self._store.raise_device_cursors)
        except Exception as exc:
            log.warning("cursor_flush_failed", error=str(exc))

    async def flush_watermarks(self) -> None:
        members, self._members = self._members, {}
        await self._flush(members, group=False)

    async def flush_group_watermarks(self) -> None:
        members, self._group_members = self._group_members, {}
        if not members:
            return
        by_conversation: dict[str, dict[str, int]] = {}
        for (conversation_id, account_id), seq in members.items():
            by_conversation.setdefault(conversation_id, {})[account_id] = seq
        risen = (
            None if self._delivered is None else await self._delivered.raise_many(by_conversation)
        )
        if risen is None:
            # Redis cannot hold them: straight to the database, as for 1:1.
            await self._flush(members, group=True)
            return
        deliveries: list[Broadcast] = []
        for conversation_id, marks in risen.items():
            for account_id, seq in marks.items():
                key = (conversation_id, account_id)
                self._durable_pending[key] = max(self._durable_pending.get(key, 0), seq)
            # Delivered only: read watermarks travel with MarkRead's receipts,
            # and each field only rises, so clients keep the max per field.
            envelope = self._codec.receipts(
                conversation_id,
                [Watermarks(conversation_id, a, delivered_seq=seq) for a, seq in marks.items()],
            )
            deliveries.append(
                Broadcast(self._codec.encode(envelope), conversations=(conversation_id,))
            )
        await self._publisher.publish(deliveries)

    async def persist_group_watermarks(self) -> None:
        """Write the group delivered watermarks Redis holds to the database."""
        pending, self._durable_pending = self._durable_pending, {}
        if not pending:
            return
        now = datetime.fromtimestamp(self._clock(), UTC)
        raises = [(c, a, seq, 0) for (c, a), seq in pending.items()]
        try:
            await self._in_chunks(raises, partial(self._store.raise_watermarks, now=now))
        except Exception as exc:
            for key, seq in pending.items():
                self._durable_pending[key] = max(self._durable_pending.get(key, 0), seq)
            log.warning("group_watermark_persist_failed", error=str(exc))

    async def _flush(self, members: dict[tuple[str, str], int], *, group: bool) -> None:
        if not members:
            return
        now = datetime.fromtimestamp(self._clock(), UTC)
        raises = [(c, a, seq, 0) for (c, a), seq in members.items()]
        try:
            await self._in_chunks(raises, partial(self._store.raise_watermarks, now=now))
            # Receipts carry the member's whole watermarks, read included:
            # one event per 1:1 receipt, one batch per group per flush.
            current = await self._store.watermarks_of(members)
        except Exception as exc:
            # Acks are hints: the device acks again on its next delivery or resume.
            log.warning("ack_flush_failed", error=str(exc))
            return
        deliveries: list[Broadcast] = []
        if not group:
            for watermarks in current:
                envelope = self._codec.receipt(watermarks)
                deliveries.append(
                    Broadcast(
                        self._codec.encode(envelope), conversations=(watermarks.conversation_id,)
                    )
                )
        else:
            batches: dict[str, list[Watermarks]] = {}
            for watermarks in current:
                batches.setdefault(watermarks.conversation_id, []).append(watermarks)
            for conversation_id, batch in batches.items():
                envelope = self._codec.receipts(conversation_id, batch)
                deliveries.append(
                    Broadcast(self._codec.encode(envelope), conversations=(conversation_id,))
                )
        await self._publisher.publish(deliveries)
