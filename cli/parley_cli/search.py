"""``parley search``: full-text search of what this profile's device has read or
sent, in its own store (nothing is sent to the server); with ``--server``, the
server's blind index of conversations whose server search is on. ``parley
server-search on|off`` turns that on or off for a conversation."""

from __future__ import annotations

import argparse
from datetime import datetime

from parley_cli.common import Commands, UsageError, connect, positive_int, resolve_conversation
from parley_cli.output import Directory, emit, one_line, warn
from parley_cli.profiles import ProfileStore
from parley_sdk import QueryError, SearchResult, SearchUnavailableError

__all__ = ["register_search_commands"]


def register_search_commands(commands: Commands) -> None:
    search = commands.add(
        "search",
        _search,
        "search the messages this device has read or sent, newest first "
        '(words are ANDed, hel* is a prefix, "two words" a phrase)',
    )
    search.add_argument("query", metavar="QUERY", nargs="+", help="words are joined with spaces")
    search.add_argument(
        "--conversation",
        default=None,
        metavar="@HANDLE|CONVERSATION",
        help="only this conversation",
    )
    search.add_argument("--limit", type=positive_int, default=20, metavar="N")
    search.add_argument(
        "--backfill",
        action="store_true",
        help="first index the history this device can read and has not indexed yet "
        "(resumable; progress on stderr)",
    )
    search.add_argument(
        "--server",
        action="store_true",
        help="ask the server's blind index (conversations with server search on; "
        "finds what this device never read; no prefixes)",
    )
    toggle = commands.add(
        "server-search",
        _server_search,
        "turn server search (the blind index, off by default) on or off for a "
        "conversation; every member sees the change",
    )
    toggle.add_argument("state", choices=("on", "off"))
    toggle.add_argument("conversation", metavar="@HANDLE|CONVERSATION")


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


async def _line(result: SearchResult, directory: Directory) -> str:
    sender = await directory.handle(result.sender_account_id)
    return (
        f"{result.conversation_id} #{result.seq} {_when(result.sent_at)} "
        f"@{sender}: {one_line(result.snippet)}"
    )


async def _server_search(args: argparse.Namespace) -> int:
    args.uses_search = True
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        view = await client.set_server_search(conversation_id, args.state == "on")
        state = "on" if view.conversation.server_search else "off"
        emit(f"server search is {state} for {conversation_id}")
    return 0


async def _search(args: argparse.Namespace) -> int:
    args.uses_search = args.server
    client, profile = await connect(args, ProfileStore())
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        conversation_id = None
        if args.conversation:
            conversation_id = await resolve_conversation(client, args.conversation)
        try:
            if args.backfill and args.server:
                raise UsageError("--backfill fills the device's index; --server does not use it")
            if args.backfill:
                report = await client.backfill_search_index(
                    progress=lambda done, total: warn(f"indexing history: {done}/{total}")
                )
                warn(f"indexed {report.indexed} messages; {report.unreadable} not readable here")
            found = 0
            async for result in client.iter_search(
                " ".join(args.query),
                conversation_id=conversation_id,
                page_size=min(args.limit, 100),
                server=args.server,
            ):
                emit(await _line(result, directory))
                found += 1
                if found >= args.limit:
                    break
        except QueryError as error:
            raise UsageError(str(error)) from None
        except SearchUnavailableError as error:
            warn(f"error: {error}")
            return 1
        if not found:
            emit("(no matches)")
    return 0
