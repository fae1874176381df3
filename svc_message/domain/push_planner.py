"""Turns committed messages into outbox jobs, a batch at a time.

The projector hands every batch of committed messages here before it records
its progress, and again when it replays a dead process's log, so a crash
between a send's ack and its notification is repaired by the replay (see
``domain.projection``). Per batch, whatever its size and the groups' sizes:

- the conversations, from the membership cache (a read only on a miss);
- one query for the recipients' push tokens; nothing else happens (no other
  read, no write) when none of them has one, which is the common case in
  large groups;
- one Redis round trip for which of those devices hold a live stream;
- one query for the recipients' mutes of these conversations, one for their
  do-not-disturb windows;
- the pure policy (``push_policy``), then one bulk write of upserts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from parley_core.errors import ParleyError
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.push_policy import PushMessage, plan
from svc_message.model import CHANNEL, SYSTEM, Change, ChangeKind, Conversation
from svc_message.model.push import NewMessages
from svc_message.ports import StreamingDevices
from svc_message.storage.push import MuteLookup, PushOutbox, PushSettingsStore, PushTokenStore

log = structlog.get_logger(__name__)

# Redis is asked which devices stream; if it does not answer by then, every
# device counts as offline (a push too many beats a push missing).
STREAMING_TIMEOUT_SECONDS = 0.5


def wants_push(change: Change) -> bool:
    """A new message someone typed (the conversation's type is checked later)."""
    message = change.message
    return change.kind == ChangeKind.MESSAGE and message is not None and message.type != SYSTEM


async def live_devices(
    liveness: StreamingDevices, account_ids: Iterable[str], *, now: float
) -> dict[str, set[str]]:
    """Devices with a live delivery stream, per account; {} if Redis is out."""
    accounts = list(account_ids)
    if not accounts:
        return {}
    try:
        return await asyncio.wait_for(
            liveness.streaming_devices(accounts, now_ms=int(now * 1000)),
            timeout=STREAMING_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        log.warning("push_streaming_lookup_failed", error=str(exc) or type(exc).__name__)
        return {}


class PushPlanner:
    def __init__(
        self,
        conversations: ConversationsHandler,
        tokens: PushTokenStore,
        settings: PushSettingsStore,
        mutes: MuteLookup,
        outbox: PushOutbox,
        liveness: StreamingDevices,
        *,
        collapse_seconds: float,
        clock: Callable[[], float],
        on_enqueued: Callable[[float], None] | None = None,
    ) -> None:
        self._conversations = conversations
        self._tokens = tokens
        self._settings = settings
        self._mutes = mutes
        self._outbox = outbox
        self._liveness = liveness
        self._collapse = collapse_seconds
        self._clock = clock
        self._on_enqueued = on_enqueued
        self.planned = 0
        self.jobs_written = 0
        self.suppressed: Counter[str] = Counter()

    async def _conversations_of(self, ids: Iterable[str]) -> dict[str, Conversation]:
        wanted = list(dict.fromkeys(ids))

        async def one(conversation_id: str) -> Conversation | None:
            try:
                return await self._conversations.conversation(conversation_id)
            except ParleyError:
                return None  # deleted or unknown: nobody to tell

        found = await asyncio.gather(*(one(c) for c in wanted))
        return {c.conversation_id: c for c in found if c is not None}

    async def plan(self, changes: Sequence[Change], *, dedupe: bool = False) -> int:
        """Enqueue notifications for the messages among ``changes``; returns
        the jobs written. ``dedupe``: the batch may have been planned before
        (a replay, a retry), so leave out what a job already holds. Raises on
        a database failure: the caller keeps the batch and tries again."""
        wanted = [c for c in changes if wants_push(c)]
        if not wanted:
            return 0
        conversations = await self._conversations_of(c.conversation_id for c in wanted)
        messages: list[PushMessage] = []
        for change in wanted:
            conversation = conversations.get(change.conversation_id)
            message = change.message
            if conversation is None or message is None or conversation.type == CHANNEL:
                continue
            recipients = tuple(
                a
                for a in conversation.member_ids
                # Members who joined after it do not see it.
                if a != message.sender_account_id and conversation.joined_at(a)[0] <= message.seq
            )
            if recipients:
                messages.append(
                    PushMessage(
                        conversation_id=change.conversation_id,
                        seq=message.seq,
                        message_id=message.message_id,
                        sender_account_id=message.sender_account_id,
                        created_at=message.created_at,
                        recipients=recipients,
                    )
                )
        if not messages:
            return 0
        self.planned += len(messages)
        tokens = await self._tokens.of_accounts(a for m in messages for a in m.recipients)
        if not tokens:
            return 0
        devices: dict[str, list[str]] = {}
        for token in tokens:
            devices.setdefault(token.account_id, []).append(token.device_id)
        now = self._clock()
        streaming = await live_devices(self._liveness, devices, now=now)
        muted = await self._mutes.muted_until(
            (m.conversation_id, a) for m in messages for a in m.recipients if a in devices
        )
        quiet = await self._settings.quiet_hours(devices)
        decided = plan(
            messages,
            devices=devices,
            streaming=streaming,
            muted_until=muted,
            quiet=quiet,
            now=datetime.fromtimestamp(now, UTC),
            collapse_seconds=self._collapse,
        )
        self.suppressed.update(decided.suppressed)
        jobs = [
            NewMessages(j.account_id, j.device_id, j.keys, j.newest, j.due_at) for j in decided.jobs
        ]
        if dedupe and jobs:
            done = await self._outbox.handled(
                (j.device_id for j in jobs), (k for j in jobs for k in j.keys)
            )
            jobs = [
                replace(j, keys=tuple(k for k in j.keys if (j.device_id, k) not in done))
                for j in jobs
            ]
            jobs = [j for j in jobs if j.keys]
        written = await self._outbox.add(jobs, now=datetime.fromtimestamp(now, UTC))
        self.jobs_written += written
        if jobs and self._on_enqueued is not None:
            self._on_enqueued(min(j.due_at for j in jobs).timestamp())
        return written
