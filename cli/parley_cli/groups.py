"""``parley group ...`` and ``parley channel ...``: create, membership, roles, info."""

from __future__ import annotations

import argparse

from parley_cli.common import (
    Commands,
    connect,
    handle,
    resolve_account,
    resolve_conversation,
)
from parley_cli.output import Directory, emit, format_member, format_view, one_line
from parley_cli.profiles import ProfileStore
from parley_sdk import Client, ConversationType, ConversationView, Role

__all__ = ["register_group_commands"]

_ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN, "member": Role.MEMBER}


def register_group_commands(commands: Commands) -> None:
    group = commands.group("group", "groups: create, add, remove, leave, members, role, info")
    add = commands.add

    create = add("create", _group_create, "create a group owned by you", under=group)
    create.add_argument("title", metavar="TITLE", help="1-128 characters")
    create.add_argument("members", metavar="@HANDLE", nargs="*", help="the other members")
    create.add_argument("--avatar", default="", metavar="REF", help="avatar reference")

    members_add = add(
        "add", _add, "add members (owners and admins); in a channel, subscribers", under=group
    )
    members_add.add_argument("conversation", metavar="CONVERSATION")
    members_add.add_argument("members", metavar="@HANDLE", nargs="+")

    remove = add("remove", _remove, "remove a member (owners and admins)", under=group)
    remove.add_argument("conversation", metavar="CONVERSATION")
    remove.add_argument("member", metavar="@HANDLE")

    leave = add("leave", _leave, "leave a group (the last owner must hand over first)", under=group)
    leave.add_argument("conversation", metavar="CONVERSATION")

    members = add("members", _members, "list members with roles, in join order", under=group)
    members.add_argument("conversation", metavar="CONVERSATION")

    role = add("role", _role, "make a member owner, admin or member", under=group)
    role.add_argument("conversation", metavar="CONVERSATION")
    role.add_argument("member", metavar="@HANDLE")
    role.add_argument("role", choices=sorted(_ROLES), metavar="owner|admin|member")

    info = add(
        "info", _info, "show a group or channel; with --title/--avatar, change them", under=group
    )
    info.add_argument("conversation", metavar="CONVERSATION")
    info.add_argument("--title", default=None, help="new title (owners and admins)")
    info.add_argument("--avatar", default=None, metavar="REF", help="new avatar ('' clears)")

    channel = commands.group("channel", "broadcast channels: create, subscribe, leave, add")
    created = add("create", _channel_create, "create a channel owned by you", under=channel)
    created.add_argument("title", metavar="TITLE", help="1-128 characters")
    created.add_argument("--public", action="store_true", help="anyone may subscribe")
    created.add_argument("--avatar", default="", metavar="REF", help="avatar reference")

    subscribe = add("subscribe", _subscribe, "subscribe to a public channel", under=channel)
    subscribe.add_argument("conversation", metavar="CONVERSATION")

    unsubscribe = add("leave", _leave, "unsubscribe from a channel", under=channel)
    unsubscribe.add_argument("conversation", metavar="CONVERSATION")

    subscribers = add(
        "add", _add, "add subscribers to a non-public channel (owners and admins)", under=channel
    )
    subscribers.add_argument("conversation", metavar="CONVERSATION")
    subscribers.add_argument("members", metavar="@HANDLE", nargs="+")


async def _show(client: Client, view: ConversationView, handle_of_me: str) -> None:
    directory = Directory(client)
    directory.remember(client.account_id, handle_of_me)
    emit(await format_view(view, directory, client.account_id))


async def _group_create(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        member_ids = [await resolve_account(client, member) for member in args.members]
        view = await client.create_group(args.title, members=member_ids, avatar_ref=args.avatar)
        conversation = view.conversation
        emit(
            f'created group "{one_line(conversation.title)}" '
            f"members={conversation.member_count} conversation={conversation.conversation_id}"
        )
    return 0


async def _channel_create(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        view = await client.create_channel(args.title, public=args.public, avatar_ref=args.avatar)
        conversation = view.conversation
        visibility = "public" if conversation.public else "private"
        emit(
            f'created {visibility} channel "{one_line(conversation.title)}" '
            f"conversation={conversation.conversation_id}"
        )
    return 0


async def _add(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        member_ids = [await resolve_account(client, member) for member in args.members]
        view = await client.add_members(conversation_id, member_ids)
        names = " ".join(f"@{handle(member)}" for member in args.members)
        emit(f"added {names} members={view.conversation.member_count}")
    return 0


async def _remove(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        account_id = await resolve_account(client, args.member)
        view = await client.remove_member(conversation_id, account_id)
        emit(f"removed @{handle(args.member)} members={view.conversation.member_count}")
    return 0


async def _leave(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        left_seq = await client.leave_conversation(conversation_id)
        emit(f"left {conversation_id} at #{left_seq}")
    return 0


async def _subscribe(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        view = await client.subscribe_channel(conversation_id)
        await _show(client, view, profile.handle)
    return 0


async def _members(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        async for member in client.list_members(conversation_id):
            emit(await format_member(member, directory))
    return 0


async def _role(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        account_id = await resolve_account(client, args.member)
        view = await client.set_member_role(conversation_id, account_id, _ROLES[args.role])
        # In a channel, "member" is stored as subscriber: say what the server did.
        shown = args.role
        channel = ConversationType(view.conversation.type) is ConversationType.CHANNEL
        if channel and args.role == "member":
            shown = "subscriber"
        emit(f"@{handle(args.member)} is now {shown}")
    return 0


async def _info(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        if args.title is None and args.avatar is None:
            view = await client.get_conversation(conversation_id)
        else:
            view = await client.update_conversation_info(
                conversation_id, title=args.title, avatar_ref=args.avatar
            )
        await _show(client, view, profile.handle)
    return 0
