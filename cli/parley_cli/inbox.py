"""Message changes and inbox controls: ``parley react/edit/delete/reactions/receipts``
and ``parley pin/mute/archive/unread``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from parley_cli.common import (
    Commands,
    connect,
    parse_duration,
    resolve_conversation,
    resolve_message,
)
from parley_cli.output import Directory, emit, format_view, warn
from parley_cli.profiles import ProfileStore
from parley_sdk import Client, ConversationView, DeleteScope

__all__ = ["register_message_commands"]


def register_message_commands(commands: Commands) -> None:
    add = commands.add

    react = add("react", _react, "react to a message with an emoji (again with --remove)")
    react.add_argument("conversation", metavar="CONVERSATION")
    react.add_argument("message", metavar="MESSAGE", help="message id or #SEQ")
    react.add_argument("emoji", metavar="EMOJI")
    react.add_argument("--remove", action="store_true", help="take your reaction back")

    edit = add("edit", _edit, "replace the text of one of your messages")
    edit.add_argument("conversation", metavar="CONVERSATION")
    edit.add_argument("message", metavar="MESSAGE", help="message id or #SEQ")
    edit.add_argument("text", metavar="TEXT", nargs="+", help="words are joined with spaces")

    delete = add("delete", _delete, "delete a message for you, or with --for-everyone for all")
    delete.add_argument("conversation", metavar="CONVERSATION")
    delete.add_argument("message", metavar="MESSAGE", help="message id or #SEQ")
    delete.add_argument(
        "--for-everyone",
        action="store_true",
        help="clear it for everyone (your own message, or as an owner/admin)",
    )

    reactions = add("reactions", _reactions, "list who reacted to a message with what")
    reactions.add_argument("conversation", metavar="CONVERSATION")
    reactions.add_argument("message", metavar="MESSAGE", help="message id or #SEQ")

    receipts = add("receipts", _receipts, "who a message was delivered to and read by")
    receipts.add_argument("conversation", metavar="CONVERSATION")
    receipts.add_argument("seq", metavar="#SEQ", type=_seq)

    pin = add("pin", _pin, "pin a conversation to the top of the inbox (--off to unpin)")
    pin.add_argument("conversation", metavar="CONVERSATION")
    pin.add_argument("--off", action="store_true", help="unpin")

    mute = add("mute", _mute, "mute notifications: forever (default), --for, --until or --off")
    mute.add_argument("conversation", metavar="CONVERSATION")
    how = mute.add_mutually_exclusive_group()
    how.add_argument("--for", dest="duration", type=parse_duration, metavar="DURATION")
    how.add_argument(
        "--until", type=_aware_time, metavar="TIME", help="ISO 8601; local time without offset"
    )
    how.add_argument("--off", action="store_true", help="unmute")

    archive = add("archive", _archive, "archive a conversation (--off to unarchive)")
    archive.add_argument("conversation", metavar="CONVERSATION")
    archive.add_argument("--off", action="store_true", help="unarchive")

    unread = add("unread", _unread, "mark a conversation unread until you next read it")
    unread.add_argument("conversation", metavar="CONVERSATION")


def _seq(text: str) -> int:
    value = int(text.removeprefix("#"))
    if value < 1:
        raise argparse.ArgumentTypeError("a seq is at least 1")
    return value


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    # On a command line, a time without an offset means the user's own clock.
    return moment if moment.tzinfo else moment.astimezone()


async def _target(args: argparse.Namespace) -> tuple[Client, str, str]:
    client, profile = await connect(args, ProfileStore())
    try:
        conversation_id = await resolve_conversation(client, args.conversation)
    except BaseException:
        await client.close()
        raise
    return client, conversation_id, profile.handle


async def _show(client: Client, view: ConversationView, my_handle: str) -> None:
    directory = Directory(client)
    directory.remember(client.account_id, my_handle)
    emit(await format_view(view, directory, client.account_id))


async def _react(args: argparse.Namespace) -> int:
    client, conversation_id, _ = await _target(args)
    async with client:
        message_id = await resolve_message(client, conversation_id, args.message)
        result = await client.react_to_message(
            conversation_id, message_id, args.emoji, remove=args.remove
        )
        counts = " ".join(f"{emoji}{count}" for emoji, count in result.counts.items())
        verb = "removed" if args.remove else "reacted"
        emit(
            f"{verb} {args.emoji} changed={'yes' if result.changed else 'no'} "
            f"reactions=[{counts}] message={message_id}"
        )
    return 0


async def _edit(args: argparse.Namespace) -> int:
    client, conversation_id, _ = await _target(args)
    async with client:
        message_id = await resolve_message(client, conversation_id, args.message)
        edit = await client.edit_text(conversation_id, message_id, " ".join(args.text))
        emit(f"edited #{edit.seq} message={message_id}")
    return 0


async def _delete(args: argparse.Namespace) -> int:
    client, conversation_id, _ = await _target(args)
    async with client:
        message_id = await resolve_message(client, conversation_id, args.message)
        scope = DeleteScope.FOR_EVERYONE if args.for_everyone else DeleteScope.FOR_ME
        deletion = await client.delete_message(conversation_id, message_id, scope=scope)
        who = "everyone" if scope is DeleteScope.FOR_EVERYONE else "you"
        emit(f"deleted #{deletion.seq} for {who} message={message_id}")
    return 0


async def _reactions(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        message_id = await resolve_message(client, conversation_id, args.message)
        directory = Directory(client)
        directory.remember(client.account_id, my_handle)
        empty = True
        async for reaction in client.list_reactions(conversation_id, message_id):
            empty = False
            emit(f"{reaction.emoji} @{await directory.handle(reaction.account_id)}")
        if empty:
            emit("(no reactions)")
    return 0


async def _receipts(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, my_handle)
        receipts = client.list_message_receipts(conversation_id, args.seq)
        async for receipt in receipts:
            state = "read" if receipt.read else "delivered" if receipt.delivered else "sent"
            emit(f"@{await directory.handle(receipt.account_id)} {state}")
        delivered, read = await receipts.fetch_counts()
        emit(f"#{args.seq} delivered={delivered} read={read}")
    return 0


async def _pin(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        await _show(client, await client.set_pinned(conversation_id, not args.off), my_handle)
    return 0


async def _mute(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        if args.off:
            view = await client.set_muted(conversation_id)
        elif args.duration is not None:
            view = await client.set_muted(conversation_id, until=args.duration)
        elif args.until is not None:
            if args.until <= datetime.now(UTC):
                warn("note: that time is past, so the conversation is in effect unmuted")
            view = await client.set_muted(conversation_id, until=args.until)
        else:
            view = await client.set_muted(conversation_id, forever=True)
        await _show(client, view, my_handle)
    return 0


async def _archive(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        await _show(client, await client.set_archived(conversation_id, not args.off), my_handle)
    return 0


async def _unread(args: argparse.Namespace) -> int:
    client, conversation_id, my_handle = await _target(args)
    async with client:
        await _show(client, await client.mark_unread(conversation_id), my_handle)
    return 0
