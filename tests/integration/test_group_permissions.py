"""Who may do what in groups, channels and direct conversations.

The tables below are the permission matrix of /work/notes/semantics.md (issue
4): every operation against every role, with the exact status and
google.rpc.ErrorInfo reason. Roles: owner, admin, member (a subscriber in
channels), removed (was a member, removed by the owner), outsider (never a
member). Cells:

    ok      the call succeeds
    NAM     PERMISSION_DENIED  ERROR_REASON_NOT_A_MEMBER
    ROLE    PERMISSION_DENIED  ERROR_REASON_ROLE_REQUIRED
    SENDER  PERMISSION_DENIED  ERROR_REASON_NOT_THE_SENDER
    LAST    FAILED_PRECONDITION ERROR_REASON_LAST_OWNER
    TYPE    FAILED_PRECONDITION ERROR_REASON_WRONG_CONVERSATION_TYPE
    -       not applicable (e.g. a subscriber has no message of its own)

Operations that target someone act on a fresh target: remove_member removes a
member (subscriber) added for the case, remove_admin an admin promoted for
it, set_role makes a fresh member an admin, add_members adds a fresh account.
*_own acts on a message the actor sent, *_other on a message of another member
("poster": a member in groups, an admin in channels); for the removed member
both are from before the removal, so they saw them. delete_me_* is
DELETE_SCOPE_FOR_ME, delete_all_* DELETE_SCOPE_FOR_EVERYONE.

Where semantics.md leaves a choice, the tables pin this one: a removed member
may only GetConversation and ListMessages (every other call, delete-for-me
and the reaction, member and receipt lists included, is NOT_A_MEMBER, since
they would show what happened after the removal); membership is checked before
the conversation type (an outsider of a direct conversation or channel gets
NOT_A_MEMBER), except for SubscribeChannel, which non-members call by nature.

Each conversation kind has one shared world (the operations that do not change
who is in it, or that only add a fresh target); leave and subscribe, which
change the actor's own membership, get a world of their own per case. Setup
goes through svc_message instance 0 and the call under test through instance
1, so a membership change must be seen at once by the other process.

Below the matrix: the owner-handover rules, the cap, and what removed and
late-joining members can see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.feed_view import DeviceView
from tests.users import (
    Device,
    all_messages,
    error_fields,
    error_reason,
    link_device,
    rid,
    rpc,
    send,
    sign_up,
    sign_up_many,
)

# -- the matrix ----------------------------------------------------------------------

GROUP = """
                  owner   admin   member  removed outsider
send              ok      ok      ok      NAM     NAM
get               ok      ok      ok      ok      NAM
list_messages     ok      ok      ok      ok      NAM
update_info       ok      ok      ROLE    NAM     NAM
add_members       ok      ok      ROLE    NAM     NAM
remove_member     ok      ok      ROLE    NAM     NAM
remove_admin      ok      ROLE    ROLE    NAM     NAM
set_role          ok      ok      ROLE    NAM     NAM
leave             LAST    ok      ok      NAM     NAM
subscribe         TYPE    TYPE    TYPE    TYPE    TYPE
edit_own          ok      ok      ok      NAM     -
edit_other        SENDER  SENDER  SENDER  NAM     NAM
delete_me_own     ok      ok      ok      NAM     -
delete_me_other   ok      ok      ok      NAM     NAM
delete_all_own    ok      ok      ok      NAM     -
delete_all_other  ok      ok      SENDER  NAM     NAM
react             ok      ok      ok      NAM     NAM
list_reactions    ok      ok      ok      NAM     NAM
list_members      ok      ok      ok      NAM     NAM
list_receipts     ok      ok      ok      NAM     NAM
"""

CHANNEL = """
                  owner   admin   subscriber removed outsider
