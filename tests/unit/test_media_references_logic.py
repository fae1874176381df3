"""svc_message's side of media without a stack: the checks of media ids, the
reading rule behind CheckMediaAccess, svc_media's answers as the sender's
errors, the reservation of a send (and its retries), releases, and media
notices routed to one device."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from parley.message.v1 import messages_pb2 as pb
from parley_core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
)
from parley_core.rpc.status import error_from_status, to_grpc_status
from parley_core.validation import Check
from svc_message.domain.conversations import Membership
from svc_message.domain.media import (
    MediaAccess,
    MediaNotices,
    MediaReservations,
    readable_media,
    within_window,
)
from svc_message.domain.streams import StreamSession
from svc_message.model import GROUP, MEMBER, Conversation, EventKind, Message
from svc_message.model.media import MediaNotice, MediaNoticeKind, MediaReference
from svc_message.peers.media import answered
from svc_message.servicer.convert import ProtoEventCodec, message_proto
from svc_message.servicer.media import check_media_ids

AT = datetime(2026, 1, 1, tzinfo=UTC)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
codec = ProtoEventCodec()


# -- media ids in requests ---------------------------------------------------------------


def checked(values: list[str], maximum: int = 16) -> tuple[list[str], list[tuple[str, str]]]:
    check = Check()
    ids = check_media_ids(check, values, maximum=maximum)
    return ids, [(v.field, v.description) for v in check.violations]


def test_repeated_media_ids_collapse_in_their_first_order() -> None:
    ids, problems = checked(["b", "a", "b", "c", "a"])
    assert (ids, problems) == (["b", "a", "c"], [])
    # 16 distinct ids pass however often each repeats.
    many = [f"m{i % 16}" for i in range(40)]
    assert checked(many) == ([f"m{i}" for i in range(16)], [])


def test_more_than_16_distinct_media_ids_name_the_field() -> None:
    ids, problems = checked([f"m{i}" for i in range(17)])
    assert ids == []
    assert problems == [("media_ids", "at most 16 distinct ids, got 17")]


def test_a_bad_media_id_is_named_by_position_never_echoed() -> None:
    huge = "a" * 65_537
    _, problems = checked(["ok", "", huge, "two words", "tab\there", "é", "ok"])
    assert problems == [
        ("media_ids[1]", "required: a media id from MediaService"),
        ("media_ids[2]", "at most 128 characters"),
        ("media_ids[3]", "must be printable ASCII without spaces"),
        ("media_ids[4]", "must be printable ASCII without spaces"),
        ("media_ids[5]", "must be printable ASCII without spaces"),
    ]
    assert all(huge not in description for _, description in problems)
    # 128 characters is still an id; a repeat of a bad one is named once.
    assert checked(["x" * 128])[1] == []
    assert checked(["", ""])[1] == [("media_ids[0]", "required: a media id from MediaService")]


# -- who may read media ---------------------------------------------------------------------

CONVERSATION = Conversation("g", GROUP, ("me",), created_at=AT)


def membership(joined: int = 0, left: int = 0, active: bool = True) -> Membership:
    return Membership(CONVERSATION, "me", MEMBER, active, joined_seq=joined, left_seq=left)


def test_a_member_reads_media_of_messages_within_its_history_window() -> None:
    joined_late = membership(joined=10)
    assert not within_window(joined_late, 9)
    assert within_window(joined_late, 10)
    assert within_window(joined_late, 10_000)
    removed = membership(joined=3, left=8, active=False)
    assert [s for s in range(1, 11) if within_window(removed, s)] == [3, 4, 5, 6, 7, 8]


def test_readable_media_follows_membership_window_and_own_deletes() -> None:
    references = [
        MediaReference("g", 5, ("before-join",)),
        MediaReference("g", 12, ("seen", "also-seen")),
        MediaReference("g", 13, ("hidden",), hidden_for=("me",)),
        MediaReference("g", 14, ("hidden-by-other",), hidden_for=("you",)),
        MediaReference("elsewhere", 1, ("not-a-member",)),
        MediaReference("gone", 1, ("never-member",)),
    ]
    memberships: dict[str, Membership | None] = {"g": membership(joined=10), "gone": None}
    assert readable_media("me", references, memberships) == {
        "seen",
        "also-seen",
        "hidden-by-other",
    }
    # The same media through a second message the account may read.
    references.append(MediaReference("g", 20, ("hidden",)))
    assert "hidden" in readable_media("me", references, memberships)


class References:
    """MessageStore's media queries over a list, in batches of two."""

    def __init__(self, found: list[MediaReference], counts: dict[str, int] | None = None) -> None:
        self.found = found
        self.counts = counts or {}
        self.batches_read = 0
        self.requests: dict[tuple[str, str, str], object] = {}

    async def media_references(self, media_ids: Any, *, limit: int, batch: int = 500) -> Any:
        wanted = set(media_ids)
        matching = [r for r in self.found if wanted & set(r.media_ids)][:limit]
        for i in range(0, len(matching), 2):
            self.batches_read += 1
            yield [
                MediaReference(
                    r.conversation_id, r.seq, tuple(m for m in r.media_ids if m in wanted)
                )
                for r in matching[i : i + 2]
            ]

    async def media_reference_counts(self, media_ids: Any) -> dict[str, int]:
        return {m: n for m, n in self.counts.items() if m in media_ids}

    async def by_request(self, conversation_id: str, sender_id: str, request_id: str) -> Any:
        return self.requests.get((conversation_id, sender_id, request_id))


