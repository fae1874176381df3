"""The privacy policy of presence, as pure functions (no I/O, no clock).

For viewer V looking at user U (see parley/presence/v1/presence.proto):
- V sees U's online state when U's ``online`` visibility admits V, U is not
  invisible, and (reciprocity) V's own ``online`` visibility admits U and V
  is not invisible;
- the same for last seen with the ``last_seen`` settings;
- a user always sees themself;
- ``online`` must admit everyone ``last_seen`` admits.

What V may not see is answered exactly as for an account that does not
exist (availability unknown, no last seen), so presence never tells whether
an account exists or hides. That holds for accounts this service never heard
of because the defaults admit only contacts and such an account has none.
"""

from __future__ import annotations

from collections.abc import Iterable

from parley_core.errors import InvalidArgument
from svc_presence.model import (
    EVERYTHING,
    Availability,
    LiveState,
    PresenceSettings,
    PresenceView,
    Rule,
    Visibility,
)

# How many accounts each visibility admits, in order.
_BREADTH = {Visibility.NOBODY: 0, Visibility.CONTACTS: 1, Visibility.EVERYONE: 2}


def admits(visibility: Visibility, *, owner_lists_other: bool) -> bool:
    """Whether the owner's ``visibility`` lets the other account see it."""
    if visibility is Visibility.EVERYONE:
        return True
    if visibility is Visibility.CONTACTS:
        return owner_lists_other
    return False


def uses_contacts(settings: PresenceSettings) -> bool:
    """Whether the contact list matters to what these settings admit."""
    return not settings.invisible and Visibility.CONTACTS in (settings.online, settings.last_seen)


def rule(
    *,
    viewer_id: str,
    target_id: str,
    viewer: PresenceSettings,
    target: PresenceSettings,
    target_lists_viewer: bool,
    viewer_lists_target: bool,
) -> Rule:
    """What ``viewer_id`` may see of ``target_id``."""
    if viewer_id == target_id:
        return EVERYTHING
    if viewer.invisible or target.invisible:
        return Rule(online=False, last_seen=False)
    online = admits(target.online, owner_lists_other=target_lists_viewer) and admits(
        viewer.online, owner_lists_other=viewer_lists_target
    )
    last_seen = admits(target.last_seen, owner_lists_other=target_lists_viewer) and admits(
        viewer.last_seen, owner_lists_other=viewer_lists_target
    )
    # The settings invariant makes last_seen imply online; stated again here
    # so a stored record that predates it can never show half a presence.
    return Rule(online=online, last_seen=last_seen and online)


def view(account_id: str, verdict: Rule, state: LiveState) -> PresenceView:
    """The presence of ``account_id`` in ``state`` as a viewer with ``verdict`` sees it."""
    if not verdict.online:
        return PresenceView(account_id, Availability.UNKNOWN, None)
    availability = Availability.ONLINE if state.online else Availability.OFFLINE
    last_seen = state.seen_ms if verdict.last_seen else None
    return PresenceView(account_id, availability, last_seen)


def merge_settings(
    current: PresenceSettings,
    *,
    online: Visibility | None,
    last_seen: Visibility | None,
    invisible: bool | None,
) -> PresenceSettings:
    """``current`` with the given fields changed (None keeps a field), or
    INVALID_ARGUMENT naming the field when the result would let someone see
    the last seen of a user who may not see them online."""
    merged = PresenceSettings(
        online=current.online if online is None else online,
        last_seen=current.last_seen if last_seen is None else last_seen,
        invisible=current.invisible if invisible is None else invisible,
        updated_at=current.updated_at,
        version=current.version,
    )
    if _BREADTH[merged.last_seen] > _BREADTH[merged.online]:
        # Blame the field the request changed (last_seen when it changed both).
        field = "last_seen" if last_seen is not None else "online"
        raise InvalidArgument.field(
            field,
            f"online visibility {merged.online.name} must admit everyone last_seen "
            f"visibility {merged.last_seen.name} admits (whoever sees a last seen can "
            "tell when the user is online)",
        )
    return merged


def dedup(account_ids: Iterable[str]) -> list[str]:
    """The ids in first-seen order, each once."""
    return list(dict.fromkeys(account_ids))