send              ok      ok      ROLE    NAM     NAM
get               ok      ok      ok      ok      NAM
list_messages     ok      ok      ok      ok      NAM
update_info       ok      ok      ROLE    NAM     NAM
add_members       ok      ok      ROLE    NAM     NAM
remove_member     ok      ok      ROLE    NAM     NAM
remove_admin      ok      ROLE    ROLE    NAM     NAM
set_role          ok      ok      ROLE    NAM     NAM
leave             LAST    ok      ok      NAM     NAM
subscribe         ok      ok      ok      ok      ok
edit_own          ok      ok      -       -       -
edit_other        SENDER  SENDER  SENDER  NAM     NAM
delete_me_own     ok      ok      -       -       -
delete_me_other   ok      ok      ok      NAM     NAM
delete_all_own    ok      ok      -       -       -
delete_all_other  ok      ok      SENDER  NAM     NAM
react             ok      ok      ok      NAM     NAM
list_reactions    ok      ok      ok      NAM     NAM
list_members      ok      ok      ROLE    NAM     NAM
list_receipts     TYPE    TYPE    TYPE    NAM     NAM
"""

# A channel that is not public: only what differs from a public one. Whether an
# existing subscriber may call SubscribeChannel again is not specified.
PRIVATE_CHANNEL = """
                  owner   admin   subscriber removed outsider
add_members       ok      ok      ROLE    NAM     NAM
subscribe         -       -       -       ROLE    ROLE
send              ok      ok      ROLE    NAM     NAM
list_messages     ok      ok      ok      ok      NAM
"""

# A direct conversation: "member" is one of the two, "other" messages are the
# peer's; remove_member and set_role target the peer.
DIRECT = """
                  member  outsider
