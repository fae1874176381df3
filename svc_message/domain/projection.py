"""The conversation projector: conversation metadata written behind the log.

A send is acknowledged once its message is durable and Redis knows the
conversation's newest seq (``RecentCache``); the conversation document
(inbox order, ``last_seq``, what each member sent) follows, coalesced: however
many batches touched a conversation meanwhile, one $max update per
conversation per flush. Flushes run back to back, so under load they coalesce
and when idle the lag is one database write.

Crash safety does not rest on Redis: after each flush the projector records
``flushed_through`` and a heartbeat in MongoDB. A process whose heartbeat goes
stale is presumed dead, and any live one replays the conversation heads of
messages committed since its ``flushed_through`` (minus a margin for messages
that were committed before being handed over).

Push notifications ride on the same guarantee. The send pipeline hands each
acked batch's changes over here too (``hand_over``), and a flush passes the
new messages to the push planner before it records ``flushed_through``; the
replay of a dead process passes its pages to the planner as well. A process
killed between a send's ack and the enqueue of its notification is therefore
repaired by the replay, which tells the planner to leave out what jobs
already hold. A failed planning keeps its messages for the next flush (and
holds ``flushed_through`` back), up to ``PUSH_PLAN_ATTEMPTS`` in a row: a
batch that can never be planned must not stop the projector for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from parley_core.ids import random_id
from svc_message.model import Change, ChangeKind, Message, SystemAction
from svc_message.model.conversations import Commit
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore
from svc_message.storage.projection import ProjectorStore, first_id_at

log = structlog.get_logger(__name__)

# A message's id is minted before its insert; it reaches the projector after.
REPLAY_MARGIN = timedelta(seconds=60)
REPLAY_PAGE = 5000
# Consecutive failed plannings of the same push batch before it is given up.
PUSH_PLAN_ATTEMPTS = 50
# Failed replays of one dead process before its pages are replayed without
# push planning.
REPLAY_PUSH_ATTEMPTS = 5


class PushPlanning(Protocol):
    async def plan(self, changes: Sequence[Change], *, dedupe: bool = False) -> int: ...


def merge(into: dict[str, Commit], commits: Iterable[Commit]) -> None:
    """Fold commits per conversation: the newest item and version win,
    senders' seqs max."""
    for commit in commits:
        current = into.get(commit.conversation_id)
        if current is None:
            into[commit.conversation_id] = Commit(
                commit.conversation_id, commit.newest, dict(commit.sent), commit.last_version
            )
            continue
        newest = current.newest
        if commit.newest is not None and (newest is None or commit.newest.seq > newest.seq):
            newest = commit.newest
        merged = Commit(
            current.conversation_id,
            newest,
            current.sent,
            max(current.last_version, commit.last_version),
        )
        for account_id, seq in commit.sent.items():
            merged.sent[account_id] = max(merged.sent.get(account_id, 0), seq)
        into[commit.conversation_id] = merged


def read_by_sender(message: Message) -> bool:
    """Whether the item counts as read by its sender up to it. A new identity
    key is written in the account's name by the server, not by someone who
    read the conversation: counting it would mark unread messages read and
    send peers read receipts nobody earned."""
    system = message.system
    return system is None or system.action != SystemAction.IDENTITY_CHANGED


def commits_of(changes: Iterable[Change]) -> list[Commit]:
    merged: dict[str, Commit] = {}
    for change in changes:
        message = change.message
        if message is not None:
            commit = Commit(
                change.conversation_id,
                message.summary(),
                {message.sender_account_id: message.seq} if read_by_sender(message) else {},
                change.version,
            )
        else:
            commit = Commit(change.conversation_id, None, {}, change.version)
        merge(merged, [commit])
    return list(merged.values())


