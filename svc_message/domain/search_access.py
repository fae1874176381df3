"""svc_search's question about a page of candidate hits, answered in one go:
the conversations' search settings and the caller's place in them, and per
message whether the caller may read it (the rule ListMessages and media
access apply: a member, within its history window, not deleted for everyone
nor for the caller)."""

from __future__ import annotations

from collections.abc import Sequence

from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.media import within_window
from svc_message.model.search import SearchCheck, SearchConversation, SearchMessage
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore


class SearchAccess:
    def __init__(
        self,
        messages: MessageStore,
        conversations: ConversationsHandler,
        store: ConversationStore,
    ) -> None:
        self._messages = messages
        self._conversations = conversations
        self._store = store

    async def check(
        self, account_id: str, conversation_ids: Sequence[str], message_ids: Sequence[str]
    ) -> SearchCheck:
        """``account_id`` empty: nobody (settings only, for svc_search's sweeper)."""
        found = await self._messages.many(message_ids) if message_ids else []
        wanted = list(dict.fromkeys([*conversation_ids, *(m.conversation_id for m in found)]))
        conversations = await self._store.get_many(wanted) if wanted else []
        memberships = (
            await self._conversations.memberships(account_id, wanted)
            if account_id and wanted
            else {}
        )
        messages = []
        for message in found:
            membership = memberships.get(message.conversation_id)
            readable = (
                membership is not None
                and not message.deleted
                and account_id not in message.hidden_for
                and within_window(membership, message.seq)
            )
            messages.append(
                SearchMessage(
                    message_id=message.message_id,
                    conversation_id=message.conversation_id,
                    sender_account_id=message.sender_account_id,
                    seq=message.seq,
                    created_at=message.created_at,
                    deleted=message.deleted,
                    readable=readable,
                )
            )
        asked = set(conversation_ids)
        return SearchCheck(
            conversations=tuple(
                SearchConversation(
                    conversation_id=c.conversation_id,
                    server_search=c.server_search,
                    searchable=c.conversation_id in memberships,
                )
                for c in conversations
                if c.conversation_id in asked
            ),
            messages=tuple(messages),
        )