class Memberships:
    def __init__(self, by_conversation: dict[str, Membership]) -> None:
        self.by_conversation = by_conversation
        self.asked: list[set[str]] = []

    async def memberships(self, account_id: str, conversation_ids: Any) -> dict[str, Membership]:
        self.asked.append(set(conversation_ids))
        return {c: m for c, m in self.by_conversation.items() if c in conversation_ids}


async def test_access_checks_read_memberships_once_and_stop_when_everything_is_readable() -> None:
    found = [
        MediaReference("a", 1, ("m1",)),
        MediaReference("b", 1, ("m1", "m2")),
        MediaReference("a", 2, ("m2",)),
        MediaReference("c", 1, ("m1",)),
        MediaReference("d", 1, ("m2",)),
    ]
    store = References(found)
    members = Memberships({"b": membership()})
    access = MediaAccess(store, members)  # type: ignore[arg-type]
    assert await access.readable("me", ["m1", "m2", "m3"]) == {"m1", "m2"}
    # m3 is named nowhere: every batch is read, but once m1 and m2 are
    # readable, messages naming only them cost no membership reads.
    assert store.batches_read == 3
    assert members.asked == [{"a", "b"}]

    store.batches_read, members.asked = 0, []
    assert await access.readable("me", ["m1", "m2"]) == {"m1", "m2"}
    assert store.batches_read == 1  # both readable after the first batch


async def test_access_checks_look_at_a_bounded_number_of_messages() -> None:
    found = [MediaReference(f"c{i}", 1, ("viral",)) for i in range(10)]
    access = MediaAccess(
        References(found),  # type: ignore[arg-type]
        Memberships({"c9": membership()}),  # type: ignore[arg-type]
        scan_limit=5,
    )
    # Refused wrongly past the bound, never let in wrongly.
    assert await access.readable("me", ["viral"]) == set()


async def test_reference_counts_name_every_id_asked() -> None:
    access = MediaAccess(References([], {"m1": 3}), Memberships({}))  # type: ignore[arg-type]
    assert await access.counts(["m1", "unknown"]) == {"m1": 3, "unknown": 0}


# -- svc_media's answers --------------------------------------------------------------------


