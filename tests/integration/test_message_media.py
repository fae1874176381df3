"""svc_message's side of media over a real stack (two svc_message processes,
SecantusDB, Redis): media ids on messages, their reservation and release at
svc_media, and MessageInternalService.

svc_media is a fake here: a MediaReferenceService served over real gRPC on a
free port by the test, which the stack's ``message.media_target`` points at.
It checks the service credential, records every call and refuses the ids a
test tells it to, with the errors svc_media answers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.media.v1 import references_pb2 as rpb
from parley.media.v1 import references_pb2_grpc as rgrpc
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ParleyError,
    Reason,
)
from parley_core.rpc.interceptor import bearer_token
from parley_core.rpc.status import to_grpc_status
from parley_dev.stack import LocalStack
from tests.helpers import TEST_LIMITS, auth, wait_until
from tests.users import (
    Device,
    Stream,
    all_messages,
    direct,
    error_fields,
    error_reason,
    link_device,
    open_stream,
    rid,
    rpc,
    send,
    sign_up_many,
    synced,
)

FOR_ME, FOR_EVERYONE = mpb.DELETE_SCOPE_FOR_ME, mpb.DELETE_SCOPE_FOR_EVERYONE
RESTORE_READY = mpb.MediaNotice.KIND_RESTORE_READY


@dataclass
class FakeMedia(rgrpc.MediaReferenceServiceServicer):
    """svc_media's MediaReferenceService as svc_message meets it."""

    token: Callable[[], str] = lambda: ""
    reserves: list[rpb.ReserveReferencesRequest] = field(default_factory=list)
    releases: list[list[str]] = field(default_factory=list)
    refusals: dict[str, ParleyError] = field(default_factory=dict)

    async def _authorize(self, context: Any) -> None:
        if bearer_token(context.invocation_metadata()) != self.token():
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "service credential required")

    async def ReserveReferences(
        self, request: rpb.ReserveReferencesRequest, context: Any
    ) -> rpb.ReserveReferencesResponse:
        await self._authorize(context)
        self.reserves.append(request)
        for media_id in request.media_ids:
            if media_id in self.refusals:
                await context.abort_with_status(to_grpc_status(self.refusals[media_id]))
        return rpb.ReserveReferencesResponse()

    async def ReleaseReferences(
        self, request: rpb.ReleaseReferencesRequest, context: Any
    ) -> rpb.ReleaseReferencesResponse:
        await self._authorize(context)
        self.releases.append(list(request.media_ids))
        return rpb.ReleaseReferencesResponse()

    def reserved_in(self, conversation_id: str) -> list[rpb.ReserveReferencesRequest]:
        return [r for r in self.reserves if r.conversation_id == conversation_id]


