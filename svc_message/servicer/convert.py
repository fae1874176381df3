"""Domain values to parley.message.v1 protos, and the delivery-stream codec."""

from __future__ import annotations

from typing import cast

from google.protobuf.message import DecodeError

from parley.message.v1 import messages_pb2 as pb
from parley_core.rpc.convert import timestamp
from svc_message.model import (
    Conversation,
    Envelope,
    EventKind,
    InboxEntry,
    Message,
    MessageSummary,
    Watermarks,
)


def message_proto(message: Message) -> pb.Message:
    return pb.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_account_id=message.sender_account_id,
        sender_device_id=message.sender_device_id,
        type=message.type,  # type: ignore[arg-type]
        body=message.body,
        reply_to_message_id=message.reply_to_message_id,
        create_time=timestamp(message.created_at),
    )


def summary_proto(summary: MessageSummary) -> pb.MessageSummary:
    return pb.MessageSummary(
        message_id=summary.message_id,
        seq=summary.seq,
        sender_account_id=summary.sender_account_id,
        type=summary.type,  # type: ignore[arg-type]
        create_time=timestamp(summary.created_at),
    )


def conversation_proto(conversation: Conversation) -> pb.Conversation:
    result = pb.Conversation(
        conversation_id=conversation.conversation_id,
        type=conversation.type,  # type: ignore[arg-type]
        member_account_ids=conversation.member_ids,
        create_time=timestamp(conversation.created_at),
        last_seq=conversation.last_seq,
    )
    if conversation.last_activity_at is not None:
        result.last_activity_time.CopyFrom(timestamp(conversation.last_activity_at))
    return result


def watermarks_proto(watermarks: Watermarks) -> pb.Watermarks:
    return pb.Watermarks(
        conversation_id=watermarks.conversation_id,
        account_id=watermarks.account_id,
        delivered_seq=watermarks.delivered_seq,
        read_seq=watermarks.read_seq,
    )


def view_proto(entry: InboxEntry) -> pb.ConversationView:
    view = pb.ConversationView(
        conversation=conversation_proto(entry.conversation),
        unread_count=entry.unread_count,
        member_watermarks=[watermarks_proto(w) for w in entry.watermarks],
    )
    if entry.conversation.last_message is not None:
        view.last_message.CopyFrom(summary_proto(entry.conversation.last_message))
    return view


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


_MESSAGES_FIELD = pb.ListMessagesResponse.DESCRIPTOR.fields_by_name["messages"].number
_TOKEN_FIELD = pb.ListMessagesResponse.DESCRIPTOR.fields_by_name["next_page_token"].number


def history_entry(message: pb.Message) -> bytes:
    """One element of ListMessagesResponse.messages, tag and length included."""
    return _length_delimited(_MESSAGES_FIELD, message.SerializeToString())


def encode_list_messages(entries: list[bytes], next_page_token: str) -> bytes:
    """A ListMessagesResponse in wire form from history entries: a repeated
    field is its elements, each tagged and length-prefixed, one after another."""
    if next_page_token:
        return b"".join([*entries, _length_delimited(_TOKEN_FIELD, next_page_token.encode())])
    return b"".join(entries)


class ProtoEventCodec:
    """Envelopes whose wire form is a parley.message.v1.Event."""

    def message(self, message: Message) -> Envelope:
        event = pb.Event(message=message_proto(message))
        return Envelope(
            EventKind.MESSAGE,
            message.conversation_id,
            message.seq,
            event,
            message.sender_account_id,
        )

    def history_entry(self, envelope: Envelope) -> bytes:
        return history_entry(cast(pb.Event, envelope.wire).message)

    def receipt(self, watermarks: Watermarks) -> Envelope:
        event = pb.Event(receipt=watermarks_proto(watermarks))
        return Envelope(EventKind.RECEIPT, watermarks.conversation_id, 0, event)

    def conversation(self, conversation: Conversation) -> Envelope:
        event = pb.Event(conversation=conversation_proto(conversation))
        return Envelope(EventKind.CONVERSATION, conversation.conversation_id, 0, event)

    def sync_complete(self, sync_token: str) -> Envelope:
        event = pb.Event(sync_complete=pb.SyncComplete(sync_token=sync_token))
        return Envelope(EventKind.CONTROL, "", 0, event)

    def pong(self, nonce: int) -> Envelope:
        return Envelope(EventKind.CONTROL, "", 0, pb.Event(pong=pb.Pong(nonce=nonce)))

    def encode(self, envelope: Envelope) -> bytes:
        return cast(pb.Event, envelope.wire).SerializeToString()

    def decode(self, payload: bytes) -> Envelope | None:
        try:
            event = pb.Event.FromString(payload)
        except DecodeError:
            return None
        kind = event.WhichOneof("kind")
        size = len(payload)
        if kind == "message":
            return Envelope(
                EventKind.MESSAGE,
                event.message.conversation_id,
                event.message.seq,
                event,
                event.message.sender_account_id,
                size,
            )
        if kind == "receipt":
            return Envelope(EventKind.RECEIPT, event.receipt.conversation_id, 0, event, size=size)
        if kind == "conversation":
            return Envelope(
                EventKind.CONVERSATION, event.conversation.conversation_id, 0, event, size=size
            )
        return None
