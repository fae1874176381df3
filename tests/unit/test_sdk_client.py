"""The SDK client's new calls without servers: requests, retries, pagers, typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    ArchiveFilter,
    Client,
    Credentials,
    DeleteScope,
    Direction,
    ErrorReason,
    FailedPreconditionError,
    GroupFullError,
    InternalError,
    LastOwnerError,
    MessageDeletedError,
    MessageType,
    NotTheSenderError,
    ParleyError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    Role,
    RoleRequiredError,
    TooManyPinsError,
    WrongConversationTypeError,
    from_rpc_error,
)
from parley_sdk._conversations import set_muted_request
from parley_sdk._session import Session

Responder = Callable[[Any], Any]


def rpc_error(code: grpc.StatusCode, reason: str = "") -> aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message="nope")
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="parley.dev"))
        status.details.append(info)
    trailing = aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return aio.AioRpcError(code, aio.Metadata(), trailing, "nope", None)


class FakeRpc:
    """A unary multi-callable: fails with queued errors, then answers via ``respond``."""

    def __init__(self, respond: Responder, errors: list[aio.AioRpcError]) -> None:
        self.respond = respond
        self.errors = errors
        self.requests: list[Any] = []

    def __call__(self, request: Any, *, metadata: Any, timeout: float | None) -> Any:
        self.requests.append(request)

        async def answer() -> Any:
            await asyncio.sleep(0)
            if self.errors:
                raise self.errors.pop(0)
            return self.respond(request)

        return answer()


class FakeMessages:
    """Any service's methods (MessageService here, KeyService elsewhere);
    answers are set per method name, any other call fails the test."""

    def __init__(self) -> None:
        self.rpcs: dict[str, FakeRpc] = {}

    def answer(
        self, name: str, respond: Responder, errors: list[aio.AioRpcError] | None = None
    ) -> FakeRpc:
        self.rpcs[name] = FakeRpc(respond, errors or [])
        return self.rpcs[name]

    def __getattr__(self, name: str) -> FakeRpc:
        if name not in self.rpcs:
            raise AssertionError(f"unexpected call to {name}")
        return self.rpcs[name]


def view(**conversation: Any) -> pb.ConversationView:
    return pb.ConversationView(conversation=pb.Conversation(**conversation))


def make_client() -> tuple[Client, FakeMessages]:
    now = datetime.now(UTC)
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=now + timedelta(hours=1),
            refresh_token="rt",
            refresh_token_expire_time=now + timedelta(days=30),
            account_id="me",
            device_id="dev",
        ),
        retry_policy=RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01),
        stream_retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=None,
    )
    fake = FakeMessages()
    session.messages = fake  # type: ignore[assignment]
    return Client(session, page_size=50), fake


# -- requests -------------------------------------------------------------------------------


async def test_group_calls_build_their_requests() -> None:
    client, fake = make_client()
    async with client:
        create = fake.answer("CreateGroup", lambda r: view(conversation_id="g1", title=r.title))
        created = await client.create_group("Climbing", members=["b", "c"], avatar_ref="obj-1")
        assert created.conversation.title == "Climbing"
        sent = create.requests[0]
        assert (list(sent.member_account_ids), sent.avatar_ref) == (["b", "c"], "obj-1")

        channel = fake.answer("CreateChannel", lambda r: view(conversation_id="ch1"))
        await client.create_channel("News", public=True)
        assert channel.requests[0].public

        add = fake.answer("AddMembers", lambda r: view(member_count=4))
        await client.add_members("g1", ["d"])
        await client.add_members("g1", "e")  # one id, not its characters
        assert [list(r.account_ids) for r in add.requests] == [["d"], ["e"]]

        remove = fake.answer("RemoveMember", lambda r: view())
        await client.remove_member("g1", "d")
        assert (remove.requests[0].conversation_id, remove.requests[0].account_id) == ("g1", "d")

        role = fake.answer("SetMemberRole", lambda r: view())
        await client.set_member_role("g1", "b", Role.ADMIN)
        assert role.requests[0].role == pb.ROLE_ADMIN

        fake.answer("LeaveConversation", lambda r: pb.LeaveConversationResponse(left_seq=12))
        assert await client.leave_conversation("g1") == 12

        subscribe = fake.answer("SubscribeChannel", lambda r: view())
        await client.subscribe_channel("ch1")
        assert subscribe.requests[0].conversation_id == "ch1"


async def test_update_info_sends_only_what_changes() -> None:
    client, fake = make_client()
    async with client:
        update = fake.answer("UpdateConversationInfo", lambda r: view())
        await client.update_conversation_info("g1", title="New")
        await client.update_conversation_info("g1", avatar_ref="")
        first, second = update.requests
        assert first.HasField("title") and not first.HasField("avatar_ref")
        assert second.HasField("avatar_ref") and not second.HasField("title")
        with pytest.raises(ValueError, match="title"):
            await client.update_conversation_info("g1")


async def test_message_calls_build_their_requests() -> None:
    client, fake = make_client()
    async with client:
        send = fake.answer(
            "SendMessage", lambda r: pb.SendMessageResponse(message=pb.Message(seq=4))
        )
        sent = await client.send_message(
            "c1", b"ct", type=MessageType.IMAGE, reply_to_message_id="m1", forwarded=True
        )
        assert sent.seq == 4
        request = send.requests[0]
        assert (request.type, request.reply_to_message_id, request.forwarded) == (
            pb.MESSAGE_TYPE_IMAGE,
            "m1",
            True,
        )

        fake.answer(
            "EditMessage",
            lambda r: pb.EditMessageResponse(edit=pb.MessageEdited(message_id=r.message_id)),
        )
        assert (await client.edit_message("c1", "m1", b"new")).message_id == "m1"

        delete = fake.answer(
            "DeleteMessage",
            lambda r: pb.DeleteMessageResponse(deletion=pb.MessageDeleted(scope=r.scope)),
        )
        await client.delete_message("c1", "m1")
        await client.delete_message("c1", "m1", scope=DeleteScope.FOR_EVERYONE)
        assert [r.scope for r in delete.requests] == [
            pb.DELETE_SCOPE_FOR_ME,
            pb.DELETE_SCOPE_FOR_EVERYONE,
        ]

        react = fake.answer(
            "ReactToMessage",
            lambda r: pb.ReactToMessageResponse(
                reactions=[pb.ReactionCount(emoji="👍", count=2)], changed=not r.remove
            ),
        )
        result = await client.react_to_message("c1", "m1", "👍")
        assert result.changed and result.counts == {"👍": 2}
        removed = await client.react_to_message("c1", "m1", "👍", remove=True)
        assert not removed.changed
        assert [r.remove for r in react.requests] == [False, True]


async def test_inbox_controls_build_their_requests() -> None:
    client, fake = make_client()
    async with client:
        pin = fake.answer("SetPinned", lambda r: view())
        archive = fake.answer("SetArchived", lambda r: view())
        unread = fake.answer("MarkUnread", lambda r: view())
        mute = fake.answer("SetMuted", lambda r: view())
        await client.set_pinned("c1", True)
        await client.set_archived("c1", False)
        await client.mark_unread("c1")
        await client.set_muted("c1", forever=True)
        await client.set_muted("c1")
        assert pin.requests[0].pinned
        assert not archive.requests[0].archived
        assert unread.requests[0].conversation_id == "c1"
        forever, unmute = mute.requests
        assert forever.forever and not forever.HasField("until")
        assert not unmute.forever and not unmute.HasField("until")


def test_mute_requests_take_a_time_or_a_duration() -> None:
    now = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)

    def build(**kwargs: Any) -> pb.SetMutedRequest:
        options: dict[str, Any] = {"until": None, "forever": False, **kwargs}
        return set_muted_request("c1", request_id="r", now=now, **options)

    until = build(until=datetime(2030, 5, 2, tzinfo=UTC)).until.ToDatetime(tzinfo=UTC)
    assert until == datetime(2030, 5, 2, tzinfo=UTC)
    later = build(until=timedelta(hours=8)).until.ToDatetime(tzinfo=UTC)
    assert later == now + timedelta(hours=8)
    with pytest.raises(ValueError, match="timezone-aware"):
        build(until=datetime(2030, 5, 2))
    with pytest.raises(ValueError, match="not both"):
        build(until=timedelta(hours=1), forever=True)
    with pytest.raises(ValueError, match="positive"):
        build(until=timedelta(0))


async def test_retries_of_every_new_mutation_reuse_one_request_id() -> None:
    client, fake = make_client()
    down = grpc.StatusCode.UNAVAILABLE
    calls: list[tuple[str, Callable[[], Any], Responder]] = [
        ("CreateGroup", lambda: client.create_group("t"), lambda r: view()),
        ("AddMembers", lambda: client.add_members("g", ["a"]), lambda r: view()),
        ("SetMemberRole", lambda: client.set_member_role("g", "a", Role.MEMBER), lambda r: view()),
        (
            "EditMessage",
            lambda: client.edit_message("c", "m", b"x"),
            lambda r: pb.EditMessageResponse(),
        ),
        (
            "ReactToMessage",
            lambda: client.react_to_message("c", "m", "👍"),
            lambda r: pb.ReactToMessageResponse(),
        ),
        ("SetMuted", lambda: client.set_muted("c", forever=True), lambda r: view()),
    ]
    async with client:
        for name, call, respond in calls:
            rpc = fake.answer(name, respond, [rpc_error(down), rpc_error(down)])
            await call()
            assert len(rpc.requests) == 3, name
            ids = {request.request_id for request in rpc.requests}
            assert len(ids) == 1 and "" not in ids, name


async def test_a_caller_chosen_request_id_is_sent_as_is() -> None:
    client, fake = make_client()
    async with client:
        send = fake.answer("SendMessage", lambda r: pb.SendMessageResponse())
        await client.send_message("c1", b"x", request_id="0b7e3c9a-0000-4000-8000-000000000001")
        assert send.requests[0].request_id == "0b7e3c9a-0000-4000-8000-000000000001"


async def test_typed_errors_surface_from_calls_and_are_not_retried() -> None:
    client, fake = make_client()
    async with client:
        rpc = fake.answer(
            "LeaveConversation",
            lambda r: pb.LeaveConversationResponse(),
            [rpc_error(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.LAST_OWNER)],
        )
        with pytest.raises(LastOwnerError) as caught:
            await client.leave_conversation("g1")
        assert caught.value.reason == ErrorReason.LAST_OWNER
        assert len(rpc.requests) == 1


# -- pagers --------------------------------------------------------------------------------


def paged(items_field: str, make: Callable[[int], Any], pages: list[list[int]]) -> Responder:
    """Answers page N (token "pN") with its items and the token of the next page."""

    def respond(request: Any) -> Any:
        index = int(request.page_token.removeprefix("p") or 0)
        response = {
            "members": pb.ListMembersResponse,
            "reactions": pb.ListReactionsResponse,
            "conversations": pb.ListConversationsResponse,
            "messages": pb.ListMessagesResponse,
        }[items_field]()
        getattr(response, items_field).extend(make(i) for i in pages[index])
        response.next_page_token = f"p{index + 1}" if index + 1 < len(pages) else ""
        return response

    return respond


async def test_paged_lists_walk_every_page_lazily() -> None:
    client, fake = make_client()
    async with client:
        members = fake.answer(
            "ListMembers",
            paged("members", lambda i: pb.Member(account_id=f"a{i}"), [[1, 2], [], [3]]),
        )
        got = [m.account_id async for m in client.list_members("g1", page_size=2)]
        assert got == ["a1", "a2", "a3"]
        # The empty middle page (items filtered out) did not end the list.
        assert [r.page_token for r in members.requests] == ["", "p1", "p2"]
        assert all(r.page_size == 2 for r in members.requests)

        reactions = fake.answer(
            "ListReactions",
            paged("reactions", lambda i: pb.Reaction(emoji=str(i)), [[1], [2]]),
        )
        async for _ in client.list_reactions("c1", "m1"):
            break
        assert len(reactions.requests) == 1, "stopping early fetches no more pages"


async def test_list_options_reach_the_request() -> None:
    client, fake = make_client()
    async with client:
        inbox = fake.answer(
            "ListConversations", paged("conversations", lambda i: pb.ConversationView(), [[1]])
        )
        _ = [v async for v in client.list_conversations(archive_filter=ArchiveFilter.ARCHIVED)]
        _ = [v async for v in client.list_conversations(page_size=5000)]
        assert [r.archive_filter for r in inbox.requests] == [
            pb.ARCHIVE_FILTER_ARCHIVED,
            pb.ARCHIVE_FILTER_ACTIVE,
        ]
        assert inbox.requests[1].page_size == 100, "page sizes are capped at the API's maximum"

        history = fake.answer("ListMessages", paged("messages", lambda i: pb.Message(seq=i), [[4]]))
        _ = [m async for m in client.list_messages("c1", direction=Direction.FORWARD, start_seq=4)]
        assert (history.requests[0].direction, history.requests[0].start_seq) == (
            pb.DIRECTION_FORWARD,
            4,
        )


async def test_a_repeated_page_token_ends_the_list_with_an_error() -> None:
    client, fake = make_client()
    async with client:
        fake.answer(
            "ListMembers",
            lambda r: pb.ListMembersResponse(members=[pb.Member()], next_page_token="same"),
        )
        seen: list[pb.Member] = []

        async def consume() -> None:
            async for member in client.list_members("g1"):
                seen.append(member)
                assert len(seen) < 10

        with pytest.raises(InternalError):
            await consume()
        assert len(seen) == 1


async def test_receipts_pager_carries_the_counts() -> None:
    client, fake = make_client()

    def respond(request: pb.ListMessageReceiptsRequest) -> pb.ListMessageReceiptsResponse:
        first = not request.page_token
        return pb.ListMessageReceiptsResponse(
            receipts=[pb.MessageReceipt(account_id="b" if first else "c", delivered=True)],
            next_page_token="p1" if first else "",
            delivered_count=2,
            read_count=1,
        )

    async with client:
        rpc = fake.answer("ListMessageReceipts", respond)
        receipts = client.list_message_receipts("g1", 7, page_size=1)
        assert receipts.delivered_count is None
        assert await receipts.fetch_counts() == (2, 1)
        assert [r.account_id async for r in receipts] == ["b", "c"]
        assert [receipts.delivered_count, receipts.read_count] == [2, 1]
        assert [r.seq for r in rpc.requests] == [7, 7]
        assert len(rpc.requests) == 2, "fetch_counts's page was not fetched twice"


# -- error mapping for the issue-4 reasons -----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expected", "parent"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "GROUP_FULL", GroupFullError, ResourceExhaustedError),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_REQUIRED",
            RoleRequiredError,
            PermissionDeniedError,
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_THE_SENDER",
            NotTheSenderError,
            PermissionDeniedError,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "LAST_OWNER",
            LastOwnerError,
            FailedPreconditionError,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "MESSAGE_DELETED",
            MessageDeletedError,
            FailedPreconditionError,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_CONVERSATION_TYPE",
            WrongConversationTypeError,
            FailedPreconditionError,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "TOO_MANY_PINS",
            TooManyPinsError,
            FailedPreconditionError,
        ),
    ],
)
def test_issue_4_reasons_map_to_typed_errors(
    code: grpc.StatusCode, reason: str, expected: type[ParleyError], parent: type[ParleyError]
) -> None:
    error = from_rpc_error(rpc_error(code, f"ERROR_REASON_{reason}"))
    assert type(error) is expected
    assert isinstance(error, parent)
    assert error.reason == ErrorReason[reason]
    # Under another code the reason refines nothing: the code's class stands.
    other = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"ERROR_REASON_{reason}"))
    assert type(other).__name__ == "InvalidArgumentError"
