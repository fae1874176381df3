"""Changes to existing messages (edits, deletes, reactions) and per-message
views derived from state (who reacted, who received and read).

Each change is an entry in the conversation's feed, committed through the
pipeline like a message; the pipeline also applies it to the target message
before the ack, so history and the recent cache show the current state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from parley_core.errors import FailedPrecondition, NotFound, Reason
from parley_core.limits import LimitName
from svc_message.domain import roles
from svc_message.domain.conversations import (
    ConversationsHandler,
    Membership,
    effective_watermarks,
)
from svc_message.domain.limits import FeedLimits
from svc_message.domain.media import MediaReservations
from svc_message.domain.sending import Committed, Draft, SendPipeline
from svc_message.model import CHANNEL, DIRECT, SYSTEM, Change, ChangeKind, Message, Watermarks
from svc_message.storage.delivered import DeliveredMarks
from svc_message.storage.messages import MessageStore

_UNSET = datetime.fromtimestamp(0, UTC)


def _not_found() -> NotFound:
    return NotFound("no such message in this conversation", reason=Reason.MESSAGE_NOT_FOUND)


class ChangesHandler:
    def __init__(
        self,
        conversations: ConversationsHandler,
        messages: MessageStore,
        pipeline: SendPipeline,
        limits: FeedLimits,
        delivered: DeliveredMarks | None = None,
        media: MediaReservations | None = None,
    ) -> None:
        self._limits = limits
        self._media = media
        self._conversations = conversations
        self._messages = messages
        self._pipeline = pipeline
        self._delivered = delivered

    async def _target(
        self, membership: Membership, message_id: str, *, live: bool = True
    ) -> Message:
        """The message, if the member may see it; deleted ones refused when
        ``live``."""
        message = await self._messages.by_id(message_id)
        conversation_id = membership.conversation.conversation_id
        if (
            message is None
            or message.conversation_id != conversation_id
            or message.seq < membership.joined_seq
            or (membership.left_seq and message.seq > membership.left_seq)
        ):
            raise _not_found()
        if live and message.deleted:
            raise FailedPrecondition(
                "the message was deleted for everyone", reason=Reason.MESSAGE_DELETED
            )
        return message

    async def _commit(
        self, membership: Membership, template: Change, *, limit: LimitName, now: float
    ) -> Committed:
        """Spends a token of the account's ``limit`` (a retry of a change
        already in the feed spends none), then commits."""
        await self._limits.account_change(
            limit, template.conversation_id, template.account_id, template.request_id, now
        )
        return await self._pipeline.submit(
            Draft(conversation=membership.conversation, template=template)
        )

    def _template(
        self, kind: str, membership: Membership, target: Message, request_id: str, **fields: object
    ) -> Change:
        return Change(
            kind=kind,
            conversation_id=target.conversation_id,
            version=0,
            change_id="",
            account_id=membership.account_id,
            created_at=_UNSET,
            target_id=target.message_id,
            target_seq=target.seq,
            request_id=request_id,
            **fields,  # type: ignore[arg-type]
        )

    async def _retried(
        self, conversation_id: str, account_id: str, request_id: str
    ) -> Change | None:
        """The change a first attempt of this request stored: a retry of it
        gets the same outcome, even once the message state moved on."""
        return await self._messages.by_request(conversation_id, account_id, request_id)

    async def edit(
        self,
        *,
        account_id: str,
        conversation_id: str,
        message_id: str,
        body: bytes,
        request_id: str,
        now: float,
    ) -> Committed:
        membership = await self._conversations.require_member(conversation_id, account_id)
        target = await self._target(membership, message_id, live=False)
        roles.check_edit(
            actor_id=account_id, sender_id=target.sender_account_id, system=target.type == SYSTEM
        )
        if target.deleted and await self._retried(conversation_id, account_id, request_id) is None:
            raise FailedPrecondition(
                "the message was deleted for everyone", reason=Reason.MESSAGE_DELETED
            )
        return await self._commit(
            membership,
            self._template(ChangeKind.EDIT, membership, target, request_id, body=body),
            limit=LimitName.EDIT_PER_ACCOUNT,
            now=now,
        )

    async def delete(
        self,
        *,
        account_id: str,
        conversation_id: str,
        message_id: str,
        for_everyone: bool,
        request_id: str,
        now: float,
    ) -> Committed:
        membership = await self._conversations.require_member(conversation_id, account_id)
        target = await self._target(membership, message_id, live=False)
        if for_everyone:
            roles.check_delete_for_everyone(
                actor_id=account_id,
                actor_role=membership.role,
                sender_id=target.sender_account_id,
            )
            template = self._template(
                ChangeKind.DELETE, membership, target, request_id, for_everyone=True
            )
        else:
            template = self._template(
                ChangeKind.HIDE, membership, target, request_id, only_for=account_id
            )
        committed = await self._commit(
            membership, template, limit=LimitName.DELETE_PER_ACCOUNT, now=now
        )
        if for_everyone and target.media_ids and self._media is not None:
            # After the commit, which cleared them from the message. A retry
            # whose first attempt got this far finds them cleared already.
            self._media.release_later(target.media_ids)
        return committed

    async def react(
        self,
        *,
        account_id: str,
        conversation_id: str,
        message_id: str,
        emoji: str,
        remove: bool,
        request_id: str,
        now: float,
    ) -> tuple[Message, bool]:
        """The message's state after the change, and whether anything changed."""
        membership = await self._conversations.require_member(conversation_id, account_id)
        target = await self._target(membership, message_id)
        present = any(e == emoji and account_id in who for e, who in target.reactions)
        if present != remove:
            # Already as asked; a retry of a request that did change it lands
            # here too, and answers the same state.
            retried = await self._retried(conversation_id, account_id, request_id)
            return target, retried is not None
        committed = await self._commit(
            membership,
            self._template(
                ChangeKind.REACTION, membership, target, request_id, emoji=emoji, removed=remove
            ),
            limit=LimitName.REACT_PER_ACCOUNT,
            now=now,
        )
        return committed.message or target, True

    async def reactions(
        self, *, account_id: str, conversation_id: str, message_id: str
    ) -> list[tuple[str, str]]:
        """(account, emoji) of every reaction, by account then emoji."""
        membership = await self._conversations.require_member(conversation_id, account_id)
        target = await self._target(membership, message_id, live=False)
        return sorted((who, emoji) for emoji, accounts in target.reactions for who in accounts)

    async def receipts(
        self, *, account_id: str, conversation_id: str, seq: int
    ) -> list[tuple[str, bool, bool]]:
        """Per other member at the message's time: (account, delivered, read)."""
        membership = await self._conversations.require_member(conversation_id, account_id)
        conversation = membership.conversation
        if conversation.type == CHANNEL:
            raise FailedPrecondition(
                "channels have no per-message receipts", reason=Reason.WRONG_CONVERSATION_TYPE
            )
        # The stored document, not the membership cache: last_seq must be current.
        stored_conversation = await self._conversations.store.get(conversation_id)
        (current,) = await self._conversations.fresh([stored_conversation or conversation])
        if not 0 < seq <= await self._conversations.last_seq_at_least(current, seq):
            raise _not_found()
        members = [
            m for m in current.member_ids if m != account_id and current.joined_at(m)[0] <= seq
        ]
        stored = await self._conversations.store.watermarks_of(
            (conversation_id, m) for m in members
        )
        if self._delivered is not None and current.type != DIRECT:
            # Group delivery ticks are current in Redis, durable behind.
            recent = await self._delivered.of(conversation_id, members)
            by_member = {w.account_id: w for w in stored}
            for member, seq in recent.items():
                w = by_member.get(member, Watermarks(conversation_id, member))
                by_member[member] = replace(w, delivered_seq=max(w.delivered_seq, seq))
            stored = list(by_member.values())
        return [
            (w.account_id, w.delivered_seq >= seq, w.read_seq >= seq)
            for w in effective_watermarks(current, stored, sorted(members))
        ]


def reaction_counts(message: Message) -> Sequence[tuple[str, int]]:
    return [(emoji, len(accounts)) for emoji, accounts in message.reactions if accounts]
