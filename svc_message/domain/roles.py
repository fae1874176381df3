"""Who may manage a group or channel: pure rules, one function per operation.

Owners do everything; admins manage members and info but cannot touch
owners or other admins' removal; members and subscribers manage nothing.
Each function raises the error the caller gets, or returns None.
"""

from __future__ import annotations

from parley_core.errors import FailedPrecondition, PermissionDenied, Reason
from svc_message.model import ADMIN, CHANNEL, MEMBER, OWNER, SUBSCRIBER

MANAGERS = frozenset({OWNER, ADMIN})


def _role_required(what: str) -> PermissionDenied:
    return PermissionDenied(f"only {what} may do this", reason=Reason.ROLE_REQUIRED)


def require_admin(role: int) -> None:
    if role not in MANAGERS:
        raise _role_required("owners and admins")


def require_poster(conversation_type: int, role: int) -> None:
    """In channels only owners and admins post."""
    if conversation_type == CHANNEL and role not in MANAGERS:
        raise _role_required("the channel's owners and admins")


def check_remove(actor_role: int, target_role: int) -> None:
    require_admin(actor_role)
    if target_role in MANAGERS and actor_role != OWNER:
        raise _role_required("owners")


def plain_role(conversation_type: int) -> int:
    return SUBSCRIBER if conversation_type == CHANNEL else MEMBER


def check_set_role(
    *,
    conversation_type: int,
    actor_role: int,
    target_role: int,
    new_role: int,
    owners: int,
) -> None:
    """Admins move non-owners between admin and the plain role; only owners
    grant or take ownership; the last owner cannot step down."""
    require_admin(actor_role)
    if (new_role == OWNER or target_role == OWNER) and actor_role != OWNER:
        raise _role_required("owners")
    if target_role == OWNER and new_role != OWNER and owners <= 1:
        raise FailedPrecondition(
            "the last owner must make another member owner first", reason=Reason.LAST_OWNER
        )
    del conversation_type


def check_leave(*, role: int, owners: int, members: int) -> None:
    if role == OWNER and owners <= 1 and members > 1:
        raise FailedPrecondition(
            "the last owner must make another member owner before leaving",
            reason=Reason.LAST_OWNER,
        )


def check_delete_for_everyone(*, actor_id: str, actor_role: int, sender_id: str) -> None:
    if actor_id != sender_id and actor_role not in MANAGERS:
        raise PermissionDenied(
            "only the sender or an admin may delete this for everyone",
            reason=Reason.NOT_THE_SENDER,
        )


def check_edit(*, actor_id: str, sender_id: str, system: bool) -> None:
    if system or actor_id != sender_id:
        raise PermissionDenied("only the sender may edit a message", reason=Reason.NOT_THE_SENDER)
