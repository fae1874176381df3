"""Who owns a group or channel, and how membership changes behave.

Only owners grant or take the owner role, the last owner hands over before
leaving, RemoveMember refuses oneself and non-members, membership changes are
idempotent by request_id, and a group holds at most 1024 members. The
permission matrix itself is in test_group_permissions.py.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from parley.message.v1 import messages_pb2 as mpb
from tests.groups import Setup, expect
from tests.users import Device, all_messages, error_fields, rid, rpc, sign_up, sign_up_many

# -- owners and targets -------------------------------------------------------------------


ROLE_REQUIRED = (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_ROLE_REQUIRED")
LAST_OWNER = (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_LAST_OWNER")


def set_role(stub: Any, by: Device, cid: str, target: Device, role: int) -> Awaitable[Any]:
    return rpc(
        stub, "SetMemberRole", by, conversation_id=cid, account_id=target.account_id, role=role
    )


async def roles_in(stub: Any, by: Device, cid: str) -> dict[str, mpb.Member]:
    page = await rpc(stub, "ListMembers", by, conversation_id=cid, page_size=1000)
    assert not page.next_page_token
    return {m.account_id: m.role for m in page.members}


async def test_only_owners_grant_or_take_the_owner_role(keys, messages) -> None:
    setup = Setup(keys, messages)
    world = await setup.world("group")
    owner, admin, member = (world.people[n] for n in ("owner", "admin", "member"))
    cid = world.conversation_id
    await expect(set_role(messages, admin, cid, member, mpb.ROLE_OWNER), *ROLE_REQUIRED)
    await expect(set_role(messages, admin, cid, owner, mpb.ROLE_ADMIN), *ROLE_REQUIRED)
    await expect(set_role(messages, admin, cid, owner, mpb.ROLE_MEMBER), *ROLE_REQUIRED)
    await expect(set_role(messages, member, cid, member, mpb.ROLE_ADMIN), *ROLE_REQUIRED)
    # An admin demotes another admin and promotes a member.
    second = await setup.fresh_admin(world)
    await set_role(messages, admin, cid, second, mpb.ROLE_MEMBER)
    await set_role(messages, admin, cid, member, mpb.ROLE_ADMIN)
    roles = await roles_in(messages, owner, cid)
    assert roles[second.account_id] == mpb.ROLE_MEMBER
    assert roles[member.account_id] == mpb.ROLE_ADMIN
    assert roles[owner.account_id] == mpb.ROLE_OWNER


async def test_the_last_owner_hands_over_before_leaving(keys, messages, messages_b) -> None:
    world = await Setup(keys, messages).world("group")
    owner, member = world.people["owner"], world.people["member"]
    cid = world.conversation_id
    await expect(set_role(messages_b, owner, cid, owner, mpb.ROLE_ADMIN), *LAST_OWNER)
    await expect(rpc(messages_b, "LeaveConversation", owner, conversation_id=cid), *LAST_OWNER)
    await set_role(messages, owner, cid, member, mpb.ROLE_OWNER)
    # Two owners: either may step down, and an admin cannot step back up.
    await set_role(messages_b, owner, cid, owner, mpb.ROLE_ADMIN)
    await expect(set_role(messages_b, owner, cid, owner, mpb.ROLE_OWNER), *ROLE_REQUIRED)
    left = await rpc(messages_b, "LeaveConversation", owner, conversation_id=cid)
    view = await rpc(messages, "GetConversation", owner, conversation_id=cid)
    assert view.membership_state == mpb.MEMBERSHIP_STATE_LEFT
    assert view.visible_until_seq == left.left_seq
    history = await all_messages(messages, member, cid)
    assert history[-1].seq == left.left_seq
    assert history[-1].type == mpb.MESSAGE_TYPE_SYSTEM
    assert history[-1].system.action == mpb.SystemEvent.ACTION_MEMBER_LEFT
    assert history[-1].system.actor_account_id == owner.account_id
    roles = await roles_in(messages, member, cid)
    assert owner.account_id not in roles
    assert roles[member.account_id] == mpb.ROLE_OWNER


async def test_an_owner_alone_may_leave(keys, messages) -> None:
    owner = await sign_up(keys)
    view = await rpc(messages, "CreateGroup", owner, title="solo")
    cid = view.conversation.conversation_id
    left = await rpc(messages, "LeaveConversation", owner, conversation_id=cid)
    assert left.left_seq > 0


async def test_admins_demote_but_never_make_owners_in_channels(keys, messages) -> None:
    setup = Setup(keys, messages)
    world = await setup.world("channel")
    owner, admin, subscriber = (world.people[n] for n in ("owner", "admin", "member"))
    cid = world.conversation_id
    second = await setup.fresh_admin(world)
    await set_role(messages, admin, cid, second, mpb.ROLE_MEMBER)  # MEMBER means SUBSCRIBER
    roles = await roles_in(messages, owner, cid)
    assert roles[second.account_id] == mpb.ROLE_SUBSCRIBER
    assert roles[subscriber.account_id] == mpb.ROLE_SUBSCRIBER
    assert roles[admin.account_id] == mpb.ROLE_ADMIN
    await expect(set_role(messages, admin, cid, subscriber, mpb.ROLE_OWNER), *ROLE_REQUIRED)


async def test_remove_oneself_or_a_non_member(keys, messages) -> None:
    world = await Setup(keys, messages).world("group")
    owner, cid = world.owner, world.conversation_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(messages, "RemoveMember", owner, conversation_id=cid, account_id=owner.account_id)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "LeaveConversation is for that"
    assert error_fields(refused.value) == ["account_id"]
    for target in (world.people["outsider"], world.people["removed"]):
        await expect(
            rpc(messages, "RemoveMember", owner, conversation_id=cid, account_id=target.account_id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ERROR_REASON_NOT_A_MEMBER",
        )


async def test_membership_changes_are_idempotent_by_request_id(keys, messages, messages_b) -> None:
    world = await Setup(keys, messages).world("group")
    owner, member, cid = world.owner, world.people["member"], world.conversation_id
    removal = mpb.RemoveMemberRequest(
        request_id=rid(), conversation_id=cid, account_id=member.account_id
    )
    first = await messages.RemoveMember(removal, metadata=owner.md)
    again = await messages_b.RemoveMember(removal, metadata=owner.md)
    assert again.conversation.last_version == first.conversation.last_version
    leave = mpb.LeaveConversationRequest(request_id=rid(), conversation_id=cid)
    admin = world.people["admin"]
    left = await messages_b.LeaveConversation(leave, metadata=admin.md)
    assert (await messages.LeaveConversation(leave, metadata=admin.md)).left_seq == left.left_seq
    history = await all_messages(messages, owner, cid)
    assert [m.system.action for m in history if m.seq > first.conversation.last_seq - 1] == [
        mpb.SystemEvent.ACTION_MEMBER_REMOVED,
        mpb.SystemEvent.ACTION_MEMBER_LEFT,
    ]


# -- the cap ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_group_holds_at_most_1024_members(keys, messages, messages_b) -> None:
    owner = await sign_up(keys)
    ids = [d.account_id for d in await sign_up_many(keys, 1024, prefix="cap")]
    full = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_GROUP_FULL")

    # A member list that cannot fit is a bad request, whatever the state.
    error = await expect(
        rpc(messages, "CreateGroup", owner, title="too big", member_account_ids=ids),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_INVALID_FIELD",
    )
    assert error_fields(error) == ["member_account_ids"]
    assert "1024" in (error.details() or ""), "the message names the cap"
    view = await rpc(messages, "CreateGroup", owner, title="full", member_account_ids=ids[:1023])
    cid = view.conversation.conversation_id
    assert view.conversation.member_count == 1024

    def add(*account_ids: str) -> Awaitable[Any]:
        return rpc(messages_b, "AddMembers", owner, conversation_id=cid, account_ids=account_ids)

    error = await expect(add(ids[1023]), *full)
    assert "1024" in (error.details() or "")
    # Those already members are ignored, so this does not go over.
    assert (await add(ids[0], ids[1])).conversation.member_count == 1024
    await rpc(messages, "RemoveMember", owner, conversation_id=cid, account_id=ids[0])
    await expect(add(ids[0], ids[1023]), *full)
    assert (await add(ids[1023])).conversation.member_count == 1024
