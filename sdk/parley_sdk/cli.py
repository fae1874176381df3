"""Chat commands of the ``parley`` console script (``parley signup``, ``send``, ``chat``...).

``parley_dev.cli`` owns the parser and calls :func:`register_commands`. Message
bodies are sent as plain UTF-8 for now: end-to-end encryption arrives in a later
version, and the server already treats bodies as opaque ciphertext.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from parley_sdk._cli_chat import run_chat, run_follow
from parley_sdk._cli_output import Directory, emit, format_message, local_time, warn
from parley_sdk._cli_profiles import Profile, ProfileError, ProfileStore
from parley_sdk.client import DEFAULT_KEYS_TARGET, DEFAULT_MESSAGE_TARGET, Client
from parley_sdk.credentials import Credentials
from parley_sdk.errors import ParleyError, UnauthenticatedError
from parley_sdk.models import Direction, Platform

__all__ = ["register_commands"]

_PLAINTEXT_NOTE = (
    "Bodies are sent as plain UTF-8 for now; end-to-end encryption comes in a later version."
)

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Adds the chat commands; each sets ``func(args) -> int`` (an exit code)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="default", help="profile to act as (default: default)")
    common.add_argument(
        "--keys-target",
        default=None,
        metavar="HOST:PORT",
        help=f"svc_keys address (default: the profile's, else {DEFAULT_KEYS_TARGET})",
    )
    common.add_argument(
        "--message-target",
        default=None,
        metavar="HOST:PORT",
        help=f"svc_message address (default: the profile's, else {DEFAULT_MESSAGE_TARGET})",
    )

    def add(
        name: str, command: Command, help_text: str, *, interrupt_code: int = 130
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        parser.set_defaults(func=functools.partial(_run, command, interrupt_code=interrupt_code))
        return parser

    signup = add("signup", _signup, "create an account and store its device in a profile")
    signup.add_argument("handle", metavar="HANDLE", help="3-32 chars: a letter, then a-z 0-9 _ .")
    signup.add_argument("--display-name", default="", help="name shown to others")
    signup.add_argument("--device-name", default=None, help="label of this device")
    signup.add_argument("--force", action="store_true", help="overwrite an existing profile")

    add("whoami", _whoami, "show the profile's account and device")

    open_ = add("open", _open, "print the id of the direct conversation with @HANDLE")
    open_.add_argument("peer", metavar="@HANDLE")

    send = add("send", _send, f"send a text message to @HANDLE. {_PLAINTEXT_NOTE}")
    send.add_argument("peer", metavar="@HANDLE")
    send.add_argument("text", metavar="TEXT", nargs="+", help="words are joined with spaces")

    history = add("history", _history, "print the conversation with @HANDLE, oldest first")
    history.add_argument("peer", metavar="@HANDLE")
    history.add_argument("--limit", type=_positive_int, default=20, metavar="N")

    add("inbox", _inbox, "list conversations with unread counts, newest activity first")

    # Ctrl-C is how `follow` and `chat` normally end, so it is a success there.
    follow = add("follow", _follow, "print incoming events live until Ctrl-C", interrupt_code=0)
    follow.add_argument(
        "--exit-after", type=float, default=None, metavar="SECONDS", help="stop after SECONDS"
    )

    chat = add(
        "chat",
        _chat,
        "chat with @HANDLE: print their messages live, send each stdin line. " + _PLAINTEXT_NOTE,
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _run(command: Command, args: argparse.Namespace, *, interrupt_code: int) -> int:
    try:
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return interrupt_code
    except ProfileError as error:
        warn(f"error: {error}")
        return 2
    except UnauthenticatedError as error:
        warn(f"error: {error}")
        warn(f"hint: the profile {args.profile!r} may be signed out; `parley signup` again")
        return 1
    except ParleyError as error:
        warn(f"error: {error}")
        for field, description in error.field_violations:
            warn(f"  {field}: {description}")
        return 1


def _handle(text: str) -> str:
    return text.removeprefix("@")


async def _connect(args: argparse.Namespace, store: ProfileStore) -> tuple[Client, Profile]:
    profile = store.load(args.profile)

    def persist(credentials: Credentials) -> None:
        # Refresh tokens rotate: the old one is dead once the server answered, so
        # the new one must reach disk or the profile is signed out for good.
        # Reloaded first so as not to undo what `follow` saved meanwhile.
        store.save(store.load(profile.name).with_credentials(credentials))

    client = await Client.connect(
        keys_target=args.keys_target or profile.keys_target,
        message_target=args.message_target or profile.message_target,
        credentials=profile.credentials,
        on_credentials_changed=persist,
    )
    return client, profile


async def _signup(args: argparse.Namespace) -> int:
    store = ProfileStore()
    if store.exists(args.profile) and not args.force:
        raise ProfileError(
            f"profile {args.profile!r} already exists; pick another with --profile NAME "
            "or pass --force to replace it"
        )
    keys_target = args.keys_target or DEFAULT_KEYS_TARGET
    message_target = args.message_target or DEFAULT_MESSAGE_TARGET
    async with await Client.sign_up(
        handle=_handle(args.handle),
        display_name=args.display_name,
        device_name=args.device_name or f"cli@{socket.gethostname()}"[:64],
        platform=Platform.CLI,
        keys_target=keys_target,
        message_target=message_target,
    ) as client:
        credentials = client.credentials
        assert credentials is not None
        store.save(
            Profile(
                name=args.profile,
                handle=_handle(args.handle),
                keys_target=keys_target,
                message_target=message_target,
                credentials=credentials,
            )
        )
        emit(
            f"signed up @{_handle(args.handle)} account={credentials.account_id} "
            f"device={credentials.device_id} profile={args.profile}"
        )
    return 0


async def _whoami(args: argparse.Namespace) -> int:
    client, profile = await _connect(args, ProfileStore())
    async with client:
        account = await client.get_account()
        name = f" ({account.display_name})" if account.display_name else ""
        emit(
            f"@{account.handle}{name} account={account.account_id} device={client.device_id} "
            f"profile={profile.name} keys={args.keys_target or profile.keys_target} "
            f"message={args.message_target or profile.message_target}"
        )
    return 0


async def open_conversation(client: Client, peer: str) -> tuple[str, str, str]:
    """(conversation id, peer account id, peer handle as stored)."""
    account = await client.get_account(handle=_handle(peer))
    view = await client.create_direct_conversation(account.account_id)
    return view.conversation.conversation_id, account.account_id, account.handle


async def _open(args: argparse.Namespace) -> int:
    client, _ = await _connect(args, ProfileStore())
    async with client:
        conversation_id, _, _ = await open_conversation(client, args.peer)
        emit(conversation_id)
    return 0


async def _send(args: argparse.Namespace) -> int:
    client, _ = await _connect(args, ProfileStore())
    async with client:
        conversation_id, _, handle = await open_conversation(client, args.peer)
        message = await client.send_message(conversation_id, " ".join(args.text).encode())
        emit(
            f"sent #{message.seq} to @{handle} at {local_time(message.create_time)} "
            f"conversation={conversation_id} message={message.message_id}"
        )
    return 0


async def _history(args: argparse.Namespace) -> int:
    client, profile = await _connect(args, ProfileStore())
    async with client:
        conversation_id, peer_id, peer_handle = await open_conversation(client, args.peer)
        directory = Directory(client)
        directory.remember(peer_id, peer_handle)
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
        for message in reversed(newest_first):
            emit(await format_message(message, directory, with_date=True))
    return 0


async def _inbox(args: argparse.Namespace) -> int:
    client, profile = await _connect(args, ProfileStore())
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        empty = True
        async for view in client.list_conversations():
            empty = False
            conversation = view.conversation
            others = [a for a in conversation.member_account_ids if a != client.account_id]
            names = [f"@{await directory.handle(a)}" for a in others or [client.account_id]]
            last = "last=none"
            if view.HasField("last_message"):
                summary = view.last_message
                sender = await directory.handle(summary.sender_account_id)
                last = f"last=#{summary.seq} @{sender} {local_time(summary.create_time)}"
            emit(
                f"{','.join(names)} unread={view.unread_count} {last} "
                f"conversation={conversation.conversation_id}"
            )
        if empty:
            emit("(no conversations)")
    return 0


async def _follow(args: argparse.Namespace) -> int:
    store = ProfileStore()
    client, profile = await _connect(args, store)
    async with client:
        return await run_follow(client, profile, store, exit_after=args.exit_after)


async def _chat(args: argparse.Namespace) -> int:
    client, profile = await _connect(args, ProfileStore())
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
