"""Heartbeats, presence reads, privacy settings and contact lists.

Every method takes ``now`` (Unix seconds) so the policy is testable with any
clock. Online state lives in Redis; when Redis cannot be reached the calls
that need it fail at once with UNAVAILABLE, while settings and contacts
(MongoDB) keep working and only skip telling live subscriptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from parley_core.errors import Aborted, Reason, ResourceExhausted, Unavailable
from parley_core.limits import Limiter, LimitName, Take
from svc_presence.domain import privacy
from svc_presence.domain.region_merge import combined, remote_view
from svc_presence.domain.rules import RuleLoader
from svc_presence.model import (
    UNSEEN,
    Contact,
    ContactsBusy,
    LiveState,
    OverCap,
    PresenceSettings,
    PresenceStats,
    PresenceStoreDown,
    PresenceView,
    RegionEntry,
    Visibility,
)
from svc_presence.ports import (
    ContactLists,
    LastSeenLog,
    LiveStates,
    RemoteStates,
    SettingsReader,
)

log = structlog.get_logger(__name__)

A = TypeVar("A")
B = TypeVar("B")

PRESENCE_DOWN = (
    "presence is unavailable: its store (Redis) cannot be reached; messaging is not affected"
)
# Optimistic retries of a settings change racing another one of the same user.
SETTINGS_ATTEMPTS = 5


def presence_unavailable() -> Unavailable:
    return Unavailable(PRESENCE_DOWN, retry_after_seconds=1.0)


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two calls side by side; the first failure cancels the other."""
    a = asyncio.ensure_future(first)
    b = asyncio.ensure_future(second)
    try:
        done, _ = await asyncio.wait({a, b}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        return await a, await b
    finally:
        for task in (a, b):
            if not task.done():
                task.cancel()
        await asyncio.gather(a, b, return_exceptions=True)


class PresenceHandler:
    def __init__(
        self,
        live: LiveStates,
        settings: SettingsReader,
        contacts: ContactLists,
        last_seen: LastSeenLog,
        rules: RuleLoader,
        stats: PresenceStats,
        *,
        limits: Limiter,
        max_contacts: int,
        after_drop: Callable[[], None] = lambda: None,
        remote: RemoteStates | None = None,
        has_peers: Callable[[], bool] = lambda: False,
    ) -> None:
        self._remote = remote
        self._has_peers = has_peers
        self._limits = limits
        self._after_drop = after_drop
        self._live = live
        self._settings = settings
        self._contacts = contacts
        self._last_seen = last_seen
        self._rules = rules
        self._stats = stats
        self._max_contacts = max_contacts

    @property
    def ttl_seconds(self) -> float:
        return self._live.ttl_ms / 1000

    # -- online state ------------------------------------------------------------

    async def heartbeat(self, *, account_id: str, device_id: str, now: float) -> float:
        """Keep the device online for the TTL; returns the TTL in seconds."""
        try:
            touched = await self._live.touch_heartbeat(
                account_id, device_id, now_ms=int(now * 1000)
            )
        except PresenceStoreDown:
            raise presence_unavailable() from None
        self._stats.heartbeats += 1
        if touched.came_online:
            self._stats.came_online += 1
        return self.ttl_seconds

    async def go_offline(self, *, account_id: str, device_id: str, now: float) -> None:
        try:
            await self._live.drop_heartbeat(account_id, device_id, now_ms=int(now * 1000))
        except PresenceStoreDown:
            raise presence_unavailable() from None
        self._after_drop()

    async def get_presence(
        self, *, viewer: str, account_ids: Sequence[str], now: float
    ) -> list[PresenceView]:
        """The accounts' presence as ``viewer`` may see it, in order, each once:
        online here or in any peer region (whose entry is still good)."""
        targets = privacy.dedup(account_ids)
        try:
            # Redis first in line: when it is down the call fails at once.
            (local, remote), rules = await both(
                both(self._live.states(targets), self._remote_entries(targets)),
                self._rules.for_viewer(viewer, targets),
            )
        except PresenceStoreDown:
            raise presence_unavailable() from None
        now_ms = int(now * 1000)
        states = {
            t: combined(
                local.get(t, UNSEEN),
                remote_view(remote[t], now_ms=now_ms) if t in remote else None,
                now_ms=now_ms,
            )
            for t in targets
        }
        # Redis forgets (a restart, or months of silence); MongoDB does not.
        forgotten = [t for t in targets if rules[t].last_seen and states[t].seen_ms is None]
        stored = await self._last_seen.get_many(forgotten) if forgotten else {}
        views = []
        for target in targets:
            state = states.get(target, UNSEEN)
            if target in stored:
                state = LiveState(online=state.online, seen_ms=stored[target])
            views.append(privacy.view(target, rules[target], state))
        return views

    async def _remote_entries(self, targets: Sequence[str]) -> dict[str, dict[str, RegionEntry]]:
        if self._remote is None or not self._has_peers():
            return {}
        return await self._remote.entries(targets)

    # -- settings ----------------------------------------------------------------

    async def get_settings(self, *, account_id: str) -> PresenceSettings:
        return await self._settings.get(account_id)

    async def update_settings(
        self,
        *,
        account_id: str,
        online: Visibility | None,
        last_seen: Visibility | None,
        invisible: bool | None,
        now: float,
    ) -> PresenceSettings:
        for _ in range(SETTINGS_ATTEMPTS):
            current = await self._settings.get(account_id)
            merged = privacy.merge_settings(
                current, online=online, last_seen=last_seen, invisible=invisible
            )
            if (merged.online, merged.last_seen, merged.invisible) == (
                current.online,
                current.last_seen,
                current.invisible,
            ):
                return current
            stored = await self._settings.replace(account_id, merged, now=_at(now))
            if stored is not None:
                await self._changed(account_id)
                return stored
        raise Aborted("the presence settings were changed concurrently; retry")

    # -- contacts ----------------------------------------------------------------

    async def add_contacts(self, *, owner: str, account_ids: Sequence[str], now: float) -> int:
        await self._limits.take(Take(LimitName.CONTACT_ADD_PER_ACCOUNT, owner), now=now)
        try:
            added = await self._contacts.add(
                owner, privacy.dedup(account_ids), cap=self._max_contacts, now=_at(now)
            )
        except OverCap as over:
            raise ResourceExhausted(
                f"a contact list holds at most {self._max_contacts} accounts; it has "
                f"{over.current} and this call would add {over.adding} more",
                reason=Reason.TOO_MANY_CONTACTS,
            ) from None
        except ContactsBusy:
            raise Aborted("the contact list is being changed concurrently; retry") from None
        if added:
            await self._changed(owner)
        return added

    async def admit_subscription(self, *, viewer: str, now: float) -> None:
        """Spends a token of the viewer's subscription limit (before SubscribePresence
        opens anything), or raises ResourceExhausted."""
        await self._limits.take(Take(LimitName.PRESENCE_SUBSCRIBE_PER_ACCOUNT, viewer), now=now)

    async def remove_contacts(self, *, owner: str, account_ids: Sequence[str]) -> int:
        try:
            removed = await self._contacts.remove(owner, privacy.dedup(account_ids))
        except ContactsBusy:
            raise Aborted("the contact list is being changed concurrently; retry") from None
        if removed:
            await self._changed(owner)
        return removed

    async def list_contacts(
        self, *, owner: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Contact]:
        return await self._contacts.page(owner, after=after, limit=limit)

    async def _changed(self, account_id: str) -> None:
        """Make live subscriptions involving the account look again. Without
        Redis there are none (they ended with it), so a failure is only logged."""
        if not await self._live.settings_changed(account_id):
            log.info("presence_settings_publish_skipped", account=account_id)
