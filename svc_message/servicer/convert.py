"""Domain values to parley.message.v1 protos, and the delivery-stream codec."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError

from parley.message.v1 import messages_pb2 as pb
from parley_core.rpc.convert import timestamp
from svc_message.model import (
    Change,
    ChangeKind,
    Conversation,
    Envelope,
    EventKind,
    InboxEntry,
    MemberSettings,
    Message,
    MessageSummary,
    SystemEvent,
    Watermarks,
)
from svc_message.model.media import MediaNotice


def system_proto(system: SystemEvent) -> pb.SystemEvent:
    return pb.SystemEvent(
        action=system.action,  # type: ignore[arg-type]
        actor_account_id=system.actor_account_id,
        target_account_ids=system.target_account_ids,
        role=system.role,  # type: ignore[arg-type]
        title=system.title,
        avatar_ref=system.avatar_ref,
        device_id=system.device_id,
        server_search=system.server_search,
    )


def message_proto(message: Message) -> pb.Message:
    result = pb.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_account_id=message.sender_account_id,
        sender_device_id=message.sender_device_id,
        type=message.type,  # type: ignore[arg-type]
        body=message.body,
        reply_to_message_id=message.reply_to_message_id,
        create_time=timestamp(message.created_at),
        version=message.version,
        forwarded=message.forwarded,
        deleted=message.deleted,
        reactions=[
            pb.ReactionCount(emoji=emoji, count=len(accounts))
            for emoji, accounts in message.reactions
            if accounts
        ],
        media_ids=message.media_ids,
    )
    if message.edited_at is not None:
        result.edited = True
        result.edit_time.CopyFrom(timestamp(message.edited_at))
    if message.system is not None:
        result.system.CopyFrom(system_proto(message.system))
    return result


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
        title=conversation.title,
        avatar_ref=conversation.avatar_ref,
        member_count=conversation.member_count or len(conversation.member_ids),
        public=conversation.public,
        last_version=conversation.last_version,
        server_search=conversation.server_search,
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


def settings_proto(settings: MemberSettings) -> pb.InboxSettings:
    result = pb.InboxSettings(
        conversation_id=settings.conversation_id,
        pinned=settings.pinned,
        pin_rank=settings.pin_rank,
        archived=settings.archived,
        marked_unread=settings.marked_unread,
    )
    if settings.muted_until is not None:
        result.muted_until.CopyFrom(timestamp(settings.muted_until))
    return result


def view_proto(entry: InboxEntry) -> pb.ConversationView:
    view = pb.ConversationView(
        conversation=conversation_proto(entry.conversation),
        unread_count=entry.unread_count,
        member_watermarks=[watermarks_proto(w) for w in entry.watermarks],
        role=entry.role,  # type: ignore[arg-type]
        membership_state=pb.MEMBERSHIP_STATE_ACTIVE if entry.active else pb.MEMBERSHIP_STATE_LEFT,
        joined_seq=entry.joined_seq,
        visible_until_seq=entry.visible_until_seq,
    )
    if entry.settings is not None:
        view.settings.CopyFrom(settings_proto(entry.settings))
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
_EVENTS_FIELD = pb.ServerEvent.DESCRIPTOR.fields_by_name["events"].number


def history_entry(message: pb.Message) -> bytes:
    """One element of ListMessagesResponse.messages, tag and length included."""
    return _length_delimited(_MESSAGES_FIELD, message.SerializeToString())


def encode_list_messages(entries: list[bytes], next_page_token: str) -> bytes:
    """A ListMessagesResponse in wire form from history entries: a repeated
    field is its elements, each tagged and length-prefixed, one after another."""
    if next_page_token:
        return b"".join([*entries, _length_delimited(_TOKEN_FIELD, next_page_token.encode())])
    return b"".join(entries)


_LEAVING = frozenset({pb.SystemEvent.ACTION_MEMBER_REMOVED, pb.SystemEvent.ACTION_MEMBER_LEFT})


def _message_envelope(event: pb.Event, size: int = 0, *, committed_ms: int = 0) -> Envelope:
    message = event.message
    leaving: tuple[str, ...] = ()
    if message.HasField("system") and message.system.action in _LEAVING:
        leaving = tuple(message.system.target_account_ids)
    return Envelope(
        EventKind.MESSAGE,
        message.conversation_id,
        message.seq,
        event,
        message.sender_account_id,
        size,
        version=message.version,
        leaving=leaving,
        committed_ms=committed_ms,
    )


def change_event(change: Change) -> pb.Event:
    """The stream event of a feed entry that is not a history item."""
    at = timestamp(change.created_at)
    if change.kind == ChangeKind.EDIT:
        return pb.Event(
            edit=pb.MessageEdited(
                conversation_id=change.conversation_id,
                version=change.version,
                message_id=change.target_id,
                seq=change.target_seq,
                body=change.body,
                edit_time=at,
            )
        )
    if change.kind in (ChangeKind.DELETE, ChangeKind.HIDE):
        return pb.Event(
            deletion=pb.MessageDeleted(
                conversation_id=change.conversation_id,
                version=change.version,
                message_id=change.target_id,
                seq=change.target_seq,
                scope=pb.DELETE_SCOPE_FOR_EVERYONE
                if change.kind == ChangeKind.DELETE
                else pb.DELETE_SCOPE_FOR_ME,
                account_id=change.account_id,
            )
        )
    return pb.Event(
        reaction=pb.ReactionChanged(
            conversation_id=change.conversation_id,
            version=change.version,
            message_id=change.target_id,
            seq=change.target_seq,
            account_id=change.account_id,
            emoji=change.emoji,
            removed=change.removed,
        )
    )


def _change_envelope(event: pb.Event, size: int = 0) -> Envelope | None:
    kind = event.WhichOneof("kind")
    if kind == "edit":
        e = event.edit
        return Envelope(
            EventKind.CHANGE, e.conversation_id, e.seq, event, size=size, version=e.version
        )
    if kind == "deletion":
        d = event.deletion
        only_for = d.account_id if d.scope == pb.DELETE_SCOPE_FOR_ME else ""
        return Envelope(
            EventKind.CHANGE,
            d.conversation_id,
            d.seq,
            event,
            size=size,
            version=d.version,
            only_for=only_for,
        )
    if kind == "reaction":
        r = event.reaction
        return Envelope(
            EventKind.CHANGE, r.conversation_id, r.seq, event, size=size, version=r.version
        )
    return None


def _media_notice_envelope(event: pb.Event, size: int = 0) -> Envelope:
    return Envelope(
        EventKind.MEDIA_NOTICE, "", 0, event, size=size, device_id=event.media_notice.device_id
    )


def _export_notice_envelope(event: pb.Event, size: int = 0) -> Envelope:
    return Envelope(
        EventKind.EXPORT_NOTICE, "", 0, event, size=size, device_id=event.export_notice.device_id
    )


def _key_notice_envelope(event: pb.Event, size: int = 0) -> Envelope:
    notice = event.key_notice
    return Envelope(
        EventKind.KEY_NOTICE,
        notice.conversation_id,
        0,
        event,
        size=size,
        device_id=notice.device_id,
    )


class ProtoEventCodec:
    """Envelopes whose wire form is a parley.message.v1.Event."""

    def message(self, message: Message) -> Envelope:
        return _message_envelope(pb.Event(message=message_proto(message)))

    def change(self, change: Change) -> Envelope:
        if change.message is not None:
            return self.message(change.message)
        envelope = _change_envelope(change_event(change))
        assert envelope is not None
        return envelope

    def receipts(self, conversation_id: str, watermarks: Iterable[Watermarks]) -> Envelope:
        marks = tuple(watermarks)
        event = pb.Event(
            receipts=pb.Receipts(
                conversation_id=conversation_id, watermarks=[watermarks_proto(w) for w in marks]
            )
        )
        return Envelope(EventKind.RECEIPTS, conversation_id, 0, event, watermarks=marks)

    def settings(self, settings: MemberSettings) -> Envelope:
        event = pb.Event(settings=settings_proto(settings))
        return Envelope(EventKind.SETTINGS, settings.conversation_id, 0, event)

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

    def typing(
        self, conversation_id: str, account_id: str, typing: bool, expires_seconds: float
    ) -> Envelope:
        expires_in = Duration()
        expires_in.FromTimedelta(timedelta(seconds=expires_seconds))
        event = pb.Event(
            typing=pb.TypingIndicator(
                conversation_id=conversation_id,
                account_id=account_id,
                typing=typing,
                expires_in=expires_in,
            )
        )
        return Envelope(EventKind.TYPING, conversation_id, 0, event, account_id)

    def pre_keys_low(self, device_id: str, count: int) -> Envelope:
        notice = pb.KeyNotice(
            kind=pb.KeyNotice.KIND_PRE_KEYS_LOW, pre_key_count=count, device_id=device_id
        )
        return _key_notice_envelope(pb.Event(key_notice=notice))

    def group_rekey(self, conversation_id: str, account_ids: Iterable[str]) -> Envelope:
        notice = pb.KeyNotice(
            kind=pb.KeyNotice.KIND_GROUP_REKEY,
            conversation_id=conversation_id,
            account_ids=account_ids,
        )
        return _key_notice_envelope(pb.Event(key_notice=notice))

    def media_notice(self, device_id: str, notice: MediaNotice) -> Envelope:
        wire = pb.MediaNotice(
            kind=notice.kind,  # type: ignore[arg-type]
            media_id=notice.media_id,
            device_id=device_id,
        )
        if notice.expire_at is not None:
            wire.expire_time.CopyFrom(timestamp(notice.expire_at))
        return _media_notice_envelope(pb.Event(media_notice=wire))

    def export_notice(self, device_id: str, export_id: str, expire_at: datetime) -> Envelope:
        wire = pb.ExportNotice(
            kind=pb.ExportNotice.KIND_EXPORT_READY,
            export_id=export_id,
            device_id=device_id,
            expire_time=timestamp(expire_at),
        )
        return _export_notice_envelope(pb.Event(export_notice=wire))

    def encode(self, envelope: Envelope) -> bytes:
        return cast(pb.Event, envelope.wire).SerializeToString()

    def decode(self, payload: bytes) -> Envelope | None:
        envelope = self._decode(payload)
        if envelope is None:
            return None
        return replace(envelope, framed=_length_delimited(_EVENTS_FIELD, payload))

    def _decode(self, payload: bytes) -> Envelope | None:
        try:
            event = pb.Event.FromString(payload)
        except DecodeError:
            return None
        kind = event.WhichOneof("kind")
        size = len(payload)
        if kind == "message":
            # Only doorbell payloads are decoded: these are live, so their
            # commit time is what the delivery lag is measured from.
            created = event.message.create_time
            return _message_envelope(
                event, size, committed_ms=created.seconds * 1000 + created.nanos // 1_000_000
            )
        if kind in ("edit", "deletion", "reaction"):
            return _change_envelope(event, size)
        if kind == "receipts":
            marks = tuple(
                Watermarks(w.conversation_id, w.account_id, w.delivered_seq, w.read_seq)
                for w in event.receipts.watermarks
            )
            return Envelope(
                EventKind.RECEIPTS,
                event.receipts.conversation_id,
                0,
                event,
                size=size,
                watermarks=marks,
            )
        if kind == "settings":
            return Envelope(EventKind.SETTINGS, event.settings.conversation_id, 0, event, size=size)
        if kind == "receipt":
            return Envelope(EventKind.RECEIPT, event.receipt.conversation_id, 0, event, size=size)
        if kind == "conversation":
            return Envelope(
                EventKind.CONVERSATION, event.conversation.conversation_id, 0, event, size=size
            )
        if kind == "typing":
            t = event.typing
            return Envelope(EventKind.TYPING, t.conversation_id, 0, event, t.account_id, size)
        if kind == "key_notice":
            return _key_notice_envelope(event, size)
        if kind == "media_notice":
            return _media_notice_envelope(event, size)
        if kind == "export_notice":
            return _export_notice_envelope(event, size)
        return None
