"""MessageService RPCs that create groups and channels and change their members."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.groups import GroupsHandler
from svc_message.model import CHANNEL, GROUP, GROUP_MEMBER_CAP
from svc_message.servicer.convert import view_proto

TITLE_MAX = 128
AVATAR_REF_MAX = 512
MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX = 100, 1000
ASSIGNABLE_ROLES = frozenset({pb.ROLE_OWNER, pb.ROLE_ADMIN, pb.ROLE_MEMBER, pb.ROLE_SUBSCRIBER})


def _ids(check: Check, field: str, values: Any, *, minimum: int, maximum: int) -> list[str]:
    if len(values) > maximum:
        # Said as the cap it is: a group holds at most GROUP_MEMBER_CAP members.
        check.fail(field, f"at most {maximum} accounts")
        return []
    if len(values) < minimum:
        check.fail(field, f"at least {minimum} account")
    for i, value in enumerate(values):
        check.id(f"{field}[{i}]", value)
    return list(values)


class GroupsServicer:
    def __init__(self, groups: GroupsHandler, *, clock: Callable[[], float] = time.time) -> None:
        self._groups = groups
        self._clock = clock

    async def _create(self, request: Any, context: Any, *, kind: int) -> pb.ConversationView:
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        check = Check().request_id(request.request_id)
        check.text("title", request.title, min_len=1, max_len=TITLE_MAX)
        check.text("avatar_ref", request.avatar_ref, max_len=AVATAR_REF_MAX)
        members: list[str] = []
        if kind == GROUP:
            members = _ids(
                check,
                "member_account_ids",
                request.member_account_ids,
                minimum=0,
                maximum=GROUP_MEMBER_CAP * 4,
            )
            # Repeats and the caller's own id do not count. A list that cannot
            # fit whatever the state is a bad request naming the field, not
            # the RESOURCE_EXHAUSTED the domain answers for a full group.
            others = len(set(members) - {rpc.account_id})
            if others > GROUP_MEMBER_CAP - 1:
                check.fail(
                    "member_account_ids",
                    f"at most {GROUP_MEMBER_CAP - 1} other accounts (a group has at most "
                    f"{GROUP_MEMBER_CAP} members, the caller included), got {others}",
                )
        check.done()
        entry = await self._groups.create(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            kind=kind,
            title=request.title,
            avatar_ref=request.avatar_ref,
            member_ids=members,
            public=kind == CHANNEL and request.public,
            bearer_token=rpc.bearer_token,
            now=rpc.now,
        )
        return view_proto(entry)

    async def CreateGroup(
        self, request: pb.CreateGroupRequest, context: Any
    ) -> pb.ConversationView:
        return await self._create(request, context, kind=GROUP)

    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Any
    ) -> pb.ConversationView:
        return await self._create(request, context, kind=CHANNEL)

    async def UpdateConversationInfo(
        self, request: pb.UpdateConversationInfoRequest, context: Any
    ) -> pb.ConversationView:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        title = request.title if request.HasField("title") else None
        avatar_ref = request.avatar_ref if request.HasField("avatar_ref") else None
        if title is not None:
            check.text("title", title, min_len=1, max_len=TITLE_MAX)
        if avatar_ref is not None:
            check.text("avatar_ref", avatar_ref, max_len=AVATAR_REF_MAX)
        if title is None and avatar_ref is None:
            check.fail("title", "set title or avatar_ref")
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._groups.update_info(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            title=title,
            avatar_ref=avatar_ref,
            now=rpc.now,
        )
        return view_proto(entry)

    async def AddMembers(self, request: pb.AddMembersRequest, context: Any) -> pb.ConversationView:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        accounts = _ids(
            check, "account_ids", request.account_ids, minimum=1, maximum=GROUP_MEMBER_CAP * 4
        )
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._groups.add_members(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            account_ids=accounts,
            bearer_token=rpc.bearer_token,
            now=rpc.now,
        )
        return view_proto(entry)

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: Any
    ) -> pb.ConversationView:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        check.id("account_id", request.account_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._groups.remove_member(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            target_id=request.account_id,
            now=rpc.now,
        )
        return view_proto(entry)

    async def LeaveConversation(
        self, request: pb.LeaveConversationRequest, context: Any
    ) -> pb.LeaveConversationResponse:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        left_seq = await self._groups.leave(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            now=rpc.now,
        )
        return pb.LeaveConversationResponse(left_seq=left_seq)

    async def SetMemberRole(
        self, request: pb.SetMemberRoleRequest, context: Any
    ) -> pb.ConversationView:
        check = (
            Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
        )
        check.id("account_id", request.account_id)
        check.enum("role", request.role, ASSIGNABLE_ROLES)
        check.done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._groups.set_role(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            target_id=request.account_id,
            role=request.role,
            now=rpc.now,
        )
        return view_proto(entry)

    async def SubscribeChannel(
        self, request: pb.SubscribeChannelRequest, context: Any
    ) -> pb.ConversationView:
        Check().request_id(request.request_id).id("conversation_id", request.conversation_id).done()
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        entry = await self._groups.subscribe(
            account_id=rpc.account_id,
            conversation_id=request.conversation_id,
            now=rpc.now,
        )
        return view_proto(entry)

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Any
    ) -> pb.ListMembersResponse:
        check = Check().id("conversation_id", request.conversation_id)
        limit = check.page_size(
            request.page_size, default=MEMBERS_PAGE_DEFAULT, maximum=MEMBERS_PAGE_MAX
        )
        check.done()
        rpc = request_context(context, clock=self._clock)
        account_id = rpc.account_id
        scope = {
            "rpc": "ListMembers",
            "account": account_id,
            "conversation": request.conversation_id,
        }
        after = ""
        if request.page_token:
            after = str(decode_page_token(request.page_token, scope=scope).get("after", ""))
        rows = await self._groups.list_members(
            account_id=account_id,
            conversation_id=request.conversation_id,
            after=after,
            limit=limit + 1,
        )
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_page_token({"after": rows[-1][0]}, scope=scope)
        members = []
        for member, role, joined_seq, joined_at in rows:
            entry = pb.Member(account_id=member, role=role, joined_seq=joined_seq)  # type: ignore[arg-type]
            if joined_at is not None:
                entry.join_time.CopyFrom(timestamp(joined_at))
            members.append(entry)
        return pb.ListMembersResponse(members=members, next_page_token=token)