send              ok      NAM
get               ok      NAM
list_messages     ok      NAM
update_info       TYPE    NAM
add_members       TYPE    NAM
remove_member     TYPE    NAM
set_role          TYPE    NAM
subscribe         TYPE    TYPE
edit_own          ok      -
edit_other        SENDER  NAM
delete_me_own     ok      -
delete_me_other   ok      NAM
delete_all_own    ok      -
delete_all_other  SENDER  NAM
react             ok      NAM
list_reactions    ok      NAM
list_receipts     ok      NAM
"""

TABLES = {
    "group": GROUP,
    "channel": CHANNEL,
    "private_channel": PRIVATE_CHANNEL,
    "direct": DIRECT,
}

OUTCOMES: dict[str, tuple[grpc.StatusCode, str] | None] = {
    "ok": None,
    "NAM": (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_NOT_A_MEMBER"),
    "ROLE": (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_ROLE_REQUIRED"),
    "SENDER": (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_NOT_THE_SENDER"),
    "LAST": (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_LAST_OWNER"),
    "TYPE": (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_WRONG_CONVERSATION_TYPE"),
}

# Operations that change the actor's own membership get a world of their own.
OWN_WORLD = frozenset({"leave", "subscribe"})


def parse(kind: str, table: str) -> list[tuple[str, str, str, str]]:
    """(kind, role, operation, cell) for every applicable cell of a table."""
    lines = [line.split() for line in table.strip().splitlines()]
    roles, rows = lines[0], lines[1:]
    cases = []
    for row in rows:
        operation, cells = row[0], row[1:]
        assert len(cells) == len(roles), f"{kind}.{operation}: {len(cells)} cells"
        for role, cell in zip(roles, cells, strict=True):
            assert cell == "-" or cell in OUTCOMES, f"{kind}.{operation}.{role}: {cell}"
            if cell != "-":
                cases.append((kind, role, operation, cell))
    return cases


MATRIX = [case for kind, table in TABLES.items() for case in parse(kind, table)]


# -- worlds ------------------------------------------------------------------------------


@dataclass
class World:
    kind: str
    conversation_id: str
    # owner, admin, member (a subscriber in channels), removed, outsider,
    # poster (sends the "other" messages).
    people: dict[str, Device]
    # Per role, a message that role sent (removed: before the removal).
    own: dict[str, str] = field(default_factory=dict)
    other: mpb.Message = field(default_factory=mpb.Message)

    @property
    def owner(self) -> Device:
        return self.people["owner"]


class Setup:
    """Builds worlds through svc_message instance 0."""

    def __init__(self, keys: kgrpc.AccountServiceStub, messages: mgrpc.MessageServiceStub):
        self.keys = keys
        self.messages = messages

    async def world(self, kind: str) -> World:
        if kind == "direct":
            names = ("member", "poster", "outsider")
            p = dict(zip(names, await sign_up_many(self.keys, 3), strict=True))
            view = await rpc(
                self.messages,
                "CreateDirectConversation",
                p["member"],
                peer_account_id=p["poster"].account_id,
            )
            world = World(kind, view.conversation.conversation_id, p)
            world.own["member"] = (await self.post(world, p["member"])).message_id
            world.other = await self.post(world, p["poster"])
            return world
        names = ("owner", "admin", "member", "removed", "outsider", "poster")
        p = dict(zip(names, await sign_up_many(self.keys, len(names)), strict=True))
        if kind == "group":
            joining = [p[n].account_id for n in ("admin", "member", "removed", "poster")]
            view = await rpc(
                self.messages,
                "CreateGroup",
                p["owner"],
                title="matrix",
                member_account_ids=joining,
            )
        else:
            view = await rpc(
                self.messages,
                "CreateChannel",
                p["owner"],
                title="matrix",
                public=kind == "channel",
            )
        world = World(kind, view.conversation.conversation_id, p)
        if kind != "group":
            for name in ("admin", "member", "removed", "poster"):
                await self.join(world, p[name])
            await self.set_role(world, p["poster"], mpb.ROLE_ADMIN)
        await self.set_role(world, p["admin"], mpb.ROLE_ADMIN)
        senders = ("owner", "admin", "member", "removed") if kind == "group" else ("owner", "admin")
        for role in senders:
            world.own[role] = (await self.post(world, p[role])).message_id
        world.other = await self.post(world, p["poster"])
        await self.remove(world, p["removed"])
        return world

    async def post(self, world: World, by: Device) -> mpb.Message:
        return await send(self.messages, by, world.conversation_id, b"ciphertext")

    async def join(self, world: World, who: Device) -> None:
        """Makes ``who`` a member (a subscriber in channels)."""
        cid = world.conversation_id
        if world.kind == "channel":
            await rpc(self.messages, "SubscribeChannel", who, conversation_id=cid)
        else:
            await rpc(
                self.messages,
                "AddMembers",
                world.owner,
                conversation_id=cid,
                account_ids=[who.account_id],
            )

    async def set_role(self, world: World, who: Device, role: int) -> None:
        await rpc(
            self.messages,
            "SetMemberRole",
            world.owner,
            conversation_id=world.conversation_id,
            account_id=who.account_id,
            role=role,
        )

    async def remove(self, world: World, who: Device) -> None:
        await rpc(
            self.messages,
            "RemoveMember",
            world.owner,
            conversation_id=world.conversation_id,
            account_id=who.account_id,
        )

    async def fresh_member(self, world: World) -> Device:
        if world.kind == "direct":
            return world.people["poster"]
        who = await sign_up(self.keys)
        await self.join(world, who)
        return who

    async def fresh_admin(self, world: World) -> Device:
        who = await self.fresh_member(world)
        await self.set_role(world, who, mpb.ROLE_ADMIN)
        return who


class Worlds:
    """One shared world per kind, built on first use."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._built: dict[str, World] = {}
        self._lock = asyncio.Lock()

    async def shared(self, kind: str) -> World:
        async with self._lock:
            if kind not in self._built:
                self._built[kind] = await self.setup.world(kind)
            return self._built[kind]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worlds(keys, messages) -> AsyncIterator[Worlds]:
    yield Worlds(Setup(keys, messages))


# -- operations --------------------------------------------------------------------------


@dataclass
class Case:
    setup: Setup
    world: World
    role: str

    @property
    def actor(self) -> Device:
        return self.world.people["member" if self.role == "subscriber" else self.role]

    async def own_message(self, *, fresh: bool) -> str:
        """A message of the actor's; a new one when the case may consume it."""
        if fresh and self.role != "removed":
            return (await self.setup.post(self.world, self.actor)).message_id
        return self.world.own[self.role]

    async def other_message(self, *, fresh: bool) -> str:
        # The removed member's is one from before the removal, one they saw.
        if fresh and self.role != "removed":
            return (await self.setup.post(self.world, self.world.people["poster"])).message_id
        return self.world.other.message_id


