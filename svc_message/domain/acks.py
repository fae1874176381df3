"""Stream acks, coalesced into few writes (see ``AckBatcher``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from svc_message.domain.ports import EventCodec, Publisher
from svc_message.model import DIRECT, Watermarks
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.doorbell import topic

log = structlog.get_logger(__name__)


class AckBatcher:
    """Coalesces stream acks into few writes.

    Every online device acks every delivery. Raising watermarks with $max is
    idempotent, so only the highest ack per (conversation, account) is written,
    once per ``flush_seconds``, and its receipt goes out then. Device positions
    only serve a device that resumes without saying where it is, so they are
    written every ``cursor_flush_seconds``: after a crash such a device gets a
    few messages again, and drops them by seq.
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
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._codec = codec
        self._flush_seconds = flush_seconds
        self._cursor_flush_seconds = cursor_flush_seconds
        self._clock = clock
        self._members: dict[tuple[str, str], int] = {}
        self._types: dict[str, int] = {}
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
            self._members[key] = max(self._members.get(key, 0), delivered)
            self._types[conversation_id] = kind
        device_key = (device_id, conversation_id)
        self._devices[device_key] = max(self._devices.get(device_key, 0), position)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._every(self._flush_seconds, self.flush_watermarks))
            tasks.create_task(self._every(self._cursor_flush_seconds, self.flush_cursors))

    @staticmethod
    async def _every(seconds: float, flush: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await flush()

    async def flush(self) -> None:
        await asyncio.gather(self.flush_watermarks(), self.flush_cursors())

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
            await self._store.raise_device_cursors((d, c, seq) for (d, c), seq in devices.items())
        except Exception as exc:
            log.warning("cursor_flush_failed", error=str(exc))

    async def flush_watermarks(self) -> None:
        members, self._members = self._members, {}
        types, self._types = self._types, {}
        if not members:
            return
        now = datetime.fromtimestamp(self._clock(), UTC)
        try:
            await self._store.raise_watermarks(
                ((c, a, seq, 0) for (c, a), seq in members.items()), now=now
            )
            # Receipts carry the member's whole watermarks, read included:
            # one event per 1:1 receipt, one batch per group per flush.
            current = await self._store.watermarks_of(members)
            deliveries: list[tuple[tuple[str, ...], bytes]] = []
            batches: dict[str, list[Watermarks]] = {}
            for watermarks in current:
                conversation_id = watermarks.conversation_id
                if types.get(conversation_id, DIRECT) == DIRECT:
                    envelope = self._codec.receipt(watermarks)
                    deliveries.append(((topic(conversation_id),), self._codec.encode(envelope)))
                else:
                    batches.setdefault(conversation_id, []).append(watermarks)
            for conversation_id, batch in batches.items():
                envelope = self._codec.receipts(conversation_id, batch)
                deliveries.append(((topic(conversation_id),), self._codec.encode(envelope)))
        except Exception as exc:
            # Acks are hints: the device acks again on its next delivery or resume.
            log.warning("ack_flush_failed", error=str(exc))
            return
        await self._publisher.publish(deliveries)
