"""Helpers shared by the group and channel tests (tests/integration/test_group_*.py).

A ``World`` is one conversation of a kind ("group", "channel",
"private_channel", "direct") with one account per role in it; ``Setup``
builds worlds and the targets a case needs, through the stubs it is given.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.users import Device, error_reason, rpc, send, sign_up, sign_up_many

FOR_ME, FOR_EVERYONE = mpb.DELETE_SCOPE_FOR_ME, mpb.DELETE_SCOPE_FOR_EVERYONE
THUMBS_UP = "\U0001f44d"


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


async def expect(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        assert (exc.code(), error_reason(exc)) == (code, reason), exc.details()
        return exc
    raise AssertionError(f"expected {code.name} {reason}, got {reply!r:.300}")
