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

The owner-handover rules, the cap and idempotent membership changes are in
test_group_membership.py; messages that are not there and what removed and
late-joining members see, in test_group_history.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.groups import FOR_EVERYONE, FOR_ME, THUMBS_UP, Setup, World
from tests.users import Device, error_reason, rpc, sign_up

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
