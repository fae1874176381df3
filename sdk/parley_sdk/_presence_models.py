"""Typed presence values: who is online, last seen, privacy settings, contacts.

Unlike conversations and messages (the protos themselves, see
:mod:`parley_sdk.models`), presence values are small frozen dataclasses: their
timestamps become aware ``datetime`` values and "not shared" becomes ``None``
or :attr:`Availability.UNKNOWN` instead of an unset proto field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Self

from parley.presence.v1 import presence_pb2
from parley_sdk._wire import WireEnum, aware_time

__all__ = [
    "Availability",
    "Contact",
    "Presence",
    "PresenceSettings",
    "PresenceUpdate",
    "Visibility",
]


class Visibility(WireEnum):
    """Who may see a user's online state or last seen.

    Values equal ``parley.presence.v1.Visibility``.
    """

    UNSPECIFIED = 0
    EVERYONE = 1
    CONTACTS = 2
    """Only the accounts on the user's own contact list (:meth:`Client.add_contacts`)."""
    NOBODY = 3


class Availability(WireEnum):
    """Whether a user is online, as far as the caller may know.

    Values equal ``parley.presence.v1.Availability``; ``UNKNOWN`` is its
    UNSPECIFIED.
    """

    UNKNOWN = 0
    """Not shared with you: the user's privacy settings (or yours, by
    reciprocity) hide it, or there is no such account. The two look the same
    on purpose."""
    ONLINE = 1
    OFFLINE = 2


@dataclass(frozen=True, slots=True)
class Presence:
    """One user's presence as the caller may see it."""

    account_id: str
    availability: Availability
    last_seen: datetime | None = None
    """The last moment a device of the user was active (UTC); None when not
    shared with you or never seen. While the user is online it is recent but
    not live: go by :attr:`availability`."""

    @property
    def online(self) -> bool:
        return self.availability is Availability.ONLINE

    @classmethod
    def from_proto(cls, proto: presence_pb2.Presence) -> Self:
        return cls(
            account_id=proto.account_id,
            availability=Availability(proto.availability),
            last_seen=aware_time(proto.last_seen_time, present=proto.HasField("last_seen_time")),
        )


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """One event of :meth:`Client.subscribe_presence`.

    A ``snapshot`` holds every subscribed user: replace what you knew. The first
    update of a subscription is a snapshot, and so is the first after the SDK
    reconnected (changes made while it was away are in it). Other updates hold
    only the users whose visible presence changed: merge them.
    """

    snapshot: bool
    presences: tuple[Presence, ...]

    @property
    def by_account(self) -> Mapping[str, Presence]:
        """The presences keyed by account id."""
        return MappingProxyType({p.account_id: p for p in self.presences})

    @classmethod
    def from_proto(cls, proto: presence_pb2.PresenceEvent) -> Self:
        return cls(
            snapshot=proto.snapshot,
            presences=tuple(Presence.from_proto(p) for p in proto.presences),
        )


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    """The caller's presence privacy.

    ``online`` always admits at least everyone ``last_seen`` admits (whoever
    sees your last seen could tell you are online from it). Reciprocity: you
    see others' online state (last seen) only while yours is visible to them,
    and ``invisible`` hides you from everyone and everyone from you.
    """

    online: Visibility
    last_seen: Visibility
    invisible: bool
    updated_at: datetime | None = None

    @classmethod
    def from_proto(cls, proto: presence_pb2.PresenceSettings) -> Self:
        return cls(
            online=Visibility(proto.online),
            last_seen=Visibility(proto.last_seen),
            invisible=proto.invisible,
            updated_at=aware_time(proto.update_time, present=proto.HasField("update_time")),
        )


@dataclass(frozen=True, slots=True)
class Contact:
    """An account on the caller's contact list.

    The list is one-sided: adding Bob lets Bob see what you show your contacts;
    it does not let you see what Bob shows his.
    """

    account_id: str
    added_at: datetime | None = None

    @classmethod
    def from_proto(cls, proto: presence_pb2.Contact) -> Self:
        return cls(
            account_id=proto.account_id,
            added_at=aware_time(proto.add_time, present=proto.HasField("add_time")),
        )


def account_id_list(account_ids: Iterable[str] | str) -> list[str]:
    """One id or many; a bare string is one id, not its characters."""
    return [account_ids] if isinstance(account_ids, str) else list(account_ids)
