"""Python mirrors of the API's enums (re-exported by ``parley_sdk.models``).

A value a newer server sends that this SDK does not know becomes an
``UNKNOWN_<n>`` member instead of an error (``parley_sdk._wire.WireEnum``).
"""

from __future__ import annotations

from parley_sdk._wire import WireEnum as _WireEnum


class Platform(_WireEnum):
    """Values equal ``parley.common.v1.Platform``."""

    UNSPECIFIED = 0
    ANDROID = 1
    IOS = 2
    WEB = 3
    DESKTOP = 4
    CLI = 5


class MessageType(_WireEnum):
    """Values equal ``parley.message.v1.MessageType``."""

    UNSPECIFIED = 0
    TEXT = 1
    IMAGE = 2
    VIDEO = 3
    AUDIO = 4
    DOCUMENT = 5
    STICKER = 6
    LOCATION = 7
    CONTACT = 8
    SYSTEM = 9
    """Written by the server for membership and info changes; clients cannot send it."""


class Direction(_WireEnum):
    """Values equal ``parley.message.v1.Direction``."""

    BACKWARD = 1
    """Newest first."""
    FORWARD = 2
    """Oldest first."""


class ConversationType(_WireEnum):
    """Values equal ``parley.message.v1.ConversationType``."""

    UNSPECIFIED = 0
    DIRECT = 1
    GROUP = 2
    CHANNEL = 3


class Role(_WireEnum):
    """Values equal ``parley.message.v1.Role``. Channels use SUBSCRIBER for readers."""

    UNSPECIFIED = 0
    OWNER = 1
    ADMIN = 2
    MEMBER = 3
    SUBSCRIBER = 4


class DeleteScope(_WireEnum):
    """Values equal ``parley.message.v1.DeleteScope``."""

    FOR_ME = 1
    """Hidden from this account's views (all of its devices)."""
    FOR_EVERYONE = 2
    """Body cleared for everyone, a tombstone stays. Sender, or an owner/admin."""


class ArchiveFilter(_WireEnum):
    """Values equal ``parley.message.v1.ArchiveFilter``."""

    ACTIVE = 1
    """Conversations that are not archived (the inbox)."""
    ARCHIVED = 2
    ALL = 3


class MembershipState(_WireEnum):
    """Values equal ``parley.message.v1.MembershipState``."""

    UNSPECIFIED = 0
    ACTIVE = 1
    LEFT = 2
    """Left or removed: history up to ``visible_until_seq`` stays readable."""


class SystemAction(_WireEnum):
    """Values equal ``parley.message.v1.SystemEvent.Action``."""

    UNSPECIFIED = 0
    CREATED = 1
    MEMBERS_ADDED = 2
    MEMBER_REMOVED = 3
    MEMBER_LEFT = 4
    ROLE_CHANGED = 5
    INFO_CHANGED = 6
    SUBSCRIBED = 7
    IDENTITY_CHANGED = 8
    """A device of the actor (``device_id``) got a new identity key: it was re-installed."""
    SEARCH_CHANGED = 9
    """Server search (the blind index) was turned on or off: ``server_search``."""