# Each operation prepares what it needs (as the owner) and returns the call
# under test: (method, request fields); conversation_id is added.
Prepared = tuple[str, dict[str, Any]]
FOR_ME, FOR_EVERYONE = mpb.DELETE_SCOPE_FOR_ME, mpb.DELETE_SCOPE_FOR_EVERYONE
THUMBS_UP = "\U0001f44d"


async def op_send(c: Case) -> Prepared:
    return "SendMessage", {"type": mpb.MESSAGE_TYPE_TEXT, "body": b"x"}


async def op_get(c: Case) -> Prepared:
    return "GetConversation", {}


async def op_list_messages(c: Case) -> Prepared:
    return "ListMessages", {}


async def op_update_info(c: Case) -> Prepared:
    return "UpdateConversationInfo", {"title": "renamed"}


async def op_add_members(c: Case) -> Prepared:
    return "AddMembers", {"account_ids": [(await sign_up(c.setup.keys)).account_id]}


async def op_remove_member(c: Case) -> Prepared:
    return "RemoveMember", {"account_id": (await c.setup.fresh_member(c.world)).account_id}


async def op_remove_admin(c: Case) -> Prepared:
    return "RemoveMember", {"account_id": (await c.setup.fresh_admin(c.world)).account_id}


async def op_set_role(c: Case) -> Prepared:
    target = await c.setup.fresh_member(c.world)
    return "SetMemberRole", {"account_id": target.account_id, "role": mpb.ROLE_ADMIN}


async def op_leave(c: Case) -> Prepared:
    return "LeaveConversation", {}


async def op_subscribe(c: Case) -> Prepared:
    return "SubscribeChannel", {}


async def op_edit_own(c: Case) -> Prepared:
    return "EditMessage", {"message_id": await c.own_message(fresh=False), "body": b"edited"}


async def op_edit_other(c: Case) -> Prepared:
    return "EditMessage", {"message_id": await c.other_message(fresh=False), "body": b"edited"}


async def op_delete_me_own(c: Case) -> Prepared:
    return "DeleteMessage", {"message_id": await c.own_message(fresh=True), "scope": FOR_ME}


async def op_delete_me_other(c: Case) -> Prepared:
    return "DeleteMessage", {"message_id": await c.other_message(fresh=True), "scope": FOR_ME}


async def op_delete_all_own(c: Case) -> Prepared:
    message_id = await c.own_message(fresh=True)
    return "DeleteMessage", {"message_id": message_id, "scope": FOR_EVERYONE}


async def op_delete_all_other(c: Case) -> Prepared:
    message_id = await c.other_message(fresh=True)
    return "DeleteMessage", {"message_id": message_id, "scope": FOR_EVERYONE}


async def op_react(c: Case) -> Prepared:
    message_id = await c.other_message(fresh=False)
    return "ReactToMessage", {"message_id": message_id, "emoji": THUMBS_UP}


async def op_list_reactions(c: Case) -> Prepared:
    return "ListReactions", {"message_id": await c.other_message(fresh=False)}


async def op_list_members(c: Case) -> Prepared:
    return "ListMembers", {}


async def op_list_receipts(c: Case) -> Prepared:
    return "ListMessageReceipts", {"seq": c.world.other.seq}


OPERATIONS: dict[str, Callable[[Case], Awaitable[Prepared]]] = {
    name.removeprefix("op_"): fn for name, fn in globals().items() if name.startswith("op_")
}


def test_the_group_table_covers_every_operation() -> None:
    for kind, role, operation, _ in MATRIX:
        assert operation in OPERATIONS, f"{kind}.{role}: unknown operation {operation}"
    assert {op for kind, _, op, _ in MATRIX if kind == "group"} == set(OPERATIONS)


def _case_id(case: tuple[str, str, str, str]) -> str:
    kind, role, operation, cell = case
    return f"{kind}-{operation}-{role}-{cell}"


@pytest.mark.parametrize("case", MATRIX, ids=[_case_id(c) for c in MATRIX])
async def test_permission_matrix(
    case: tuple[str, str, str, str], worlds: Worlds, messages_b: mgrpc.MessageServiceStub
) -> None:
    kind, role, operation, cell = case
    world = await (worlds.setup.world(kind) if operation in OWN_WORLD else worlds.shared(kind))
    c = Case(worlds.setup, world, role)
    method, fields = await OPERATIONS[operation](c)
    try:
        await rpc(messages_b, method, c.actor, conversation_id=world.conversation_id, **fields)
        got = None
    except grpc.aio.AioRpcError as exc:
        got = (exc.code(), error_reason(exc))
    assert got == OUTCOMES[cell], f"{operation} by {role} in a {kind}: expected {cell}, got {got}"


