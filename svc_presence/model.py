"""Plain data shared by the layers of svc_presence."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Visibility(enum.IntEnum):
    """Who may see something about a user; the numbers of parley.presence.v1.Visibility."""

    EVERYONE = 1
    # Only accounts on the user's own contact list.
    CONTACTS = 2
    NOBODY = 3


class Availability(enum.IntEnum):
    """The numbers of parley.presence.v1.Availability."""

    # Not shared with the viewer, or no such account: the two look the same.
    UNKNOWN = 0
    ONLINE = 1
    OFFLINE = 2


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    online: Visibility
    last_seen: Visibility
    invisible: bool
    # None until the user first changed a setting (the defaults apply).
    updated_at: datetime | None = None
    # Optimistic concurrency: bumped by every stored change.
    version: int = 0


# What a user who never chose shows: their contacts may see them. Stricter
# than "everyone", so an account nobody added is indistinguishable from one
# that does not exist (see the privacy rules in the proto).
DEFAULT_SETTINGS = PresenceSettings(
    online=Visibility.CONTACTS, last_seen=Visibility.CONTACTS, invisible=False
)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one viewer may see of one target (the privacy policy's verdict)."""

    online: bool
    last_seen: bool


HIDDEN = Rule(online=False, last_seen=False)
EVERYTHING = Rule(online=True, last_seen=True)


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the presence store knows of an account, before privacy applies."""

    online: bool
    # Unix ms of the last activity; None when never seen (or forgotten).
    seen_ms: int | None

    def order(self) -> tuple[int, int]:
        """Where this state sits in the account's history: an offline state
        at the same instant as an online one came after it."""
        return (self.seen_ms or 0, 0 if self.online else 1)


UNSEEN = LiveState(online=False, seen_ms=None)


@dataclass(frozen=True, slots=True)
class RegionEntry:
    """One peer region's word on one account, as this region keeps it."""

    online: bool
    # Unix ms of the account's last activity there (the peer's clock).
    seen_ms: int
    # Unix ms (this region's clock) after which the entry no longer counts.
    expires_ms: int


@dataclass(frozen=True, slots=True)
class RemoteView:
    """Every peer region's unexpired entries on one account, together."""

    online: bool
    seen_ms: int | None
    # Online until then (the latest expiry of an online entry); 0 when offline.
    until_ms: int


@dataclass(frozen=True, slots=True)
class ExportEntry:
    """A local state pushed to the peer regions."""

    account_id: str
    online: bool
    seen_ms: int
    expires_in_ms: int


@dataclass
class RegionStats:
    """Counters of presence across regions, per peer region."""

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # Unix seconds of the last full digest sent to / received from each peer.
    digest_sent_at: dict[str, float] = field(default_factory=dict)
    digest_received_at: dict[str, float] = field(default_factory=dict)
    # Local changes dropped because a peer's queue was full (its digest repairs them).
    dropped: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def add(counter: dict[str, int], peer: str, amount: int = 1) -> None:
        counter[peer] = counter.get(peer, 0) + amount


@dataclass(frozen=True, slots=True)
class PresenceView:
    """One user's presence as one viewer may see it."""

    account_id: str
    availability: Availability
    last_seen_ms: int | None


@dataclass(frozen=True, slots=True)
class Contact:
    account_id: str
    added_at: datetime


@dataclass(frozen=True, slots=True)
class SeenRecord:
    """A last seen to be stored durably."""

    account_id: str
    seen_ms: int


@dataclass
class PresenceStats:
    """Plain counters of one process, exported by ``svc_presence.metrics``."""

    heartbeats: int = 0
    came_online: int = 0
    went_offline: int = 0
    events_pushed: int = 0
    redis_errors: int = 0
    publish_failures: int = 0
    subscriptions_open: int = 0
    sweeps: int = 0
    sweep_seconds: float = 0.0
    last_seen_written: int = 0
    last_seen_write_failures: int = 0


class PresenceStoreDown(Exception):
    """Redis did not answer (refused, reset or timed out)."""


class PeerUnreachable(Exception):
    """A peer region did not take a call (unreachable, timed out, refused)."""


class ContactsBusy(Exception):
    """Concurrent changes to the same contact list kept conflicting."""


class OverCap(Exception):
    """Adding the contacts would make the list longer than allowed."""

    def __init__(self, current: int, adding: int) -> None:
        super().__init__(f"{current} contacts, adding {adding}")
        self.current = current
        self.adding = adding
