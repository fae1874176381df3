"""The chat commands of ``parley`` (``parley signup``, ``send``, ``chat``...).

:mod:`parley_cli.console` builds the parser around :func:`register_commands`;
the developer tooling adds its own commands beside them. Messages
are end-to-end encrypted: each profile keeps its device's keys and decrypted
history in ``<profile>.db`` beside its JSON file (channels are not encrypted).

Where a command takes a CONVERSATION, it is a conversation id (``parley inbox``
lists them) or ``@HANDLE`` for the direct conversation with that account; a
MESSAGE is a message id or ``#SEQ`` as ``parley history`` prints it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from parley_cli.chat import run_chat, run_follow
from parley_cli.common import (
    Commands,
    connect,
    handle,
    open_conversation,
    positive_int,
    resolve_conversation,
    resolve_message,
)
from parley_cli.export import register_export_commands
from parley_cli.files import register_file_commands
from parley_cli.groups import register_group_commands
from parley_cli.inbox import register_message_commands
from parley_cli.output import Directory, emit, format_message, format_view, local_time
from parley_cli.presence import register_presence_commands
from parley_cli.profiles import Profile, ProfileError, ProfileStore, discard_store
from parley_cli.push import register_push_commands
from parley_cli.search import register_search_commands
from parley_cli.targets import Targets
from parley_sdk import (
    ArchiveFilter,
    Client,
    Direction,
    Platform,
)

__all__ = ["register_commands"]

ENCRYPTION_NOTE = (
    "Messages are end-to-end encrypted (except in channels, which any subscriber may read)."
)


def register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Adds the chat commands; each sets ``func(args) -> int`` (an exit code)."""
    commands = Commands(subparsers)
    add = commands.add

    signup = add("signup", _signup, "create an account and store its device in a profile")
    signup.add_argument("handle", metavar="HANDLE", help="3-32 chars: a letter, then a-z 0-9 _ .")
    signup.add_argument("--display-name", default="", help="name shown to others")
    signup.add_argument("--device-name", default=None, help="label of this device")
    signup.add_argument(
        "--home-region",
        default="",
        help="the region the account lives in (default: the region the keys target serves)",
    )
    signup.add_argument("--force", action="store_true", help="overwrite an existing profile")
    signup.set_defaults(makes_profile=True)

    add("whoami", _whoami, "show the profile's account and device")

    open_ = add("open", _open, "print the id of the direct conversation with @HANDLE")
    open_.add_argument("peer", metavar="@HANDLE")

    send = add(
        "send",
        _send,
        f"send a text message to @HANDLE or to a conversation id. {ENCRYPTION_NOTE}",
    )
    send.add_argument("peer", metavar="@HANDLE|CONVERSATION")
    send.add_argument("text", metavar="TEXT", nargs="+", help="words are joined with spaces")
    send.add_argument("--reply-to", default="", metavar="MESSAGE", help="message id or #SEQ")
    send.add_argument("--forwarded", action="store_true", help="mark the message as forwarded")

    history = add(
        "history", _history, "print a conversation (@HANDLE or conversation id), oldest first"
    )
    history.add_argument("peer", metavar="@HANDLE|CONVERSATION")
    history.add_argument("--limit", type=positive_int, default=20, metavar="N")

    inbox = add("inbox", _inbox, "list conversations with unread counts: pinned first, then newest")
    shown = inbox.add_mutually_exclusive_group()
    shown.add_argument("--archived", action="store_true", help="only archived conversations")
    shown.add_argument("--all", action="store_true", help="archived ones too")

    # Ctrl-C is how `follow` and `chat` normally end, so it is a success there.
    follow = add("follow", _follow, "print incoming events live until Ctrl-C", interrupt_code=0)
    follow.add_argument(
        "--exit-after", type=float, default=None, metavar="SECONDS", help="stop after SECONDS"
    )

    chat = add(
        "chat",
        _chat,
        "chat with @HANDLE: print their messages live, send each stdin line. " + ENCRYPTION_NOTE,
        interrupt_code=0,
    )
    chat.add_argument("peer", metavar="@HANDLE")
    chat.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after stdin ends, keep printing incoming messages this long (for scripts)",
    )

    erase = add(
        "delete-account",
        _delete_account,
        "erase this profile's account everywhere (devices, keys, messages it sent, contacts,"
        " presence, media); its handle is free again after a cooling-off period",
    )
    erase.add_argument(
        "--confirm",
        required=True,
        metavar="HANDLE",
        help="the account's handle, typed again",
    )

    register_file_commands(commands)
    register_group_commands(commands)
    register_message_commands(commands)
    register_presence_commands(commands)
    register_push_commands(commands)
    register_export_commands(commands)
    register_search_commands(commands)


