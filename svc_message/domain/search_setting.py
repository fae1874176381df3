"""A conversation's server search setting (MessageService.SetServerSearch).

Turning svc_search's blind index on or off is a conversation setting every
member sees: a system message (SEARCH_CHANGED) in history, then the flag on
the conversation. The flag is written after the system message commits, and
only over an older change (by the system message's seq), so a retry after a
crash finishes the job and a late retry never puts an older value back.
svc_search reads the flag through MessageInternalService and drops the
postings of conversations whose search is off.
"""

from __future__ import annotations

from parley_core.limits import LimitName
from svc_message.domain import roles
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.limits import FeedLimits
from svc_message.domain.sending import SendPipeline
from svc_message.domain.system_messages import commit_system
from svc_message.model import DIRECT, InboxEntry, SystemAction, SystemEvent
from svc_message.ports import MembershipChanges
from svc_message.storage.conversations import ConversationStore


class ServerSearchSetting:
    def __init__(
        self,
        conversations: ConversationsHandler,
        store: ConversationStore,
        pipeline: SendPipeline,
        bus: MembershipChanges,
        limits: FeedLimits,
    ) -> None:
        self._conversations = conversations
        self._store = store
        self._pipeline = pipeline
        self._bus = bus
        self._limits = limits

    async def set(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        enabled: bool,
        now: float,
    ) -> InboxEntry:
        membership = await self._conversations.require_member(conversation_id, account_id)
        if membership.conversation.type != DIRECT:
            # Either member of a direct conversation; admins elsewhere.
            roles.require_admin(membership.role)
        self._conversations.forget(conversation_id)
        conversation = await self._conversations.conversation(conversation_id)
        if conversation.server_search != enabled:
            await self._limits.account_change(
                LimitName.GROUP_ADMIN_PER_ACCOUNT, conversation_id, account_id, request_id, now
            )
            committed = await commit_system(
                self._pipeline,
                conversation,
                actor=account_id,
                device_id=device_id,
                request_id=request_id,
                event=SystemEvent(SystemAction.SEARCH_CHANGED, account_id, server_search=enabled),
            )
            message = committed.message
            assert message is not None
            # A retry of an earlier request answers with that request's system
            # message: its value, not this call's, is the one to record.
            recorded = message.system.server_search if message.system else enabled
            await self._store.set_server_search(conversation_id, enabled=recorded, seq=message.seq)
            self._conversations.forget(conversation_id)
            await self._bus.membership_changed(conversation_id)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)
