"""SubscribePresence: live presence of up to 256 users, per viewer.

The hub of a process keeps, per watched account, its latest online state
(from the account's presence channel) and the sessions watching it; each
session keeps what its viewer may see of each target (the privacy verdict)
and what it last sent. A change of an account's state costs a dictionary
update and, per session watching it, one comparison: nothing is read, and
sessions whose viewer may not see the change send nothing. Changes are
coalesced per session (a set of dirty targets, at most 256), so a client
that reads slowly gets the latest state instead of a backlog.

Presence pushed by peer regions comes as ``r<0|1>:<seen>:<until>`` on the
same channel when the regions' combined view flips (storage/remote.py); a
session shows the account online when it is online here or there
(region_merge.combined). A digest renewing a remote entry publishes nothing,
so when the ``until`` the hub heard of passes, it reads the account's
entries again, and only if they ran out does the account go offline.

A ``s`` on a channel means that account's settings or contact list changed:
the verdicts of the sessions watching it (and of its own sessions, since
reciprocity depends on the viewer's settings too) are recomputed in the
background and whatever became visible or hidden is sent as a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import structlog

from parley_core.errors import ParleyError, ResourceExhausted
from svc_presence.domain import privacy
from svc_presence.domain.presence import both, presence_unavailable
from svc_presence.domain.region_merge import combined, parse_remote, remote_view
from svc_presence.domain.rules import RuleLoader
from svc_presence.model import (
    UNSEEN,
    LiveState,
    PresenceStats,
    PresenceStoreDown,
    PresenceView,
    RegionEntry,
    RemoteView,
    Rule,
)
from svc_presence.ports import Channels, LastSeenLog, LiveStates, RemoteStates

log = structlog.get_logger(__name__)

SETTINGS_CHANGED = b"s"
# Viewers whose verdicts on one target are recomputed per round of reads.
REFRESH_CHUNK = 500
# Pause before retrying recomputations that failed (MongoDB unreachable).
REFRESH_RETRY_SECONDS = 1.0
# Open subscriptions of one account on one process: a few per device is
# plenty, and one account must not take every slot of the process.
MAX_SESSIONS_PER_VIEWER = 32
# The longest the remote expiry loop sleeps with nothing due (a new entry wakes it).
REMOTE_IDLE_SECONDS = 5.0


def parse_state(payload: bytes) -> LiveState | None:
    """A ``1:<ms>`` / ``0:<ms>`` payload as a state; None for anything else."""
    kind, sep, ms = payload.partition(b":")
    if not sep or kind not in (b"0", b"1"):
        return None
    try:
        return LiveState(online=kind == b"1", seen_ms=int(float(ms)))
    except ValueError:
        return None


class Session:
    """One SubscribePresence stream."""

    def __init__(self, viewer: str, targets: Sequence[str]) -> None:
        self.viewer = viewer
        self.targets = list(targets)
        self.rules: dict[str, Rule] = {}
        self.sent: dict[str, PresenceView] = {}
        self.dirty: set[str] = set()
        self.ready = False
        # Settings changed while the first verdicts were being computed.
        self.stale = False
        self.subscribed = False
        self.closed = False
        self.error: ParleyError | None = None
        self._wake = asyncio.Event()

    def fail(self, error: ParleyError) -> None:
        if self.error is None:
            self.error = error
        self._wake.set()

    def changed(self, target: str) -> None:
        if self.ready:
            self.dirty.add(target)
            self._wake.set()

    def set_rules(self, rules: dict[str, Rule]) -> None:
        for target, verdict in rules.items():
            if target in self.rules and self.rules[target] != verdict:
                self.rules[target] = verdict
                self.changed(target)

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()


class Hub:
    def __init__(
        self,
        channels: Channels,
        live: LiveStates,
        rules: RuleLoader,
        last_seen: LastSeenLog,
        stats: PresenceStats,
        *,
        max_sessions: int,
        max_per_viewer: int = MAX_SESSIONS_PER_VIEWER,
        refresh_retry_seconds: float = REFRESH_RETRY_SECONDS,
        remote: RemoteStates | None = None,
        has_peers: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._remote_store = remote
        self._has_peers = has_peers
        self._clock = clock
        self._remote: dict[str, RemoteView] = {}
        self._remote_wake = asyncio.Event()
        self._max_per_viewer = max_per_viewer
        self._channels = channels
        self._live = live
        self._rules = rules
        self._last_seen = last_seen
        self._stats = stats
        self._max_sessions = max_sessions
        self._refresh_retry = refresh_retry_seconds
        self._sessions: set[Session] = set()
        self._by_target: dict[str, set[Session]] = {}
        self._by_viewer: dict[str, set[Session]] = {}
        self._states: dict[str, LiveState] = {}
        self._refresh_targets: set[str] = set()
        self._refresh_sessions: set[Session] = set()
        self._refresh_wake = asyncio.Event()

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def watched_accounts(self) -> int:
        return len(self._by_target)

    def state(self, account_id: str) -> LiveState:
        local = self._states.get(account_id, UNSEEN)
        return combined(local, self._remote.get(account_id), now_ms=self._now_ms())

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- from the channels -------------------------------------------------------

    def on_message(self, account_id: str, payload: bytes) -> None:
        if payload == SETTINGS_CHANGED:
            self._settings_changed(account_id)
            return
        if payload.startswith(b"r"):
            self._remote_changed(account_id, parse_remote(payload))
            return
        state = parse_state(payload)
        watchers = self._by_target.get(account_id)
        if state is None or not watchers:
            return
        # In arrival order: Redis publishes an account's transitions in the
        # order they happened, and one connection receives them in order.
        self._states[account_id] = state
        for session in watchers:
            session.changed(account_id)

    def _remote_changed(self, account_id: str, view: RemoteView | None) -> None:
        watchers = self._by_target.get(account_id)
        if view is None or not watchers:
            return
        self._remote[account_id] = view
        if view.online:
            self._remote_wake.set()
        for session in watchers:
            session.changed(account_id)

    def on_disconnect(self) -> None:
        """The channels lost Redis: changes may have been missed meanwhile."""
        self.fail_all(presence_unavailable())

    def fail_all(self, error: ParleyError) -> None:
        for session in list(self._sessions):
            session.fail(error)
            self.close(session)

    def _settings_changed(self, account_id: str) -> None:
        for session in self._by_viewer.get(account_id, ()):
            if session.ready:
                self._refresh_sessions.add(session)
            else:
                session.stale = True
        watchers = self._by_target.get(account_id, ())
        for session in watchers:
            if not session.ready:
                session.stale = True
        if watchers:
            self._refresh_targets.add(account_id)
        if self._refresh_targets or self._refresh_sessions:
            self._refresh_wake.set()

    # -- sessions ----------------------------------------------------------------

    async def open(self, viewer: str, targets: Sequence[str]) -> tuple[Session, list[PresenceView]]:
        """Start watching; the session and its snapshot (every target, in order)."""
        if len(self._sessions) >= self._max_sessions:
            raise ResourceExhausted(
                f"this server holds its maximum of {self._max_sessions} presence "
                "subscriptions; retry shortly",
                retry_after_seconds=5.0,
                # Caps on open streams, not token buckets; named like them so
                # clients and dashboards tell them apart.
                metadata={"limit": "presence_subscriptions_per_process"},
            )
        if len(self._by_viewer.get(viewer, ())) >= self._max_per_viewer:
            raise ResourceExhausted(
                f"an account may hold at most {self._max_per_viewer} presence subscriptions "
                "at once; close one first",
                retry_after_seconds=5.0,
                metadata={"limit": "presence_subscriptions_per_account"},
            )
        session = Session(viewer, privacy.dedup(targets))
        self._add(session)
        try:
            return session, await self._start(session)
        except BaseException:
            self.close(session)
            raise

    async def _start(self, session: Session) -> list[PresenceView]:
        targets = session.targets
        try:
            # Subscribed first: a change after the read below is heard.
            await self._channels.subscribe(privacy.dedup([*targets, session.viewer]))
            session.subscribed = True
            (states, remote), rules = await both(
                both(self._live.states(targets), self._remote_entries(targets)),
                self._rules.for_viewer(session.viewer, targets),
            )
        except PresenceStoreDown:
            raise presence_unavailable() from None
        now_ms = self._now_ms()
        for target, entries in remote.items():
            read_view = remote_view(entries, now_ms=now_ms)
            held_view = self._remote.get(target)
            if held_view is None or read_view.until_ms >= held_view.until_ms:
                self._remote[target] = read_view
                if read_view.online:
                    self._remote_wake.set()
        forgotten = [t for t in targets if states[t].seen_ms is None and t not in self._states]
        stored = await self._last_seen.get_many(forgotten) if forgotten else {}
        if session.error is not None:
            raise session.error
        for target in targets:
            read = states[target]
            if target in stored:
                read = LiveState(online=read.online, seen_ms=stored[target])
            held = self._states.get(target)
            if held is None or read.order() > held.order():
                self._states[target] = read
        session.rules = rules
        snapshot = [privacy.view(t, rules[t], self.state(t)) for t in targets]
        session.sent = {view.account_id: view for view in snapshot}
        session.ready = True
        if session.stale:
            self._refresh_sessions.add(session)
            self._refresh_wake.set()
        self._stats.events_pushed += 1
        return snapshot

    async def changes(self, session: Session) -> AsyncGenerator[list[PresenceView], None]:
        """What the viewer may see change, batch by batch, until the session fails."""
        while True:
            await session.wait()
            if session.error is not None:
                raise session.error
            batch = []
            for target in session.dirty:
                view = privacy.view(target, session.rules[target], self.state(target))
                if view != session.sent.get(target):
                    session.sent[target] = view
                    batch.append(view)
            session.dirty.clear()
            if batch:
                self._stats.events_pushed += 1
                yield batch

    def close(self, session: Session) -> None:
        """Stop watching; idempotent."""
        if session.closed:
            return
        session.closed = True
        self._sessions.discard(session)
        self._refresh_sessions.discard(session)
        for target in session.targets:
            watchers = self._by_target.get(target)
            if watchers is not None:
                watchers.discard(session)
                if not watchers:
                    del self._by_target[target]
                    self._states.pop(target, None)
                    self._remote.pop(target, None)
        mine = self._by_viewer.get(session.viewer)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self._by_viewer[session.viewer]
        if session.subscribed:
            self._channels.unsubscribe(privacy.dedup([*session.targets, session.viewer]))
        self._stats.subscriptions_open = len(self._sessions)

    def _add(self, session: Session) -> None:
        self._sessions.add(session)
        for target in session.targets:
            self._by_target.setdefault(target, set()).add(session)
        self._by_viewer.setdefault(session.viewer, set()).add(session)
        self._stats.subscriptions_open = len(self._sessions)

    # -- remote entries running out ---------------------------------------------

    async def _remote_entries(self, targets: Sequence[str]) -> dict[str, dict[str, RegionEntry]]:
        if self._remote_store is None or not self._has_peers():
            return {}
        return await self._remote_store.entries(targets)

    async def run_remote_expiry(self) -> None:
        """Until cancelled: when a watched account's remote online state
        reaches the expiry last heard, read its entries again (a digest may
        have renewed them) and tell its sessions if it went offline."""
        while True:
            now_ms = self._now_ms()
            due = [a for a, v in self._remote.items() if v.online and v.until_ms <= now_ms]
            if due:
                try:
                    found = await self._remote_entries(due)
                except PresenceStoreDown as exc:
                    log.warning("presence_remote_read_failed", error=str(exc))
                    await asyncio.sleep(self._refresh_retry)
                    continue
                now_ms = self._now_ms()
                for account_id in due:
                    if account_id not in self._remote:
                        continue  # no longer watched
                    before = self.state(account_id)
                    self._remote[account_id] = remote_view(found.get(account_id, {}), now_ms=now_ms)
                    if self.state(account_id) != before:
                        for session in self._by_target.get(account_id, ()):
                            session.changed(account_id)
                continue
            upcoming = [v.until_ms for v in self._remote.values() if v.online]
            wait = (min(upcoming) - now_ms) / 1000 if upcoming else REMOTE_IDLE_SECONDS
            self._remote_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min(wait, REMOTE_IDLE_SECONDS))):
                    await self._remote_wake.wait()

    # -- recomputing verdicts ----------------------------------------------------

    async def run(self) -> None:
        """Recompute verdicts after settings changes, until cancelled."""
        while True:
            await self._refresh_wake.wait()
            self._refresh_wake.clear()
            sessions, self._refresh_sessions = self._refresh_sessions, set()
            targets, self._refresh_targets = self._refresh_targets, set()
            try:
                await self._refresh(sessions, targets)
            except Exception as exc:
                log.warning("presence_refresh_failed", error=repr(exc))
                self._refresh_sessions.update(s for s in sessions if not s.closed)
                self._refresh_targets.update(t for t in targets if t in self._by_target)
                await asyncio.sleep(self._refresh_retry)
                self._refresh_wake.set()

    async def _refresh(self, sessions: set[Session], targets: set[str]) -> None:
        for session in sessions:
            if not session.closed:
                session.set_rules(await self._rules.for_viewer(session.viewer, session.targets))
        for target in targets:
            watchers = [s for s in self._by_target.get(target, ()) if s.ready]
            viewers = privacy.dedup(s.viewer for s in watchers)
            for start in range(0, len(viewers), REFRESH_CHUNK):
                chunk = viewers[start : start + REFRESH_CHUNK]
                verdicts = await self._rules.for_target(target, chunk)
                for session in watchers:
                    if session.viewer in verdicts and not session.closed:
                        session.set_rules({target: verdicts[session.viewer]})


@dataclass(frozen=True, slots=True)
class Batch:
    views: list[PresenceView]
    snapshot: bool


async def stream(hub: Hub, session: Session, *, first: list[PresenceView]) -> AsyncIterator[Batch]:
    """The snapshot, then ``hub.changes``; always releases the session when it ends."""
    try:
        yield Batch(first, snapshot=True)
        async with contextlib.aclosing(hub.changes(session)) as changes:
            async for views in changes:
                yield Batch(views, snapshot=False)
    finally:
        hub.close(session)