async def _signup(args: argparse.Namespace) -> int:
    store = ProfileStore()
    if store.exists(args.profile) and not args.force:
        raise ProfileError(
            f"profile {args.profile!r} already exists; pick another with --profile NAME "
            "or pass --force to replace it"
        )
    targets = Targets.of(args)
    # Nothing of the profile is written until the account exists: a sign-up that
    # fails (the server unreachable, the handle taken) leaves no half profile.
    pending = store.pending_device_store(args.profile)
    try:
        async with await Client.sign_up(
            handle=handle(args.handle),
            display_name=args.display_name,
            device_name=args.device_name or f"cli@{socket.gethostname()}"[:64],
            platform=Platform.CLI,
            home_region=args.home_region,
            keys_target=targets.keys,
            message_target=targets.message,
            presence_target=targets.presence,
            media_target=targets.media,
            search_target=targets.search,
            store=pending,
        ) as client:
            credentials = client.credentials
    except BaseException:
        discard_store(pending)
        raise
    assert credentials is not None
    store.adopt_device_store(args.profile, pending)
    store.save(
        Profile(
            name=args.profile,
            handle=handle(args.handle),
            keys_target=targets.keys,
            message_target=targets.message,
            presence_target=targets.presence,
            media_target=targets.media,
            search_target=targets.search,
            credentials=credentials,
        )
    )
    emit(
        f"signed up @{handle(args.handle)} account={credentials.account_id} "
        f"device={credentials.device_id} profile={args.profile}"
    )
    return 0


async def _whoami(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        account = await client.get_account()
        name = f" ({account.display_name})" if account.display_name else ""
        emit(
            f"@{account.handle}{name} account={account.account_id} device={client.device_id} "
            f"profile={profile.name} keys={args.keys_target or profile.keys_target} "
            f"message={args.message_target or profile.message_target} "
            f"presence={args.presence_target or profile.presence_target} "
            f"media={args.media_target or profile.media_target} "
            f"search={args.search_target or profile.search_target}"
        )
    return 0


async def _delete_account(args: argparse.Namespace) -> int:
    store = ProfileStore()
    client, profile = await connect(args, store)
    async with client:
        erased = await client.delete_account(confirm=args.confirm)
    store.forget(profile.name)
    released = local_time(erased.handle_release_time, with_date=True)
    emit(
        f"deleted @{profile.handle}: erasure={erased.erasure_id}; the handle is free again "
        f"from {released}; profile {profile.name} removed"
    )
    return 0


async def _open(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id, _, _ = await open_conversation(client, args.peer)
        emit(conversation_id)
    return 0


async def _send(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.peer)
        reply_to = ""
        if args.reply_to:
            reply_to = await resolve_message(client, conversation_id, args.reply_to)
        sent = await client.send_text(
            conversation_id,
            " ".join(args.text),
            reply_to_message_id=reply_to,
            forwarded=args.forwarded,
        )
        message = sent.message
        to = f"@{handle(args.peer)}" if args.peer != conversation_id else conversation_id
        emit(
            f"sent #{message.seq} to {to} at {local_time(message.create_time)} "
            f"conversation={conversation_id} message={message.message_id}"
        )
    return 0


async def _history(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.peer)
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        newest_first = []
        async for message in client.list_messages(
            conversation_id, direction=Direction.BACKWARD, page_size=min(args.limit, 200)
        ):
            newest_first.append(message)
            if len(newest_first) >= args.limit:
                break
        if not newest_first:
            emit("(no messages)")
        # Oldest first, the order their keys were made in.
        for message in reversed(newest_first):
            decrypted = await client.decrypt(message)
            emit(
                await format_message(
                    message,
                    directory,
                    with_date=True,
                    text=decrypted.text,
                    error=decrypted.error,
                    attachment=decrypted.attachment,
                )
            )
    return 0


async def _inbox(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    archive_filter = ArchiveFilter.ACTIVE
    if args.archived:
        archive_filter = ArchiveFilter.ARCHIVED
    elif args.all:
        archive_filter = ArchiveFilter.ALL
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        empty = True
        async for view in client.list_conversations(archive_filter=archive_filter):
            empty = False
            emit(await format_view(view, directory, client.account_id))
        if empty:
            emit("(no conversations)")
    return 0


async def _follow(args: argparse.Namespace) -> int:
    store = ProfileStore()
    client, profile = await connect(args, store)
    async with client:
        return await run_follow(client, profile, store, exit_after=args.exit_after)


async def _chat(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        conversation_id, peer_id, peer_handle = await open_conversation(client, args.peer)
        return await run_chat(
            client,
            profile,
            conversation_id=conversation_id,
            peer=(peer_id, peer_handle),
            linger=args.linger,
            stdin=sys.stdin,
        )