def details_of(error: Any) -> status_pb2.Status:
    status = to_grpc_status(error)
    (value,) = [v for k, v in status.trailing_metadata if k == STATUS_DETAILS_KEY]
    return status_pb2.Status.FromString(value)


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no such media", reason=Reason.MEDIA_NOT_FOUND),
        FailedPrecondition("banned", reason=Reason.MEDIA_QUARANTINED),
        InvalidArgument([FieldViolation("media_ids[0]", "not a media id")]),
        ResourceExhausted(
            "over quota",
            reason=Reason.QUOTA_EXCEEDED,
            retry_after_seconds=2.5,
            metadata={"quota": "stored_bytes"},
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_parley_status_comes_back_as_the_same_error(error: Any) -> None:
    back = error_from_status(details_of(error))
    assert back is not None
    assert (type(back), back.code, back.reason, back.message) == (
        type(error),
        error.code,
        error.reason,
        error.message,
    )
    assert back.metadata == error.metadata
    if isinstance(error, InvalidArgument):
        assert back.violations == error.violations  # type: ignore[attr-defined]
    if isinstance(error, ResourceExhausted):
        assert back.retry_after_seconds == 2.5  # type: ignore[attr-defined]


def test_a_status_that_is_not_ours_is_no_parley_error() -> None:
    assert error_from_status(status_pb2.Status(code=14, message="connection refused")) is None
    foreign = details_of(NotFound("x", reason=Reason.MEDIA_NOT_FOUND))
    foreign.code = 99
    assert error_from_status(foreign) is None


def rpc_error(code: grpc.StatusCode, error: Any = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    details = "plain failure"
    if error is not None:
        status = to_grpc_status(error)
        trailing = grpc.aio.Metadata(*status.trailing_metadata)
        details = status.details
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def test_media_refusals_reach_the_sender_and_everything_else_is_unavailable() -> None:
    refusal = NotFound("no such media", reason=Reason.MEDIA_NOT_FOUND)
    passed = answered(rpc_error(grpc.StatusCode.NOT_FOUND, refusal))
    assert (type(passed), passed.reason) == (NotFound, Reason.MEDIA_NOT_FOUND)
    for code, error in [
        (grpc.StatusCode.UNAVAILABLE, None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None),
        (grpc.StatusCode.INTERNAL, None),
        # The services hold different service tokens: not the sender's fault.
        (grpc.StatusCode.UNAUTHENTICATED, None),
        # svc_media's own dependency trouble stays UNAVAILABLE too.
        (grpc.StatusCode.UNAVAILABLE, Unavailable("S3 down")),
    ]:
        mapped = answered(rpc_error(code, error))
        assert isinstance(mapped, Unavailable), code
        assert mapped.reason == Reason.DEPENDENCY_UNAVAILABLE
        assert "media service unavailable" in mapped.message


# -- reserving a send's media ----------------------------------------------------------


class FakeMedia:
    def __init__(self, refuse: Exception | None = None) -> None:
        self.refuse = refuse
        self.reserved: list[dict[str, Any]] = []
        self.released: list[tuple[str, ...]] = []
        self.release_error: Exception | None = None

    async def reserve(self, **call: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.reserved.append(call)

    async def release(self, media_ids: Any) -> None:
        await asyncio.sleep(0)
        if self.release_error is not None:
            raise self.release_error
        self.released.append(tuple(media_ids))


def reservations(
    media: FakeMedia, found: list[MediaReference] | None = None
) -> tuple[MediaReservations, References]:
    store = References(found or [])
    access = MediaAccess(store, Memberships({"other": membership()}))  # type: ignore[arg-type]
    return MediaReservations(access, media, store), store  # type: ignore[arg-type]


async def test_a_send_reserves_its_media_with_what_the_sender_can_read_already() -> None:
    media = FakeMedia()
    reserve, _ = reservations(media, [MediaReference("other", 4, ("forwarded",))])
    await reserve.reserve(
        account_id="me", conversation_id="c", media_ids=["mine", "forwarded"], request_id="r"
    )
    assert media.reserved == [
        {
            "account_id": "me",
            "conversation_id": "c",
            "media_ids": ["mine", "forwarded"],
            "readable_media_ids": ["forwarded"],
        }
    ]


async def test_a_refused_reservation_fails_the_send_unless_it_is_a_committed_retry() -> None:
    media = FakeMedia(refuse=FailedPrecondition("banned", reason=Reason.MEDIA_QUARANTINED))
    reserve, store = reservations(media)
    with pytest.raises(FailedPrecondition):
        await reserve.reserve(account_id="me", conversation_id="c", media_ids=["m"], request_id="r")
    # The first attempt of "r" is in the log: the retry gets its answer.
    store.requests[("c", "me", "r")] = object()
    await reserve.reserve(account_id="me", conversation_id="c", media_ids=["m"], request_id="r")
    media.refuse = Unavailable("down")
    await reserve.reserve(account_id="me", conversation_id="c", media_ids=["m"], request_id="r")
    with pytest.raises(Unavailable):
        await reserve.reserve(
            account_id="me", conversation_id="c", media_ids=["m"], request_id="other"
        )
    assert reserve.refused == 2


async def test_releases_happen_behind_the_answer_and_failures_are_only_counted() -> None:
    media = FakeMedia()
    reserve, _ = reservations(media)
    reserve.release_later(["m1", "m2"])
    reserve.release_later([])
    assert media.released == []  # not yet: behind the delete's answer
    await reserve.drain()
    assert media.released == [("m1", "m2")]
    media.release_error = Unavailable("down")
    reserve.release_later(["m3"])
    await reserve.drain()
    assert reserve.release_failures == 1


async def test_pending_releases_are_bounded() -> None:
    media = FakeMedia()
    store = References([])
    access = MediaAccess(store, Memberships({}))  # type: ignore[arg-type]
    reserve = MediaReservations(access, media, store, max_pending_releases=2)  # type: ignore[arg-type]
    for i in range(3):
        reserve.release_later([f"m{i}"])
    await reserve.drain()
    assert media.released == [("m0",), ("m1",)]
    assert reserve.release_failures == 1


# -- media notices ----------------------------------------------------------------------------


class Published:
    def __init__(self, taken: bool = True) -> None:
        self.taken = taken
        self.broadcasts: list[Any] = []

    async def publish(self, broadcasts: Any) -> bool:
        self.broadcasts.extend(broadcasts)
        return self.taken


async def test_a_media_notice_goes_to_the_account_channel_for_one_device() -> None:
    bus = Published()
    notices = MediaNotices(bus, codec)
    notice = MediaNotice(MediaNoticeKind.RESTORE_READY, "m1", expire_at=AT)
    await notices.notify(account_id="me", device_id="phone", notice=notice)
    (broadcast,) = bus.broadcasts
    assert (broadcast.accounts, broadcast.conversations) == (("me",), ())
    envelope = codec.decode(broadcast.payload)
    assert envelope is not None
    assert (envelope.kind, envelope.device_id, envelope.version) == (
        EventKind.MEDIA_NOTICE,
        "phone",
        0,
    )
    event = pb.Event.FromString(broadcast.payload)
    assert event.media_notice.kind == pb.MediaNotice.KIND_RESTORE_READY
    assert event.media_notice.media_id == "m1"
    assert event.media_notice.expire_time.ToDatetime(tzinfo=UTC) == AT

    with pytest.raises(Unavailable):
        await MediaNotices(Published(taken=False), codec).notify(
            account_id="me", device_id="phone", notice=notice
        )


async def test_a_session_shows_media_notices_for_its_own_device_only() -> None:
    phone = StreamSession(account_id="me", device_id="phone", expires_at=1e12, queue_limit=8)
    for device_id in ("laptop", "phone"):
        phone.offer(codec.media_notice(device_id, MediaNotice(1, f"for-{device_id}")))
    taken = await phone.next_batch(clock=lambda: 0.0)
    assert [e.wire.media_notice.media_id for e in taken] == ["for-phone"]  # type: ignore[attr-defined]


def test_media_ids_survive_the_message_codec() -> None:
    message = Message(
        message_id="m",
        conversation_id="c",
        seq=1,
        sender_account_id="a",
        sender_device_id="d",
        type=1,
        body=b"x",
        reply_to_message_id="",
        created_at=AT,
        media_ids=("m1", "m2"),
    )
    assert list(message_proto(message).media_ids) == ["m1", "m2"]
    envelope = codec.decode(codec.encode(codec.message(message)))
    assert envelope is not None
    assert list(envelope.wire.message.media_ids) == ["m1", "m2"]  # type: ignore[attr-defined]
    entry = pb.ListMessagesResponse.FromString(codec.history_entry(codec.message(message)))
    assert list(entry.messages[0].media_ids) == ["m1", "m2"]
