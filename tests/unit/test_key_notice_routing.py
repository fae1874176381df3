"""svc_message's side of key notices, without a stack: decoding, per-device
routing, derived re-key notices, the prekey read at connect, and the
identity-change system message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from parley.message.v1 import messages_pb2 as pb
from svc_message.domain.delivery import DeliveryService
from svc_message.domain.identity_notices import identity_changed, request_id_for
from svc_message.domain.projection import commits_of
from svc_message.domain.streams import StreamSession
from svc_message.model import (
    CHANNEL,
    GROUP,
    SYSTEM,
    Change,
    ChangeKind,
    Conversation,
    Envelope,
    EventKind,
    Message,
    SystemAction,
    SystemEvent,
)
from svc_message.servicer.convert import ProtoEventCodec, message_proto

codec = ProtoEventCodec()
AT = datetime(2026, 1, 1, tzinfo=UTC)


def session(account_id: str = "me", device_id: str = "phone") -> StreamSession:
    return StreamSession(account_id=account_id, device_id=device_id, expires_at=1e12, queue_limit=8)


def notice_payload(**fields: Any) -> bytes:
    return pb.Event(key_notice=pb.KeyNotice(**fields)).SerializeToString()


def test_key_notices_decode_to_envelopes_for_their_device() -> None:
    payload = notice_payload(
        kind=pb.KeyNotice.KIND_SENDER_KEYS_WAITING, conversation_id="g", device_id="phone"
    )
    envelope = codec.decode(payload)
    assert envelope is not None
    assert (envelope.kind, envelope.device_id, envelope.conversation_id) == (
        EventKind.KEY_NOTICE,
        "phone",
        "g",
    )
    assert (envelope.version, envelope.size) == (0, len(payload))
    assert codec.encode(envelope) == payload


async def test_a_session_takes_notices_for_its_device_or_for_every_device() -> None:
    phone = session()
    for device_id in ("phone", "laptop", ""):
        envelope = codec.decode(
            notice_payload(kind=pb.KeyNotice.KIND_PRE_KEYS_LOW, device_id=device_id)
        )
        assert envelope is not None
        phone.offer(envelope)
    taken = await phone.next_batch(clock=lambda: 0.0)
    assert [e.device_id for e in taken] == ["phone", ""]


def system_message(action: int, actor: str, targets: tuple[str, ...], cid: str = "g") -> Message:
    return Message(
        message_id="m",
        conversation_id=cid,
        seq=5,
        sender_account_id=actor,
        sender_device_id="d",
        type=SYSTEM,
        body=b"",
        reply_to_message_id="",
        created_at=AT,
        version=7,
        system=SystemEvent(action, actor, targets),
    )


def delivery(**ports: Any) -> DeliveryService:
    return DeliveryService(
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        codec,
        queue_limit=8,
        queue_bytes=1 << 20,
        replay_page_size=10,
        clock=lambda: 0.0,
        **ports,
    )


def kinds(batch: list[Envelope]) -> list[str]:
    return [cast(pb.Event, e.wire).WhichOneof("kind") or "" for e in batch]


def test_a_departure_from_a_group_is_followed_by_a_rekey_notice_for_those_who_stay() -> None:
    service = delivery()
    removed = codec.message(system_message(SystemAction.MEMBER_REMOVED, "owner", ("carol",)))
    left = codec.message(system_message(SystemAction.MEMBER_LEFT, "dave", ("dave",)))
    plain = codec.message(system_message(SystemAction.INFO_CHANGED, "owner", ()))

    staying = session("bob")
    staying.follow("g", kind=GROUP, position=0, own_last=0)
    out = service._with_rekeys(staying, [removed, plain, left])
    assert kinds(out) == ["message", "key_notice", "message", "message", "key_notice"]
    first, second = (cast(pb.Event, e.wire).key_notice for e in (out[1], out[4]))
    assert (first.kind, first.conversation_id, list(first.account_ids)) == (
        pb.KeyNotice.KIND_GROUP_REKEY,
        "g",
        ["carol"],
    )
    assert (list(second.account_ids), second.device_id) == (["dave"], "")

    leaving = session("carol")
    leaving.follow("g", kind=GROUP, position=0, own_last=0)
    assert kinds(service._with_rekeys(leaving, [removed])) == ["message"]

    channel = session("bob")
    channel.follow("g", kind=CHANNEL, position=0, own_last=0)
    assert kinds(service._with_rekeys(channel, [left])) == ["message"]


class PreKeys:
    def __init__(self, count: int | None = None, error: Exception | None = None) -> None:
        self.count = count
        self.error = error
        self.asked: list[str] = []

    async def low_count(self, device_id: str) -> int | None:
        self.asked.append(device_id)
        if self.error is not None:
            raise self.error
        return self.count


async def test_the_prekey_read_at_connect_tells_a_low_device_and_never_fails_the_stream() -> None:
    low = PreKeys(count=4)
    [notice] = await delivery(pre_keys=low)._low_on_pre_keys(session())
    event = cast(pb.Event, notice.wire).key_notice
    assert (event.kind, event.pre_key_count, event.device_id) == (
        pb.KeyNotice.KIND_PRE_KEYS_LOW,
        4,
        "phone",
    )
    assert low.asked == ["phone"]
    assert await delivery(pre_keys=PreKeys(count=None))._low_on_pre_keys(session()) == []
    broken = PreKeys(error=ConnectionError("database unreachable"))
    assert await delivery(pre_keys=broken)._low_on_pre_keys(session()) == []
    assert broken.asked == ["phone"]


class Claimed:
    change_id = "c0ffee"
    account_id = "alice"
    device_id = "laptop"


def test_an_identity_change_is_a_system_message_from_the_account_and_device() -> None:
    conversation = Conversation("g", GROUP, ("alice", "bob"), AT)
    change = identity_changed(conversation, Claimed())
    again = identity_changed(conversation, Claimed())
    assert change.request_id == again.request_id == request_id_for("c0ffee")
    assert change.account_id == "alice"
    message = change.message
    assert message is not None
    assert (message.sender_account_id, message.sender_device_id) == ("alice", "laptop")
    proto = message_proto(message).system
    assert (proto.action, proto.actor_account_id, proto.device_id) == (
        pb.SystemEvent.ACTION_IDENTITY_CHANGED,
        "alice",
        "laptop",
    )


def test_an_identity_change_does_not_count_as_read_by_its_sender() -> None:
    changed = system_message(SystemAction.IDENTITY_CHANGED, "alice", ())
    left = system_message(SystemAction.MEMBER_LEFT, "alice", ("alice",))
    [commit] = commits_of([Change(ChangeKind.SYSTEM, "g", 7, "x", "alice", AT, message=changed)])
    assert commit.sent == {}
    assert commit.newest is not None and commit.newest.seq == 5
    [commit] = commits_of([Change(ChangeKind.SYSTEM, "g", 7, "x", "alice", AT, message=left)])
    assert commit.sent == {"alice": 5}