@dataclass
class World:
    stack: LocalStack
    media: FakeMedia
    media_server: grpc.aio.Server
    keys: kgrpc.AccountServiceStub
    # One stub per svc_message process.
    messages: list[mgrpc.MessageServiceStub]
    internal: igrpc.MessageInternalServiceStub

    @property
    def service_md(self) -> tuple[tuple[str, str], ...]:
        return auth(self.stack.service_token)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    media = FakeMedia()
    server = grpc.aio.server()
    rgrpc.add_MediaReferenceServiceServicer_to_server(media, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    root: Path = tmp_path_factory.mktemp("media_stack")
    stack = LocalStack.with_free_ports(
        root=root,
        message_instances=2,
        shutdown_grace_seconds=2.0,
        extra_config={**TEST_LIMITS, "message": {"media_target": f"127.0.0.1:{port}"}},
    )
    media.token = lambda: stack.service_token
    channels = [grpc.aio.insecure_channel(t) for t in (stack.keys_target, *stack.message_targets)]
    try:
        await stack.start()
        yield World(
            stack=stack,
            media=media,
            media_server=server,
            keys=kgrpc.AccountServiceStub(channels[0]),
            messages=[mgrpc.MessageServiceStub(c) for c in channels[1:]],
            internal=igrpc.MessageInternalServiceStub(channels[1]),
        )
    finally:
        for channel in channels:
            await channel.close()
        await stack.stop()
        await server.stop(grace=None)


async def send_media(
    stub: mgrpc.MessageServiceStub,
    device: Device,
    conversation_id: str,
    media_ids: list[str],
    *,
    request_id: str | None = None,
    forwarded: bool = False,
) -> mpb.Message:
    reply = await stub.SendMessage(
        mpb.SendMessageRequest(
            request_id=request_id or rid(),
            conversation_id=conversation_id,
            type=mpb.MESSAGE_TYPE_IMAGE,
            body=b"ciphertext with attachment pointers",
            media_ids=media_ids,
            forwarded=forwarded,
        ),
        metadata=device.md,
    )
    return reply.message


async def refused(call: Any) -> grpc.aio.AioRpcError:
    try:
        answer = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {answer!r:.300}")


async def newest(stub: mgrpc.MessageServiceStub, device: Device, conversation_id: str) -> Any:
    page = await stub.ListMessages(
        mpb.ListMessagesRequest(conversation_id=conversation_id, page_size=50), metadata=device.md
    )
    return list(page.messages)


async def readable(w: World, account: Device, media_ids: list[str]) -> list[str]:
    answer = await w.internal.CheckMediaAccess(
        ipb.CheckMediaAccessRequest(account_id=account.account_id, media_ids=media_ids),
        metadata=w.service_md,
    )
    return list(answer.readable_media_ids)


async def counts(w: World, media_ids: list[str]) -> dict[str, int]:
    answer = await w.internal.CountMediaReferences(
        ipb.CountMediaReferencesRequest(media_ids=media_ids), metadata=w.service_md
    )
    return dict(answer.references)


# -- media ids on messages -------------------------------------------------------------------


async def test_a_send_with_media_carries_its_ids_in_every_answer(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    stream: Stream = await open_stream(w.messages[1], bob)
    try:
        await stream.wait_for(synced)
        sent = await send_media(w.messages[0], alice, conversation, ["m-a1", "m-a2", "m-a1"])
        assert list(sent.media_ids) == ["m-a1", "m-a2"]
        (reserve,) = w.media.reserved_in(conversation)
        assert (reserve.account_id, list(reserve.media_ids), list(reserve.readable_media_ids)) == (
            alice.account_id,
            ["m-a1", "m-a2"],
            [],
        )
        await stream.wait_for(lambda s: len(s.messages(conversation)) == 1)
        assert list(stream.messages(conversation)[0].media_ids) == ["m-a1", "m-a2"]

        # History from the log, then from the recent cache the first read filled.
        redis = Redis.from_url(w.stack.redis_url)
        try:
            for stub in w.messages:
                from_log = await newest(stub, bob, conversation)
                assert await redis.exists(f"parley:recent:{conversation}")
                from_cache = await newest(stub, alice, conversation)
                assert [list(m.media_ids) for m in (*from_log, *from_cache)] == [
                    ["m-a1", "m-a2"]
                ] * 2
        finally:
            await redis.aclose()
        # A resumed device replays it from the log with its media.
        replay = await open_stream(w.messages[0], bob)
        try:
            await replay.wait_for(synced)
            assert [list(m.media_ids) for m in replay.messages(conversation)] == [["m-a1", "m-a2"]]
        finally:
            await replay.close()
    finally:
        await stream.close()


async def test_sends_without_media_never_reach_svc_media(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    before = len(w.media.reserves)
    for stub in w.messages:
        message = await send(stub, alice, conversation, b"text only")
        assert list(message.media_ids) == []
    assert len(w.media.reserves) == before


async def test_media_ids_are_checked_before_anything_else(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    for bad, fields in [
        ([f"m{i}" for i in range(17)], ["media_ids"]),
        (["ok", "", "has space"], ["media_ids[1]", "media_ids[2]"]),
        (["x" * 129], ["media_ids[0]"]),
    ]:
        error = await refused(send_media(w.messages[0], alice, conversation, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_fields(error) == fields
    assert w.media.reserved_in(conversation) == []
    # An outsider learns nothing about media either.
    (mallory,) = await sign_up_many(w.keys, 1)
    error = await refused(send_media(w.messages[0], mallory, conversation, ["m-x"]))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert w.media.reserved_in(conversation) == []


async def test_svc_media_refusals_reach_the_sender_unchanged_through_either_process(
    world: World,
) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    w.media.refusals.update(
        {
            "missing-1": NotFound("no such media", reason=Reason.MEDIA_NOT_FOUND),
            "banned-1": FailedPrecondition("quarantined", reason=Reason.MEDIA_QUARANTINED),
            "malformed-1": InvalidArgument([FieldViolation("media_ids", "not a media id")]),
        }
    )
    cases = [
        ("missing-1", grpc.StatusCode.NOT_FOUND, "ERROR_REASON_MEDIA_NOT_FOUND", []),
        ("banned-1", grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_MEDIA_QUARANTINED", []),
        (
            "malformed-1",
            grpc.StatusCode.INVALID_ARGUMENT,
            "ERROR_REASON_INVALID_FIELD",
            ["media_ids"],
        ),
    ]
    # One of the two processes owns the conversation: the other forwards.
    for stub in w.messages:
        for media_id, code, reason, fields in cases:
            error = await refused(send_media(stub, alice, conversation, ["fine", media_id]))
            assert (error.code(), error_reason(error), error_fields(error)) == (
                code,
                reason,
                fields,
            ), media_id
    assert await newest(w.messages[0], alice, conversation) == []
    # Reserved once per send, where it was handled.
    assert len(w.media.reserved_in(conversation)) == 2 * len(cases)


async def test_the_owner_reserves_once_per_send_whichever_process_takes_it(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversations = [await direct(w.messages[0], alice, b) for b in await sign_up_many(w.keys, 4)]
    conversations.append(await direct(w.messages[0], alice, bob))
    for conversation in conversations:
        # Each conversation has one owner: one of these two sends is forwarded.
        for i, stub in enumerate(w.messages):
            message = await send_media(stub, alice, conversation, [f"m-own-{i}"])
            assert list(message.media_ids) == [f"m-own-{i}"]
        reserved = w.media.reserved_in(conversation)
        assert [list(r.media_ids) for r in reserved] == [["m-own-0"], ["m-own-1"]]


async def test_a_retried_send_is_answered_even_after_its_media_changed(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    request_id = rid()
    first = await send_media(w.messages[0], alice, conversation, ["m-retry"], request_id=request_id)
    # Quarantined (or collected) since: the answer was lost, the client retries.
    w.media.refusals["m-retry"] = FailedPrecondition("banned", reason=Reason.MEDIA_QUARANTINED)
    for stub in w.messages:
        again = await send_media(stub, alice, conversation, ["m-retry"], request_id=request_id)
        assert (again.message_id, list(again.media_ids)) == (first.message_id, ["m-retry"])
    error = await refused(send_media(w.messages[0], alice, conversation, ["m-retry"]))
    assert error_reason(error) == "ERROR_REASON_MEDIA_QUARANTINED"
    assert [m.message_id for m in await all_messages(w.messages[0], alice, conversation)] == [
        first.message_id
    ]


async def test_a_forward_names_the_media_its_sender_can_read(world: World) -> None:
    w = world
    alice, bob, carol, dave, erin = await sign_up_many(w.keys, 5)
    first = await direct(w.messages[0], alice, bob)
    await send_media(w.messages[0], alice, first, ["m-fwd"])
    onward = await direct(w.messages[0], bob, carol)
    await send_media(w.messages[1], bob, onward, ["m-fwd", "m-bobs"], forwarded=True)
    (reserve,) = w.media.reserved_in(onward)
    assert list(reserve.readable_media_ids) == ["m-fwd"]
    # Someone who never saw it names it: nothing readable (svc_media refuses
    # unless it is their own upload).
    elsewhere = await direct(w.messages[0], dave, erin)
    await send_media(w.messages[0], dave, elsewhere, ["m-fwd"])
    (reserve,) = w.media.reserved_in(elsewhere)
    assert list(reserve.readable_media_ids) == []


async def test_deleted_for_everyone_clears_the_media_ids_and_releases_them(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    stream = await open_stream(w.messages[1], bob)
    try:
        await stream.wait_for(synced)
        message = await send_media(w.messages[0], alice, conversation, ["m-del1", "m-del2"])
        await send_media(w.messages[0], alice, conversation, ["m-del2"])
        assert await newest(w.messages[0], bob, conversation)  # fills the recent cache
        assert await counts(w, ["m-del1", "m-del2"]) == {"m-del1": 1, "m-del2": 2}
        assert await readable(w, bob, ["m-del1", "m-del2"]) == ["m-del1", "m-del2"]

        await rpc(
            w.messages[1],
            "DeleteMessage",
            alice,
            conversation_id=conversation,
            message_id=message.message_id,
            scope=FOR_EVERYONE,
        )

        async def released() -> bool:
            return ["m-del1", "m-del2"] in w.media.releases

        await wait_until(released, timeout=10, what="the release at svc_media")
        for stub in w.messages:
            # The recent cache (updated at the delete), then the log.
            for device in (alice, bob):
                shown = {m.message_id: m for m in await newest(stub, device, conversation)}
                gone = shown[message.message_id]
                assert (gone.deleted, list(gone.media_ids), gone.body) == (True, [], b"")
        log = {m.message_id: m for m in await all_messages(w.messages[0], bob, conversation)}
        assert list(log[message.message_id].media_ids) == []
        await stream.wait_for(lambda s: "deletion" in s.kinds())
        assert await counts(w, ["m-del1", "m-del2"]) == {"m-del1": 0, "m-del2": 1}
        assert await readable(w, bob, ["m-del1", "m-del2"]) == ["m-del2"]
        # Deleting it again releases nothing more.
        before = len(w.media.releases)
        await rpc(
            w.messages[0],
            "DeleteMessage",
            alice,
            conversation_id=conversation,
            message_id=message.message_id,
            scope=FOR_EVERYONE,
        )
        assert len(w.media.releases) == before
    finally:
        await stream.close()


# -- MessageInternalService ---------------------------------------------------------------


async def test_check_media_access_follows_what_each_account_may_read(world: World) -> None:
    w = world
    stub = w.messages[0]
    alice, bob, carol, erin, frank = await sign_up_many(w.keys, 5)
    group = await rpc(
        stub,
        "CreateGroup",
        alice,
        title="media",
        member_account_ids=[bob.account_id, carol.account_id],
    )
    group_id = group.conversation.conversation_id
    await send_media(stub, alice, group_id, ["m-early"])
    await rpc(stub, "RemoveMember", alice, conversation_id=group_id, account_id=carol.account_id)
    await send_media(stub, alice, group_id, ["m-late"])
    hidden = await send_media(stub, alice, group_id, ["m-hidden"])
    await rpc(
        stub,
        "DeleteMessage",
        bob,
        conversation_id=group_id,
        message_id=hidden.message_id,
        scope=FOR_ME,
    )
    await rpc(stub, "AddMembers", alice, conversation_id=group_id, account_ids=[erin.account_id])
    asked = ["m-early", "m-late", "m-hidden", "m-nowhere"]
    assert await readable(w, alice, asked) == ["m-early", "m-late", "m-hidden"]
    # Deleted for himself: not through that message.
    assert await readable(w, bob, asked) == ["m-early", "m-late"]
    # Removed: up to the removal only.
    assert await readable(w, carol, asked) == ["m-early"]
    # Joined later: history starts at the join.
    assert await readable(w, erin, asked) == []
    assert await readable(w, frank, asked) == []
    # Any message the account may read will do: erin gets m-early through a
    # later message of the group.
    await send_media(stub, bob, group_id, ["m-early"], forwarded=True)
    assert await readable(w, erin, asked) == ["m-early"]


async def test_count_media_references_counts_messages_not_deleted_for_everyone(
    world: World,
) -> None:
    w = world
    alice, bob, carol = await sign_up_many(w.keys, 3)
    one = await direct(w.messages[0], alice, bob)
    two = await direct(w.messages[0], alice, carol)
    sent = [await send_media(w.messages[0], alice, c, ["m-count"]) for c in (one, one, two)]
    await send_media(w.messages[0], bob, one, ["m-count", "m-count-other"])
    assert await counts(w, ["m-count", "m-count-other", "m-count-none"]) == {
        "m-count": 4,
        "m-count-other": 1,
        "m-count-none": 0,
    }
    # Deleted for one account only: still referenced.
    await rpc(
        w.messages[0],
        "DeleteMessage",
        bob,
        conversation_id=one,
        message_id=sent[0].message_id,
        scope=FOR_ME,
    )
    assert (await counts(w, ["m-count"]))["m-count"] == 4
    await rpc(
        w.messages[0],
        "DeleteMessage",
        alice,
        conversation_id=two,
        message_id=sent[2].message_id,
        scope=FOR_EVERYONE,
    )
    assert (await counts(w, ["m-count"]))["m-count"] == 3


def media_notices(stream: Stream) -> list[mpb.MediaNotice]:
    return [e.media_notice for e in stream.events if e.WhichOneof("kind") == "media_notice"]


async def test_notify_device_reaches_that_device_and_no_other(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    laptop = await link_device(w.keys, alice)
    streams = [
        await open_stream(w.messages[0], alice),
        await open_stream(w.messages[1], laptop),
        await open_stream(w.messages[0], bob),
    ]
    phone_s, laptop_s, bob_s = streams
    try:
        for stream in streams:
            await stream.wait_for(synced)

        async def notify(device: Device, media_id: str) -> None:
            notice = mpb.MediaNotice(kind=RESTORE_READY, media_id=media_id)
            notice.expire_time.FromSeconds(2_000_000_000)
            await w.internal.NotifyDevice(
                ipb.NotifyDeviceRequest(
                    account_id=device.account_id, device_id=device.device_id, notice=notice
                ),
                metadata=w.service_md,
            )

        await notify(alice, "for-phone")
        # Barriers: each stream's own notice comes after the one it must not see.
        await notify(laptop, "for-laptop")
        await notify(bob, "for-bob")
        await laptop_s.wait_for(lambda s: len(media_notices(s)) == 1)
        await bob_s.wait_for(lambda s: len(media_notices(s)) == 1)
        await phone_s.wait_for(lambda s: len(media_notices(s)) == 1)
        (phone_notice,) = media_notices(phone_s)
        assert (phone_notice.kind, phone_notice.media_id, phone_notice.device_id) == (
            RESTORE_READY,
            "for-phone",
            alice.device_id,
        )
        assert phone_notice.expire_time.seconds == 2_000_000_000
        assert [n.media_id for n in media_notices(laptop_s)] == ["for-laptop"]
        assert [n.media_id for n in media_notices(bob_s)] == ["for-bob"]
        # Not part of the feed: nothing to ack or resume from.
        assert phone_s.versions() == {}
        assert all(s.error is None for s in streams)
    finally:
        for stream in streams:
            await stream.close()


async def test_the_internal_service_takes_only_the_service_credential(world: World) -> None:
    w = world
    (alice,) = await sign_up_many(w.keys, 1)
    calls = {
        "CheckMediaAccess": lambda md: w.internal.CheckMediaAccess(
            ipb.CheckMediaAccessRequest(account_id=alice.account_id, media_ids=["m"]), metadata=md
        ),
        "CountMediaReferences": lambda md: w.internal.CountMediaReferences(
            ipb.CountMediaReferencesRequest(media_ids=["m"]), metadata=md
        ),
        "NotifyDevice": lambda md: w.internal.NotifyDevice(
            ipb.NotifyDeviceRequest(
                account_id=alice.account_id,
                device_id=alice.device_id,
                notice=mpb.MediaNotice(kind=RESTORE_READY, media_id="m"),
            ),
            metadata=md,
        ),
        "CheckSearchMessages": lambda md: w.internal.CheckSearchMessages(
            ipb.CheckSearchMessagesRequest(
                account_id=alice.account_id, conversation_ids=[str(uuid.uuid4())]
            ),
            metadata=md,
        ),
        # Alice is this test's own: the last call (with the credential) erases her.
        "EraseAccount": lambda md: w.internal.EraseAccount(
            ipb.EraseAccountRequest(
                account_id=alice.account_id,
                device_ids=[alice.device_id],
                erasure_id="erasure-of-a-test-account",
            ),
            metadata=md,
        ),
    }
    assert set(calls) == {
        m.name for m in ipb.DESCRIPTOR.services_by_name["MessageInternalService"].methods
    }
    for name, call in calls.items():
        for metadata in (alice.md, (), auth("not-the-service-token-" + "x" * 40)):
            error = await refused(call(metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
        await call(w.service_md)
    # The service credential is no access token either.
    error = await refused(
        w.messages[0].ListConversations(mpb.ListConversationsRequest(), metadata=w.service_md)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_internal_service_checks_its_requests(world: World) -> None:
    w = world
    (alice,) = await sign_up_many(w.keys, 1)
    cases = [
        (
            w.internal.CheckMediaAccess(
                ipb.CheckMediaAccessRequest(
                    account_id=alice.account_id, media_ids=[f"m{i}" for i in range(65)]
                ),
                metadata=w.service_md,
            ),
            ["media_ids"],
        ),
        (
            w.internal.CheckMediaAccess(
                ipb.CheckMediaAccessRequest(account_id="nobody", media_ids=["m", ""]),
                metadata=w.service_md,
            ),
            ["account_id", "media_ids[1]"],
        ),
        (
            w.internal.CountMediaReferences(
                ipb.CountMediaReferencesRequest(media_ids=[f"m{i}" for i in range(257)]),
                metadata=w.service_md,
            ),
            ["media_ids"],
        ),
        (
            w.internal.NotifyDevice(
                ipb.NotifyDeviceRequest(account_id=alice.account_id, device_id=alice.device_id),
                metadata=w.service_md,
            ),
            ["notice"],
        ),
        (
            w.internal.NotifyDevice(
                ipb.NotifyDeviceRequest(
                    account_id=alice.account_id, notice=mpb.MediaNotice(media_id="m")
                ),
                metadata=w.service_md,
            ),
            ["device_id", "notice.kind"],
        ),
    ]
    for call, fields in cases:
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_fields(error) == fields
    # 64 and 256 ids are fine, repeats collapse.
    many = [f"m{i % 64}" for i in range(100)]
    assert await readable(w, alice, many) == []
    assert len(await counts(w, [f"m{i}" for i in range(256)])) == 256


# -- svc_media down: last, it stops the fake for good ----------------------------------------


async def test_svc_media_down_fails_only_sends_with_media(world: World) -> None:
    w = world
    alice, bob = await sign_up_many(w.keys, 2)
    conversation = await direct(w.messages[0], alice, bob)
    with_media = await send_media(w.messages[0], alice, conversation, ["m-down"])
    await w.media_server.stop(grace=None)
    for stub in w.messages:
        error = await refused(send_media(stub, alice, conversation, ["m-down"]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error) == "ERROR_REASON_DEPENDENCY_UNAVAILABLE"
        assert "media service unavailable" in (error.details() or "")
        # Messaging goes on.
        await send(stub, alice, conversation, b"still here")
    # A delete for everyone does not wait for the release it cannot make.
    await rpc(
        w.messages[1],
        "DeleteMessage",
        alice,
        conversation_id=conversation,
        message_id=with_media.message_id,
        scope=FOR_EVERYONE,
    )
    history = await all_messages(w.messages[0], bob, conversation)
    assert [m.body for m in history] == [b"", b"still here", b"still here"]
