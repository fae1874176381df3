"""System messages: membership, info and setting changes kept in history.

Each is committed through the send pipeline like any message, so every
member's history and delivery stream carries it in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from svc_message.domain.sending import Committed, Draft, SendPipeline
from svc_message.model import SYSTEM, Change, ChangeKind, Conversation, Message, SystemEvent

# The pipeline stamps the real time; the template's is a placeholder.
_UNSET = datetime.fromtimestamp(0, UTC)


def system_draft(
    conversation: Conversation,
    *,
    actor: str,
    device_id: str,
    request_id: str,
    event: SystemEvent,
    notify: Sequence[str] = (),
) -> Draft:
    template = Change(
        kind=ChangeKind.SYSTEM,
        conversation_id=conversation.conversation_id,
        version=0,
        change_id="",
        account_id=actor,
        created_at=_UNSET,
        request_id=request_id,
        message=Message(
            message_id="",
            conversation_id=conversation.conversation_id,
            seq=0,
            sender_account_id=actor,
            sender_device_id=device_id,
            type=SYSTEM,
            body=b"",
            reply_to_message_id="",
            created_at=_UNSET,
            request_id=request_id,
            system=event,
        ),
    )
    return Draft(conversation=conversation, template=template, notify=tuple(notify))


async def commit_system(
    pipeline: SendPipeline,
    conversation: Conversation,
    *,
    actor: str,
    device_id: str,
    request_id: str,
    event: SystemEvent,
    notify: Sequence[str] = (),
) -> Committed:
    """Commits the system message; a retry (same actor and request id) gets
    the first attempt's."""
    return await pipeline.submit(
        system_draft(
            conversation,
            actor=actor,
            device_id=device_id,
            request_id=request_id,
            event=event,
            notify=notify,
        )
    )
