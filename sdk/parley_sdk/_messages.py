"""Client methods for messages: send, history, edits, deletes, reactions, receipts."""

from __future__ import annotations

from collections.abc import Sequence

from parley.message.v1 import messages_pb2
from parley_sdk._paging import ClientBase, MessageReceiptPager, Pager
from parley_sdk.models import (
    DeleteScope,
    Direction,
    Message,
    MessageDeleted,
    MessageEdited,
    MessageType,
    Reaction,
    ReactionResult,
    Watermarks,
)
from parley_sdk.retry import new_request_id

__all__ = ["MessageMethods"]


class MessageMethods(ClientBase):
    """Messages and receipts. Bodies are opaque bytes (ciphertext) to the server."""

    async def send_message(
        self,
        conversation_id: str,
        body: bytes,
        *,
        # Named after the proto field, shadowing the builtin only inside this method.
        type: MessageType = MessageType.TEXT,
        reply_to_message_id: str = "",
        forwarded: bool = False,
        media_ids: Sequence[str] = (),
        request_id: str | None = None,
    ) -> Message:
        """Appends a message; returns it once the server stored it durably.

        ``reply_to_message_id`` must name a message of the same conversation.
        ``media_ids`` name the uploaded media the body points to (at most 16;
        :meth:`Client.send_file` fills them in); recipients may then download
        them.
        Pass your own ``request_id`` to make a send idempotent across restarts of
        your app (persist it with the outgoing message); retries inside one call
        always reuse one id.
        """
        request = messages_pb2.SendMessageRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            type=messages_pb2.MessageType.ValueType(int(type)),
            body=body,
            reply_to_message_id=reply_to_message_id,
            forwarded=forwarded,
            media_ids=list(media_ids),
        )
        response = await self._session.unary(self._session.messages.SendMessage, request)
        return response.message

    def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> Pager[Message]:
        """History across all pages, system messages included. BACKWARD (newest
        first) by default.

        ``start_seq`` is inclusive; 0 means the newest (BACKWARD) or seq 1
        (FORWARD). Messages deleted for this account are left out; those deleted
        for everyone come as tombstones (``deleted``, empty body).
        """
        size = self._size(page_size, 200)
        wire_direction = messages_pb2.Direction.ValueType(int(direction))
        return Pager(
            self._session,
            self._session.messages.ListMessages,
            lambda token: messages_pb2.ListMessagesRequest(
                conversation_id=conversation_id,
                page_size=size,
                page_token=token,
                direction=wire_direction,
                start_seq=start_seq,
            ),
            "messages",
        )

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        body: bytes,
        *,
        request_id: str | None = None,
    ) -> MessageEdited:
        """Replaces the body of one of this account's messages and marks it edited.

        Someone else's message: ``NotTheSenderError``; a message deleted for
        everyone: ``MessageDeletedError``.
        """
        request = messages_pb2.EditMessageRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            message_id=message_id,
            body=body,
        )
        response = await self._session.unary(self._session.messages.EditMessage, request)
        return response.edit

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        *,
        scope: DeleteScope = DeleteScope.FOR_ME,
        request_id: str | None = None,
    ) -> MessageDeleted:
        """Deletes a message for this account only (the default), or for everyone
        (the sender, or a group/channel owner or admin: the body is cleared and a
        tombstone stays)."""
        request = messages_pb2.DeleteMessageRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            message_id=message_id,
            scope=messages_pb2.DeleteScope.ValueType(int(scope)),
        )
        response = await self._session.unary(self._session.messages.DeleteMessage, request)
        return response.deletion

    async def react_to_message(
        self,
        conversation_id: str,
        message_id: str,
        emoji: str,
        *,
        remove: bool = False,
        request_id: str | None = None,
    ) -> ReactionResult:
        """Adds (or with ``remove``, takes back) this account's reaction with one emoji.

        Reacting twice, or removing an absent reaction, changes nothing
        (``changed`` is False).
        """
        request = messages_pb2.ReactToMessageRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            message_id=message_id,
            emoji=emoji,
            remove=remove,
        )
        response = await self._session.unary(self._session.messages.ReactToMessage, request)
        return ReactionResult(reactions=tuple(response.reactions), changed=response.changed)

    def list_reactions(
        self, conversation_id: str, message_id: str, *, page_size: int | None = None
    ) -> Pager[Reaction]:
        """Who reacted to a message with which emoji, across all pages."""
        size = self._size(page_size, 1000)
        return Pager(
            self._session,
            self._session.messages.ListReactions,
            lambda token: messages_pb2.ListReactionsRequest(
                conversation_id=conversation_id,
                message_id=message_id,
                page_size=size,
                page_token=token,
            ),
            "reactions",
        )

    def list_message_receipts(
        self, conversation_id: str, seq: int, *, page_size: int | None = None
    ) -> MessageReceiptPager:
        """Per member, whether the message ``seq`` was delivered to and read by them
        (groups and direct conversations; channels: ``WrongConversationTypeError``).

        The pager also carries ``delivered_count`` and ``read_count`` over all
        members.
        """
        size = self._size(page_size, 1024)
        return MessageReceiptPager(
            self._session,
            self._session.messages.ListMessageReceipts,
            lambda token: messages_pb2.ListMessageReceiptsRequest(
                conversation_id=conversation_id, seq=seq, page_size=size, page_token=token
            ),
            "receipts",
        )

    async def mark_delivered(
        self, conversation_id: str, seq: int, *, request_id: str | None = None
    ) -> Watermarks:
        """Raises this account's delivered watermark (the stream's acks do this too)."""
        request = messages_pb2.MarkDeliveredRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id, seq=seq
        )
        return await self._session.unary(self._session.messages.MarkDelivered, request)

    async def mark_read(
        self, conversation_id: str, seq: int, *, request_id: str | None = None
    ) -> Watermarks:
        """Raises this account's read watermark (and delivered with it)."""
        request = messages_pb2.MarkReadRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id, seq=seq
        )
        return await self._session.unary(self._session.messages.MarkRead, request)
