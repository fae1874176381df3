"""What the domain needs from storage, as protocols (fakes in unit tests).

Below the domain, beside the model, so the storage adapters may import them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from svc_presence.model import (
    Contact,
    ExportEntry,
    LiveState,
    PresenceSettings,
    RegionEntry,
    SeenRecord,
)


class LiveStates(Protocol):
    """Online state in Redis; every method raises PresenceStoreDown when it is unreachable."""

    @property
    def ttl_ms(self) -> int: ...

    async def touch_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> Any: ...

    async def drop_heartbeat(self, account_id: str, device_id: str, *, now_ms: int) -> None: ...

    async def states(self, account_ids: Sequence[str]) -> dict[str, LiveState]: ...

    async def settings_changed(self, account_id: str) -> bool: ...


class Sweepable(Protocol):
    async def sweep(self, *, now_ms: int, limit: int) -> Any: ...

    async def drain_seen(self, *, now_ms: int, limit: int) -> list[SeenRecord]: ...


class Channels(Protocol):
    """Per-account presence channels of this process (reference counted)."""

    @property
    def connected(self) -> bool: ...

    async def subscribe(self, account_ids: Iterable[str]) -> None: ...

    def unsubscribe(self, account_ids: Iterable[str]) -> None: ...


class SettingsReader(Protocol):
    async def get(self, account_id: str) -> PresenceSettings: ...

    async def get_many(self, account_ids: Sequence[str]) -> dict[str, PresenceSettings]: ...

    async def replace(
        self, account_id: str, settings: PresenceSettings, *, now: datetime
    ) -> PresenceSettings | None: ...


class ContactLists(Protocol):
    async def add(self, owner: str, contacts: Sequence[str], *, cap: int, now: datetime) -> int: ...

    async def remove(self, owner: str, contacts: Sequence[str]) -> int: ...

    async def page(
        self, owner: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[Contact]: ...

    async def listed(
        self, owners: Sequence[str], contacts: Sequence[str]
    ) -> set[tuple[str, str]]: ...


class LastSeenLog(Protocol):
    async def get_many(self, account_ids: Sequence[str]) -> dict[str, int]: ...

    async def write(self, records: Iterable[SeenRecord]) -> int: ...


class OfflineRecord(Protocol):
    account_id: str
    seen_ms: int


class RemoteStates(Protocol):
    """Entries peer regions pushed; raises PresenceStoreDown when Redis is unreachable."""

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, now_ms: int) -> int: ...

    async def entries(self, account_ids: Sequence[str]) -> dict[str, dict[str, RegionEntry]]: ...


class ExportFeed(Protocol):
    """This region's local presence, for the exporter (storage/export.py)."""

    @property
    def shards(self) -> int: ...

    async def hold_lease(self, holder: str, *, ttl_ms: int) -> bool: ...

    async def release_lease(self, holder: str) -> None: ...

    def changes(self) -> AsyncIterator[LocalChangeLike]: ...

    async def online_page(
        self, shard: int, *, now_ms: int, offset: int, limit: int
    ) -> list[tuple[str, int]]: ...


class LocalChangeLike(Protocol):
    @property
    def account_id(self) -> str: ...

    @property
    def online(self) -> bool: ...

    @property
    def seen_ms(self) -> int: ...


class PeerRegions(Protocol):
    """svc_presence of the peer regions; raises PeerUnreachable."""

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, digest: bool) -> int: ...