# -- owners and targets -------------------------------------------------------------------


async def expect(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        assert (exc.code(), error_reason(exc)) == (code, reason), exc.details()
        return exc
    raise AssertionError(f"expected {code.name} {reason}, got {reply!r:.300}")


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


# -- messages that are not there ---------------------------------------------------------


async def test_messages_must_belong_to_the_conversation(keys, messages) -> None:
    setup = Setup(keys, messages)
    world, elsewhere = await setup.world("group"), await setup.world("direct")
    owner, cid = world.owner, world.conversation_id
    foreign = {"conversation_id": cid, "message_id": elsewhere.other.message_id}
    not_found = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_MESSAGE_NOT_FOUND")
    for scope in (FOR_ME, FOR_EVERYONE):
        await expect(rpc(messages, "DeleteMessage", owner, **foreign, scope=scope), *not_found)
    await expect(rpc(messages, "EditMessage", owner, **foreign, body=b"x"), *not_found)
    await expect(rpc(messages, "ReactToMessage", owner, **foreign, emoji=THUMBS_UP), *not_found)
    await expect(rpc(messages, "ListReactions", owner, **foreign), *not_found)
    text = {"conversation_id": cid, "type": mpb.MESSAGE_TYPE_TEXT, "body": b"re"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rpc(messages, "SendMessage", owner, **text, reply_to_message_id=foreign["message_id"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(refused.value) == ["reply_to_message_id"]
    # A reply inside the conversation is fine and says what it answers.
    reply = await rpc(
        messages,
        "SendMessage",
        owner,
        **text,
        reply_to_message_id=world.other.message_id,
        forwarded=True,
    )
    assert reply.message.reply_to_message_id == world.other.message_id
    assert reply.message.forwarded


async def test_unknown_conversation_is_not_found(keys, messages) -> None:
    someone, unknown = await sign_up(keys), rid()
    not_found = (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_CONVERSATION_NOT_FOUND")
    await expect(rpc(messages, "GetConversation", someone, conversation_id=unknown), *not_found)
    await expect(rpc(messages, "ListMessages", someone, conversation_id=unknown), *not_found)


async def test_deleted_and_system_messages_cannot_change(keys, messages) -> None:
    world = await Setup(keys, messages).world("group")
    owner, member, cid = world.owner, world.people["member"], world.conversation_id
    mine = {
        "conversation_id": cid,
        "message_id": (await send(messages, member, cid, b"x")).message_id,
    }
    await rpc(messages, "DeleteMessage", member, **mine, scope=FOR_EVERYONE)
    deleted = (grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_MESSAGE_DELETED")
    await expect(rpc(messages, "EditMessage", member, **mine, body=b"y"), *deleted)
    await expect(rpc(messages, "ReactToMessage", owner, **mine, emoji="\u2764"), *deleted)
    history = await all_messages(messages, owner, cid)
    tombstone = next(m for m in history if m.message_id == mine["message_id"])
    assert (tombstone.deleted, tombstone.body) == (True, b"")
    system = next(m for m in history if m.type == mpb.MESSAGE_TYPE_SYSTEM)
    await expect(
        rpc(
            messages,
            "EditMessage",
            owner,
            conversation_id=cid,
            message_id=system.message_id,
            body=b"x",
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ERROR_REASON_NOT_THE_SENDER",
    )


# -- the cap ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_group_holds_at_most_1024_members(keys, messages, messages_b) -> None:
    owner = await sign_up(keys)
    ids = [d.account_id for d in await sign_up_many(keys, 1024, prefix="cap")]
    full = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_GROUP_FULL")

    error = await expect(
        rpc(messages, "CreateGroup", owner, title="too big", member_account_ids=ids), *full
    )
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


# -- what removed and late members see ---------------------------------------------------


async def wait_views(views: list[DeviceView], done: Callable[[DeviceView], bool]) -> None:
    for view in views:
        assert view.stream is not None

        def caught_up(_: object, view: DeviceView = view) -> bool:
            view.follow()
            return done(view)

        await view.stream.wait_for(caught_up)


def seqs_of(view: DeviceView, cid: str) -> list[int]:
    return [s.seq for s in view.shown(cid)]


async def test_a_removed_member_sees_nothing_after_the_removal(keys, messages, messages_b) -> None:
    owner, stay, gone = await sign_up_many(keys, 3)
    gone_tablet = await link_device(keys, gone, "tablet")
    members = [stay.account_id, gone.account_id]
    view = await rpc(messages, "CreateGroup", owner, title="removal", member_account_ids=members)
    cid = view.conversation.conversation_id
    before = [await send(messages, owner, cid, f"before {i}".encode()) for i in range(2)]
    own = await send(messages, gone, cid, b"mine")

    watching, live, offline = DeviceView(stay), DeviceView(gone), DeviceView(gone_tablet)
    for device_view, stub in ((watching, messages), (live, messages_b), (offline, messages)):
        await device_view.connect(stub)
    await wait_views([watching, live, offline], lambda v: v.synced and own.seq in seqs_of(v, cid))
    await offline.disconnect()  # the tablet is away during the removal

    await rpc(messages, "RemoveMember", owner, conversation_id=cid, account_id=gone.account_id)
    mine = await rpc(messages_b, "GetConversation", gone, conversation_id=cid)
    assert mine.membership_state == mpb.MEMBERSHIP_STATE_LEFT
    removed_at = mine.visible_until_seq
    assert removed_at == own.seq + 1

    # After the removal: a message, an edit and a reaction on what the removed
    # member had, a deletion of their own message, a rename.
    after = await send(messages, owner, cid, b"after")
    first, second = ({"conversation_id": cid, "message_id": m.message_id} for m in before)
    await rpc(messages, "EditMessage", owner, **first, body=b"new")
    await rpc(messages, "ReactToMessage", stay, **second, emoji="\u2764")
    await rpc(
        messages,
        "DeleteMessage",
        owner,
        conversation_id=cid,
        message_id=own.message_id,
        scope=FOR_EVERYONE,
    )
    renamed = await rpc(messages, "UpdateConversationInfo", owner, conversation_id=cid, title="2")
    last_version = renamed.conversation.last_version

    # The remaining member saw everything; by then the removed one's live
    # stream has long had its chance to see it too.
    await wait_views([watching], lambda v: v.conversations[cid].version == last_version)
    await offline.connect(messages_b)
    await wait_views([live, offline], lambda v: v.synced and removed_at in seqs_of(v, cid))
    for name, device_view in (("live", live), ("offline", offline)):
        device_view.follow()
        feed = device_view.conversations[cid]
        seqs = seqs_of(device_view, cid)
        assert seqs == list(range(seqs[0], removed_at + 1)), name
        assert (feed.seq, device_view.problems) == (removed_at, []), name
        assert feed.version < last_version
        last = device_view.shown(cid)[-1]
        assert last.system_action == mpb.SystemEvent.ACTION_MEMBER_REMOVED
        assert last.system_targets == (gone.account_id,)
        items = {s.message_id: s for s in device_view.shown(cid)}
        assert items[before[0].message_id].body == b"before 0", "no edit after the removal"
        assert items[before[1].message_id].reaction_counts == ()
        assert not items[own.message_id].deleted
        assert after.message_id not in items

    history = await all_messages(messages_b, gone, cid)
    assert history[-1].seq == removed_at
    backward = await rpc(messages, "ListMessages", gone, conversation_id=cid)
    assert backward.messages[0].seq == removed_at
    forward = await rpc(
        messages,
        "ListMessages",
        gone,
        conversation_id=cid,
        direction=mpb.DIRECTION_FORWARD,
        start_seq=removed_at + 1,
    )
    assert list(forward.messages) == []
    inbox = await rpc(messages, "ListConversations", gone, archive_filter=mpb.ARCHIVE_FILTER_ALL)
    assert cid not in [c.conversation.conversation_id for c in inbox.conversations]
    for device_view in (watching, live, offline):
        await device_view.disconnect()


async def test_a_member_added_later_sees_history_from_joining(keys, messages, messages_b) -> None:
    owner, early, late = await sign_up_many(keys, 3)
    view = await rpc(
        messages, "CreateGroup", owner, title="late", member_account_ids=[early.account_id]
    )
    cid = view.conversation.conversation_id
    old = [await send(messages, early, cid, f"old {i}".encode()) for i in range(3)]

    newcomer = DeviceView(late)
    await newcomer.connect(messages_b)
    await wait_views([newcomer], lambda v: v.synced)
    added = await rpc(
        messages, "AddMembers", owner, conversation_id=cid, account_ids=[late.account_id]
    )
    joined_seq = added.conversation.last_seq
    mine = await rpc(messages_b, "GetConversation", late, conversation_id=cid)
    assert (mine.joined_seq, mine.membership_state) == (joined_seq, mpb.MEMBERSHIP_STATE_ACTIVE)
    assert mine.unread_count == 0, "history before joining is not unread"
    page = await rpc(messages, "ListMembers", late, conversation_id=cid)
    assert {m.account_id: m.joined_seq for m in page.members}[late.account_id] == joined_seq

    # Changes to messages from before the join do not reach the newcomer.
    first, second = ({"conversation_id": cid, "message_id": m.message_id} for m in old[:2])
    await rpc(messages, "EditMessage", early, **first, body=b"edit")
    await rpc(messages, "ReactToMessage", owner, **second, emoji="\u2764")
    third = {"conversation_id": cid, "message_id": old[2].message_id}
    await rpc(messages, "DeleteMessage", owner, **third, scope=FOR_EVERYONE)
    welcome = await send(messages, early, cid, b"welcome")
    await wait_views([newcomer], lambda v: welcome.seq in seqs_of(v, cid))
    assert seqs_of(newcomer, cid) == [joined_seq, welcome.seq]
    first_shown = newcomer.shown(cid)[0]
    assert first_shown.system_action == mpb.SystemEvent.ACTION_MEMBERS_ADDED
    assert first_shown.system_targets == (late.account_id,)
    assert newcomer.problems == []

    history = await all_messages(messages_b, late, cid)
    assert [m.seq for m in history] == [joined_seq, welcome.seq]
    newest = await rpc(
        messages, "ListMessages", late, conversation_id=cid, page_size=1, start_seq=welcome.seq
    )
    assert [m.seq for m in newest.messages] == [welcome.seq]
    rest = await rpc(
        messages, "ListMessages", late, conversation_id=cid, page_token=newest.next_page_token
    )
    assert ([m.seq for m in rest.messages], rest.next_page_token) == ([joined_seq], "")
    # A new device starting from nothing gets the same.
    await newcomer.disconnect()
    fresh = DeviceView(await link_device(keys, late, "tablet"))
    await fresh.connect(messages)
    await wait_views([fresh], lambda v: v.synced)
    assert (seqs_of(fresh, cid), fresh.problems) == ([joined_seq, welcome.seq], [])
    await fresh.disconnect()


async def test_a_channel_subscriber_sees_the_whole_history(keys, messages) -> None:
    owner, reader = await sign_up_many(keys, 2)
    view = await rpc(messages, "CreateChannel", owner, title="news", public=True)
    cid = view.conversation.conversation_id
    posts = [await send(messages, owner, cid, f"post {i}".encode()) for i in range(3)]
    subscribed = await rpc(messages, "SubscribeChannel", reader, conversation_id=cid)
    assert (subscribed.joined_seq, subscribed.role) == (0, mpb.ROLE_SUBSCRIBER)
    seen = [m.message_id for m in await all_messages(messages, reader, cid)]
    assert all(p.message_id in seen for p in posts)
    # Subscribing again changes nothing, for a subscriber or the owner.
    again = await rpc(messages, "SubscribeChannel", reader, conversation_id=cid)
    assert again.conversation.last_version == subscribed.conversation.last_version
    owner_again = await rpc(messages, "SubscribeChannel", owner, conversation_id=cid)
    assert owner_again.role == mpb.ROLE_OWNER
