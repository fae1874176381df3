"""parley_sdk models without servers: enum mirrors, stream events, positions, settings."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

import parley_sdk
from parley.common.v1 import common_pb2
from parley.message.v1 import messages_pb2 as pb
from parley.presence.v1 import presence_pb2
from parley_sdk import (
    ArchiveFilter,
    Availability,
    Contact,
    ConversationEvent,
    ConversationType,
    DecryptedMessage,
    DeleteScope,
    Direction,
    DoNotDisturb,
    ExportNoticeEvent,
    ExportNoticeKind,
    ExportState,
    GroupReceiptsEvent,
    HistoryExport,
    KeyNoticeEvent,
    KeyNoticeKind,
    MediaNoticeEvent,
    MediaNoticeKind,
    MembershipState,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    MessageType,
    Platform,
    PongEvent,
    Presence,
    PresenceSettings,
    PresenceUpdate,
    PushProvider,
    PushRegistration,
    PushSettings,
    ReactionChangedEvent,
    ReactionResult,
    ReceiptEvent,
    Role,
    SettingsEvent,
    StreamPosition,
    SyncCompleteEvent,
    SystemAction,
    SystemMessageEvent,
    TypingIndicatorEvent,
    Visibility,
    muted_forever,
    muted_until,
)
from parley_sdk.models import event_from_proto, position_of, positions_proto

# -- enums mirror the wire ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mirror", "proto", "prefix"),
    [
        (Platform, common_pb2.Platform, "PLATFORM_"),
        (MessageType, pb.MessageType, "MESSAGE_TYPE_"),
        (Direction, pb.Direction, "DIRECTION_"),
        (ConversationType, pb.ConversationType, "CONVERSATION_TYPE_"),
        (Role, pb.Role, "ROLE_"),
        (DeleteScope, pb.DeleteScope, "DELETE_SCOPE_"),
        (ArchiveFilter, pb.ArchiveFilter, "ARCHIVE_FILTER_"),
        (MembershipState, pb.MembershipState, "MEMBERSHIP_STATE_"),
        (SystemAction, pb.SystemEvent.Action, "ACTION_"),
        (Visibility, presence_pb2.Visibility, "VISIBILITY_"),
        (PushProvider, pb.PushProvider, "PUSH_PROVIDER_"),
        (KeyNoticeKind, pb.KeyNotice.Kind, "KIND_"),
        (ExportNoticeKind, pb.ExportNotice.Kind, "KIND_"),
        (ExportState, pb.HistoryExport.State, "STATE_"),
    ],
)
def test_enums_mirror_the_proto_exactly(
    mirror: type[enum.IntEnum], proto: EnumTypeWrapper, prefix: str
) -> None:
    wire = {name.removeprefix(prefix): value for name, value in proto.items()}
    # UNSPECIFIED may be left out where a caller never needs to pass it.
    wire_without_default = {k: v for k, v in wire.items() if k != "UNSPECIFIED"}
    mirrored = {member.name: member.value for member in mirror}
    assert wire_without_default.items() <= mirrored.items()
    assert mirrored.items() <= wire.items()


def test_availability_mirrors_the_proto_with_unknown_for_unspecified() -> None:
    wire = dict(presence_pb2.Availability.items())
    assert {member.value for member in Availability} == set(wire.values())
    assert Availability(wire["AVAILABILITY_UNSPECIFIED"]) is Availability.UNKNOWN
    assert Availability(wire["AVAILABILITY_ONLINE"]) is Availability.ONLINE
    assert Availability(wire["AVAILABILITY_OFFLINE"]) is Availability.OFFLINE


def test_unknown_wire_values_become_unknown_members_not_errors() -> None:
    role = Role(42)
    assert role == 42
    assert role.name == "UNKNOWN_42"
    assert isinstance(role, Role)
    assert Role(2) is Role.ADMIN
    with pytest.raises(ValueError, match="ADMIN"):
        Role("ADMIN")  # type: ignore[arg-type]


# -- stream events ---------------------------------------------------------------------


def _message(**fields: Any) -> pb.Message:
    defaults: dict[str, Any] = {"conversation_id": "c1", "message_id": "m1", "seq": 3, "version": 7}
    return pb.Message(**{**defaults, **fields})


def _event_of_every_kind() -> dict[str, pb.Event]:
    watermarks = pb.Watermarks(conversation_id="c1", account_id="a2", delivered_seq=3, read_seq=2)
    return {
        "message": pb.Event(message=_message(type=pb.MESSAGE_TYPE_TEXT, body=b"hi")),
        "receipt": pb.Event(receipt=watermarks),
        "conversation": pb.Event(conversation=pb.Conversation(conversation_id="c1")),
        "sync_complete": pb.Event(sync_complete=pb.SyncComplete(sync_token="tok")),
        "pong": pb.Event(pong=pb.Pong(nonce=9)),
        "edit": pb.Event(
            edit=pb.MessageEdited(
                conversation_id="c1", version=8, message_id="m1", seq=3, body=b"x"
            )
        ),
        "deletion": pb.Event(
            deletion=pb.MessageDeleted(
                conversation_id="c1",
                version=9,
                message_id="m1",
                seq=3,
                scope=pb.DELETE_SCOPE_FOR_EVERYONE,
                account_id="a1",
            )
        ),
        "reaction": pb.Event(
            reaction=pb.ReactionChanged(
                conversation_id="c1",
                version=10,
                message_id="m1",
                seq=3,
                account_id="a2",
                emoji="👍",
            )
        ),
        "receipts": pb.Event(receipts=pb.Receipts(conversation_id="c1", watermarks=[watermarks])),
        "settings": pb.Event(settings=pb.InboxSettings(conversation_id="c1", pinned=True)),
        "typing": pb.Event(
            typing=pb.TypingIndicator(
                conversation_id="c1",
                account_id="a2",
                typing=True,
                expires_in=duration_pb2.Duration(seconds=6, nanos=500_000_000),
            )
        ),
        "key_notice": pb.Event(
            key_notice=pb.KeyNotice(
                kind=pb.KeyNotice.KIND_GROUP_REKEY,
                conversation_id="g1",
                account_ids=["a3"],
                device_id="d1",
            )
        ),
        "media_notice": pb.Event(
            media_notice=pb.MediaNotice(
                kind=pb.MediaNotice.KIND_RESTORE_READY,
                media_id="m9",
                expire_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
            )
        ),
        "export_notice": pb.Event(
            export_notice=pb.ExportNotice(
                kind=pb.ExportNotice.KIND_EXPORT_READY,
                export_id="e1",
                expire_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
                device_id="d1",
            )
        ),
    }


def test_every_event_kind_of_the_proto_has_a_model() -> None:
    kinds = {field.name for field in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields}
    samples = _event_of_every_kind()
    assert set(samples) == kinds, "a new Event kind needs a model and a sample here"
    for kind, proto in samples.items():
        assert event_from_proto(proto) is not None, kind


def test_events_convert_to_their_typed_models() -> None:
    samples = _event_of_every_kind()
    message = event_from_proto(samples["message"])
    assert isinstance(message, MessageEvent)
    assert (message.conversation_id, message.version, message.message.body) == ("c1", 7, b"hi")

    edit = event_from_proto(samples["edit"])
    assert isinstance(edit, MessageEditedEvent)
    assert (edit.conversation_id, edit.version, edit.edit.body) == ("c1", 8, b"x")

    deletion = event_from_proto(samples["deletion"])
    assert isinstance(deletion, MessageDeletedEvent)
    assert deletion.scope is DeleteScope.FOR_EVERYONE
    assert deletion.version == 9

    reaction = event_from_proto(samples["reaction"])
    assert isinstance(reaction, ReactionChangedEvent)
    assert (reaction.reaction.emoji, reaction.version) == ("👍", 10)

    notice = event_from_proto(samples["media_notice"])
    assert isinstance(notice, MediaNoticeEvent)
    assert notice.kind is MediaNoticeKind.RESTORE_READY
    assert notice.media_id == "m9"
    assert notice.expire_time == datetime.fromtimestamp(1_800_000_000, UTC)

    ready = event_from_proto(samples["export_notice"])
    assert ready == ExportNoticeEvent(
        ExportNoticeKind.EXPORT_READY, "e1", datetime.fromtimestamp(1_800_000_000, UTC)
    )

    receipts = event_from_proto(samples["receipts"])
    assert isinstance(receipts, GroupReceiptsEvent)
    assert receipts.conversation_id == "c1"
    assert [w.account_id for w in receipts.watermarks] == ["a2"]

    settings = event_from_proto(samples["settings"])
    assert isinstance(settings, SettingsEvent)
    assert settings.settings.pinned

    assert isinstance(event_from_proto(samples["receipt"]), ReceiptEvent)
    assert isinstance(event_from_proto(samples["conversation"]), ConversationEvent)
    assert event_from_proto(samples["sync_complete"]) == SyncCompleteEvent("tok")
    assert event_from_proto(samples["pong"]) == PongEvent(9)
    assert event_from_proto(samples["typing"]) == TypingIndicatorEvent(
        conversation_id="c1", account_id="a2", typing=True, expires_in=timedelta(seconds=6.5)
    )
    assert event_from_proto(samples["key_notice"]) == KeyNoticeEvent(
        KeyNoticeKind.GROUP_REKEY, conversation_id="g1", account_ids=("a3",), device_id="d1"
    )
    low = event_from_proto(pb.Event(key_notice=pb.KeyNotice(kind=1, pre_key_count=7)))
    assert low == KeyNoticeEvent(KeyNoticeKind.PRE_KEYS_LOW, pre_key_count=7)
    # Without a store nothing decrypts: text and error stay unset.
    assert (message.text, message.decryption_error) == (None, None)


def test_identity_changes_name_the_device_and_decrypted_messages_their_ids() -> None:
    system = event_from_proto(
        pb.Event(
            message=_message(
                type=pb.MESSAGE_TYPE_SYSTEM,
                system=pb.SystemEvent(
                    action=pb.SystemEvent.ACTION_IDENTITY_CHANGED,
                    actor_account_id="a1",
                    device_id="d9",
                ),
            )
        )
    )
    assert isinstance(system, SystemMessageEvent)
    assert system.action is SystemAction.IDENTITY_CHANGED
    assert (system.actor_account_id, system.device_id) == ("a1", "d9")
    decrypted = DecryptedMessage(_message(sender_account_id="a1", sender_device_id="d1"), "hello")
    assert (decrypted.message_id, decrypted.conversation_id, decrypted.seq) == ("m1", "c1", 3)
    assert (decrypted.sender_account_id, decrypted.sender_device_id) == ("a1", "d1")
    assert decrypted.error is None


def test_system_messages_get_their_own_event_with_typed_fields() -> None:
    proto = pb.Event(
        message=_message(
            type=pb.MESSAGE_TYPE_SYSTEM,
            system=pb.SystemEvent(
                action=pb.SystemEvent.ACTION_ROLE_CHANGED,
                actor_account_id="owner",
                target_account_ids=["a2", "a3"],
                role=pb.ROLE_ADMIN,
            ),
        )
    )
    event = event_from_proto(proto)
    assert isinstance(event, SystemMessageEvent)
    assert not isinstance(event, MessageEvent)
    assert event.action is SystemAction.ROLE_CHANGED
    assert event.role is Role.ADMIN
    assert event.actor_account_id == "owner"
    assert event.target_account_ids == ("a2", "a3")
    assert (event.seq, event.version, event.conversation_id) == (3, 7, "c1")


def test_an_event_kind_this_sdk_does_not_know_is_skipped() -> None:
    assert event_from_proto(pb.Event()) is None


def test_only_feed_changes_carry_a_position() -> None:
    samples = _event_of_every_kind()
    positions = {kind: position_of(event_from_proto(p)) for kind, p in samples.items()}  # type: ignore[arg-type]
    assert positions["message"] == ("c1", StreamPosition(seq=3, version=7))
    # Edits, deletions and reactions move the version, never the history seq.
    assert positions["edit"] == ("c1", StreamPosition(seq=0, version=8))
    assert positions["deletion"] == ("c1", StreamPosition(seq=0, version=9))
    assert positions["reaction"] == ("c1", StreamPosition(seq=0, version=10))
    unversioned = ("receipt", "receipts", "conversation", "settings", "sync_complete", "pong")
    for kind in (*unversioned, "typing"):
        assert positions[kind] is None, kind


# -- positions -------------------------------------------------------------------------------


def test_positions_only_move_forward_field_by_field() -> None:
    held = StreamPosition(seq=5, version=9)
    assert held.merged(StreamPosition(seq=4, version=8)) is held
    assert held.merged(StreamPosition(seq=0, version=12)) == StreamPosition(seq=5, version=12)
    assert held.merged(StreamPosition(seq=6, version=3)) == StreamPosition(seq=6, version=9)
    with pytest.raises(ValueError, match=">= 0"):
        StreamPosition(seq=-1)


def test_positions_go_on_the_wire_with_seq_and_version_in_a_stable_order() -> None:
    wire = positions_proto({"b": StreamPosition(2, 5), "a": StreamPosition(seq=1, version=4)})
    assert [(p.conversation_id, p.seq, p.version) for p in wire] == [("a", 1, 4), ("b", 2, 5)]
    assert StreamPosition.from_proto(wire[1]) == StreamPosition(2, 5)


def test_bare_seq_numbers_are_refused_as_positions() -> None:
    # Before change-feed versions, positions were plain seqs; resuming from one
    # now would be silently wrong, so it is an error.
    with pytest.raises(TypeError, match="StreamPosition"):
        positions_proto({"c1": 5})  # type: ignore[dict-item]


# -- inbox settings and results ------------------------------------------------------------


def test_muted_until_reads_the_settings() -> None:
    settings = pb.InboxSettings(conversation_id="c1")
    assert muted_until(settings) is None
    assert not muted_forever(settings)
    settings.muted_until.FromDatetime(datetime(2031, 1, 2, 3, 4, tzinfo=UTC))
    assert muted_until(settings) == datetime(2031, 1, 2, 3, 4, tzinfo=UTC)
    assert not muted_forever(settings)
    settings.muted_until.FromDatetime(datetime(9999, 12, 31, tzinfo=UTC))
    assert muted_forever(settings)


def test_reaction_result_counts_keep_the_server_order() -> None:
    result = ReactionResult(
        reactions=(pb.ReactionCount(emoji="👍", count=3), pb.ReactionCount(emoji="🎉", count=1)),
        changed=True,
    )
    assert list(result.counts.items()) == [("👍", 3), ("🎉", 1)]


def test_the_package_exports_what_it_lists() -> None:
    for name in parley_sdk.__all__:
        assert hasattr(parley_sdk, name), name


# -- presence and push values -----------------------------------------------------------------


def test_presence_converts_times_and_hides_what_is_not_shared() -> None:
    seen = presence_pb2.Presence(account_id="a1", availability=presence_pb2.AVAILABILITY_OFFLINE)
    seen.last_seen_time.FromDatetime(datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
    presence = Presence.from_proto(seen)
    assert presence == Presence(
        "a1", Availability.OFFLINE, last_seen=datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert presence.last_seen is not None and presence.last_seen.tzinfo is not None
    assert not presence.online
    hidden = Presence.from_proto(presence_pb2.Presence(account_id="a2"))
    assert hidden == Presence("a2", Availability.UNKNOWN, last_seen=None)
    online = Presence.from_proto(
        presence_pb2.Presence(account_id="a3", availability=presence_pb2.AVAILABILITY_ONLINE)
    )
    assert online.online


def test_presence_updates_key_by_account_and_keep_the_snapshot_flag() -> None:
    event = presence_pb2.PresenceEvent(
        snapshot=True,
        presences=[
            presence_pb2.Presence(account_id="a1", availability=presence_pb2.AVAILABILITY_ONLINE),
            presence_pb2.Presence(account_id="a2"),
        ],
    )
    update = PresenceUpdate.from_proto(event)
    assert update.snapshot
    assert [p.account_id for p in update.presences] == ["a1", "a2"]
    assert update.by_account["a1"].availability is Availability.ONLINE
    with pytest.raises(TypeError):
        update.by_account["a3"] = update.presences[0]  # type: ignore[index]


def test_presence_settings_and_contacts_convert() -> None:
    proto = presence_pb2.PresenceSettings(
        online=presence_pb2.VISIBILITY_CONTACTS,
        last_seen=presence_pb2.VISIBILITY_NOBODY,
        invisible=True,
    )
    settings = PresenceSettings.from_proto(proto)
    assert settings == PresenceSettings(Visibility.CONTACTS, Visibility.NOBODY, True, None)
    contact = presence_pb2.Contact(account_id="a1")
    assert Contact.from_proto(contact) == Contact("a1", None)
    contact.add_time.FromDatetime(datetime(2030, 5, 6, tzinfo=UTC))
    assert Contact.from_proto(contact).added_at == datetime(2030, 5, 6, tzinfo=UTC)


def test_do_not_disturb_goes_on_the_wire_in_minutes() -> None:
    window = DoNotDisturb(start=time(22, 30), end=time(7), time_zone="Europe/Berlin")
    wire = window.to_proto()
    assert (wire.enabled, wire.start_minute, wire.end_minute, wire.time_zone) == (
        True,
        22 * 60 + 30,
        7 * 60,
        "Europe/Berlin",
    )
    assert DoNotDisturb.from_proto(wire) == window
    assert not DoNotDisturb.off().to_proto().enabled
    settings = PushSettings.from_proto(pb.PushSettings(do_not_disturb=wire))
    assert settings.do_not_disturb == window
    assert settings.updated_at is None
    # Settings never written: quiet hours are off.
    assert not PushSettings.from_proto(pb.PushSettings()).do_not_disturb.enabled


@pytest.mark.parametrize("moment", [time(22, 0, 30), time(22, 0, 0, 5), time(22, 0, tzinfo=UTC)])
def test_do_not_disturb_refuses_what_the_wire_cannot_hold(moment: time) -> None:
    with pytest.raises(ValueError, match="start"):
        DoNotDisturb(start=moment, end=time(7))


def test_push_registration_converts() -> None:
    proto = pb.PushRegistration(device_id="d1", provider=pb.PUSH_PROVIDER_APNS, locale="en-GB")
    proto.update_time.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    registration = PushRegistration.from_proto(proto)
    assert registration == PushRegistration(
        "d1", PushProvider.APNS, "en-GB", datetime(2030, 1, 1, tzinfo=UTC)
    )


def test_a_history_export_converts_and_is_complete_exactly_when_ready() -> None:
    running = HistoryExport.from_proto(
        pb.HistoryExport(
            export_id="e1",
            state=pb.HistoryExport.STATE_RUNNING,
            objects_done=1,
            objects_total=4,
            bytes_done=250,
            bytes_total=1000,
            eta=duration_pb2.Duration(seconds=3),
        )
    )
    assert running.state is ExportState.RUNNING
    assert (running.progress, running.eta, running.conversation_id) == (
        0.25,
        timedelta(seconds=3),
        None,
    )
    assert running.expire_time is None and not running.download_url
    # An empty export is READY with zero bytes, and complete.
    empty = HistoryExport.from_proto(
        pb.HistoryExport(export_id="e2", state=pb.HistoryExport.STATE_READY, objects_total=1)
    )
    assert empty.progress == 1.0
