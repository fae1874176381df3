"""Messages as a member sees them: sending (checks, then the pipeline) and history."""

from __future__ import annotations

from parley_core.errors import InvalidArgument
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.ports import EventCodec
from svc_message.domain.sending import Draft, SendPipeline
from svc_message.model import Page, Sent
from svc_message.storage.messages import MessageStore
from svc_message.storage.recent import RecentCache

# A start beyond any seq: "from the newest".
NEWEST = 2**62


class MessagesHandler:
    def __init__(
        self,
        conversations: ConversationsHandler,
        messages: MessageStore,
        recent: RecentCache,
        pipeline: SendPipeline,
        codec: EventCodec,
    ) -> None:
        self._conversations = conversations
        self._messages = messages
        self._recent = recent
        self._pipeline = pipeline
        self._codec = codec

    async def send(
        self,
        *,
        account_id: str,
        device_id: str,
        conversation_id: str,
        request_id: str,
        type: int,
        body: bytes,
        reply_to_message_id: str,
    ) -> Sent:
        conversation = await self._conversations.require_member(conversation_id, account_id)
        if reply_to_message_id:
            original = await self._messages.by_id(reply_to_message_id)
            if original is None or original.conversation_id != conversation_id:
                raise InvalidArgument.field(
                    "reply_to_message_id", "must name a message of this conversation"
                )
        return await self._pipeline.send(
            Draft(
                conversation=conversation,
                sender_account_id=account_id,
                sender_device_id=device_id,
                type=type,
                body=body,
                reply_to_message_id=reply_to_message_id,
                request_id=request_id,
            )
        )

    async def page(
        self,
        *,
        account_id: str,
        conversation_id: str,
        start_seq: int,
        forward: bool,
        limit: int,
    ) -> Page:
        """History from start_seq (inclusive; 0 = the newest for backward reads)."""
        await self._conversations.require_member(conversation_id, account_id)
        cached = await self._recent.read(
            conversation_id, start_seq=start_seq, forward=forward, limit=limit
        )
        if cached is not None:
            if forward:
                next_start = cached.hi + 1 if cached.hi < cached.last else None
            else:
                next_start = cached.lo - 1 if cached.lo > 1 else None
            return Page(messages=[], wire=cached.blobs, next_start=next_start)

        newest_first = not forward and start_seq == 0
        first = NEWEST if newest_first else start_seq
        messages = await self._messages.page(
            conversation_id, start_seq=first, forward=forward, limit=limit + 1
        )
        await self._recent.fill(
            conversation_id,
            [(m.seq, self._codec.history_entry(self._codec.message(m))) for m in messages],
            includes_newest=newest_first,
        )
        next_start = messages[limit].seq if len(messages) > limit else None
        return Page(messages=messages[:limit], wire=[], next_start=next_start)