class Projector:
    def __init__(
        self,
        conversations: ConversationStore,
        messages: MessageStore,
        state: ProjectorStore,
        *,
        heartbeat_seconds: float,
        interval_seconds: float,
        clock: Callable[[], float],
        push: PushPlanning | None = None,
    ) -> None:
        self._conversations = conversations
        self._messages = messages
        self._state = state
        self._heartbeat = heartbeat_seconds
        self._interval = interval_seconds
        self._clock = clock
        self.instance_id = random_id()
        self._pending: dict[str, Commit] = {}
        self._push = push
        # Committed messages waiting for the push planner.
        self._pushes: list[Change] = []
        self._push_failures = 0
        self._replay_push_failures: dict[str, int] = {}
        self.pushes_abandoned = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.flushes = 0
        self._last_beat = 0.0

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def lag(self) -> int:
        """Conversations waiting to be written."""
        return len(self._pending)

    @property
    def push_lag(self) -> int:
        """Messages waiting for the push planner."""
        return len(self._pushes)

    def hand_over(self, changes: Iterable[Change]) -> None:
        """Committed changes, before their ack: new messages are planned for
        push on the next flush (see the module doc)."""
        if self._push is None:
            return
        pushes = [c for c in changes if c.kind == ChangeKind.MESSAGE]
        if pushes:
            self._pushes.extend(pushes)
            self._idle.clear()
            self._wake.set()

    def submit(self, commits: Iterable[Commit]) -> None:
        merge(self._pending, commits)
        if self._pending:
            self._idle.clear()
            self._wake.set()

    async def write_now(self, commits: Iterable[Commit]) -> None:
        """Write synchronously (when Redis cannot vouch for freshness)."""
        await self._conversations.record_commits(list(commits))

    async def start(self) -> None:
        await self._state.beat(self.instance_id, flushed_through=self._now(), now=self._now())

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._flush_forever())
            tasks.create_task(self._watch_forever())

    async def flush(self) -> bool:
        """Write what is pending; True when nothing is left."""
        if not self._pending and not self._pushes:
            self._idle.set()
            return True
        started = self._now()
        batch, self._pending = self._pending, {}
        pushes, self._pushes = self._pushes, []
        # Independent work: side by side, so a big planning (a large group
        # whose members have tokens) does not add to the metadata's lag.
        recorded, planned = await asyncio.gather(self._record(batch), self._plan_pushes(pushes))
        if not (recorded and planned):
            return False
        if not self._pending and not self._pushes:
            self._idle.set()
        # Everything submitted before `started` is written now. Recording that
        # at most twice per heartbeat keeps it one extra write per many flushes.
        if self._clock() - self._last_beat >= self._heartbeat / 2:
            try:
                await self._state.beat(self.instance_id, flushed_through=started, now=self._now())
                self._last_beat = self._clock()
            except Exception as exc:
                log.warning("projection_heartbeat_failed", error=str(exc))
        return not self._pending and not self._pushes

    async def _record(self, batch: dict[str, Commit]) -> bool:
        """Write the batch; on failure keep it for the next flush."""
        if not batch:
            return True
        try:
            await self._conversations.record_commits(batch.values())
        except Exception as exc:
            merge(self._pending, batch.values())
            log.warning("projection_flush_failed", conversations=len(batch), error=str(exc))
            return False
        self.flushes += 1
        return True

    async def _plan_pushes(self, pushes: list[Change]) -> bool:
        """Plan the batch; on failure keep it (in front) for the next flush."""
        if not pushes or self._push is None:
            return True
        try:
            await self._push.plan(pushes, dedupe=self._push_failures > 0)
        except Exception as exc:
            self._push_failures += 1
            if self._push_failures < PUSH_PLAN_ATTEMPTS:
                self._pushes[:0] = pushes
                log.warning("push_planning_failed", messages=len(pushes), error=str(exc))
                return False
            self.pushes_abandoned += len(pushes)
            log.error("push_planning_abandoned", messages=len(pushes), error=str(exc))
        self._push_failures = 0
        return True

    async def drain(self) -> None:
        """Flush until nothing is pending (shutdown), then retire this instance."""
        for _ in range(20):
            if await self.flush():
                break
            await asyncio.sleep(0.1)
        try:
            await self._state.forget(self.instance_id)
        except Exception as exc:
            log.warning("projection_retire_failed", error=str(exc))

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._interval:
                await asyncio.sleep(self._interval)
            if not await self.flush():
                await asyncio.sleep(0.2)  # the database is struggling; retry soon
                self._wake.set()

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                if self._idle.is_set():
                    now = self._now()
                    await self._state.beat(self.instance_id, flushed_through=now, now=now)
                    self._last_beat = self._clock()
                await self.replay_dead()
            except Exception as exc:
                log.warning("projection_watch_failed", error=str(exc))

    async def replay_dead(self) -> int:
        """Project what dead processes committed but may not have projected."""
        stale = await self._state.stale(
            heartbeat_before=self._now() - timedelta(seconds=self._heartbeat * 3)
        )
        replayed = 0
        for record in stale:
            if record.instance_id == self.instance_id:
                continue
            first = first_id_at(record.flushed_through - REPLAY_MARGIN)
            while True:
                page = await self._messages.committed_since(first, limit=REPLAY_PAGE)
                # Changes to messages are applied before the ack; a process
                # that died in between left them unapplied. Applying is
                # idempotent, so the replay simply applies them again.
                await self._messages.apply(page)
                await self._conversations.record_commits(commits_of(page))
                await self._replay_pushes(record.instance_id, page)
                replayed += len(page)
                if len(page) < REPLAY_PAGE:
                    break
                first = page[-1].change_id
            await self._state.forget(record.instance_id)
            self._replay_push_failures.pop(record.instance_id, None)
            log.info("projection_replayed", instance=record.instance_id, messages=replayed)
        return replayed

    async def _replay_pushes(self, instance_id: str, page: list[Change]) -> None:
        """Plan a replayed page (leaving out what jobs hold). A failure fails
        the replay, which is tried again at the next watch, up to
        REPLAY_PUSH_ATTEMPTS times; then the process is replayed without it."""
        if self._push is None:
            return
        failures = self._replay_push_failures.get(instance_id, 0)
        if failures >= REPLAY_PUSH_ATTEMPTS:
            return
        try:
            await self._push.plan(page, dedupe=True)
        except Exception:
            self._replay_push_failures[instance_id] = failures + 1
            if failures + 1 >= REPLAY_PUSH_ATTEMPTS:
                self.pushes_abandoned += len(page)
                log.error("push_replay_abandoned", instance=instance_id)
            raise
