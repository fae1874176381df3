"""``parley presence get/watch/settings`` and ``parley contacts add/remove/list``.

An ACCOUNT is ``@HANDLE`` or an account id. Presence lines read
``@HANDLE online|offline|unknown [last-seen=...] account=ID``; "unknown" means
the account's privacy settings (or yours, by reciprocity) hide it.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from parley_cli.common import Commands, connect, handle, resolve_account
from parley_cli.output import Directory, emit, warn
from parley_cli.profiles import ProfileStore
from parley_sdk import Client, Presence, PresenceSettings, Visibility

__all__ = ["format_presence", "format_presence_settings", "register_presence_commands"]

_VISIBILITY = {
    "everyone": Visibility.EVERYONE,
    "contacts": Visibility.CONTACTS,
    "nobody": Visibility.NOBODY,
}


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_presence(presence: Presence, name: str) -> str:
    """``@bob offline last-seen=2030-01-01 10:00:00 account=...`` (local time)."""
    state = presence.availability.name.lower()
    seen = f" last-seen={_when(presence.last_seen)}" if presence.last_seen else ""
    return f"@{name} {state}{seen} account={presence.account_id}"


def format_presence_settings(settings: PresenceSettings) -> str:
    invisible = "yes" if settings.invisible else "no"
    return (
        f"online={settings.online.name.lower()} last-seen={settings.last_seen.name.lower()} "
        f"invisible={invisible}"
    )


def register_presence_commands(commands: Commands) -> None:
    add = commands.add
    presence = commands.group("presence", "who is online: get, watch, privacy settings")

    get = add(
        "get", _get, "show whether accounts are online and when they were last seen", under=presence
    )
    get.add_argument("accounts", metavar="ACCOUNT", nargs="+", help="@HANDLE or account id")

    watch = add(
        "watch",
        _watch,
        "print accounts' presence, then each change, until Ctrl-C",
        under=presence,
        interrupt_code=0,
    )
    watch.add_argument("accounts", metavar="ACCOUNT", nargs="+", help="@HANDLE or account id")
    watch.add_argument(
        "--exit-after", type=float, default=None, metavar="SECONDS", help="stop after SECONDS"
    )

    settings = add(
        "settings",
        _settings,
        "show who may see your presence; with options, change it",
        under=presence,
    )
    levels = "|".join(_VISIBILITY)
    settings.add_argument(
        "--online", choices=sorted(_VISIBILITY), metavar=levels, help="who sees you online"
    )
    settings.add_argument(
        "--last-seen",
        choices=sorted(_VISIBILITY),
        metavar=levels,
        help="who sees when you were last seen (at most those who see you online)",
    )
    mode = settings.add_mutually_exclusive_group()
    mode.add_argument(
        "--invisible",
        dest="invisible",
        action="store_const",
        const=True,
        default=None,
        help="appear offline to everyone (and see nobody's presence)",
    )
    mode.add_argument(
        "--visible", dest="invisible", action="store_const", const=False, help="end --invisible"
    )

    contacts = commands.group("contacts", "your contact list: who 'contacts' visibility admits")
    contacts_add = add("add", _contacts_add, "add accounts to your contacts", under=contacts)
    contacts_add.add_argument("accounts", metavar="ACCOUNT", nargs="+")
    contacts_remove = add(
        "remove", _contacts_remove, "remove accounts from your contacts", under=contacts
    )
    contacts_remove.add_argument("accounts", metavar="ACCOUNT", nargs="+")
    add("list", _contacts_list, "list your contacts, oldest first", under=contacts)


async def _resolve(client: Client, targets: list[str], directory: Directory) -> list[str]:
    """Account ids of ``@HANDLE``s or ids, remembering the handles given."""
    ids = []
    for target in targets:
        account_id = await resolve_account(client, target)
        if account_id != target:
            directory.remember(account_id, handle(target))
        ids.append(account_id)
    return ids


async def _get(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        account_ids = await _resolve(client, args.accounts, directory)
        for presence in await client.get_presence(account_ids):
            emit(format_presence(presence, await directory.handle(presence.account_id)))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    client, profile = await connect(args, ProfileStore())
    async with client:
        directory = Directory(client)
        directory.remember(client.account_id, profile.handle)
        account_ids = await _resolve(client, args.accounts, directory)
        shown: dict[str, Presence] = {}

        async def consume() -> None:
            async with client.subscribe_presence(account_ids) as subscription:
                async for update in subscription:
                    for presence in update.presences:
                        # A snapshot after a reconnect repeats what did not change.
                        if shown.get(presence.account_id) == presence:
                            continue
                        shown[presence.account_id] = presence
                        name = await directory.handle(presence.account_id)
                        emit(format_presence(presence, name))

        warn(f"watching {len(account_ids)} account(s); Ctrl-C to stop")
        try:
            await asyncio.wait_for(consume(), args.exit_after)
        except TimeoutError:
            return 0
    warn("the server ended the subscription")
    return 0


async def _settings(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        if args.online is None and args.last_seen is None and args.invisible is None:
            settings = await client.get_presence_settings()
        else:
            settings = await client.update_presence_settings(
                online=_VISIBILITY[args.online] if args.online else None,
                last_seen=_VISIBILITY[args.last_seen] if args.last_seen else None,
                invisible=args.invisible,
            )
        emit(format_presence_settings(settings))
    return 0


def _count_line(verb: str, done: int, asked: int, others: str) -> str:
    line = f"{verb} {done} of {asked}"
    return line if done == asked else f"{line} (the others {others})"


async def _contacts_add(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        account_ids = await _resolve(client, args.accounts, Directory(client))
        added = await client.add_contacts(account_ids)
        emit(_count_line("added", added, len(set(account_ids)), "were contacts already"))
    return 0


async def _contacts_remove(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        account_ids = await _resolve(client, args.accounts, Directory(client))
        removed = await client.remove_contacts(account_ids)
        emit(_count_line("removed", removed, len(set(account_ids)), "were not contacts"))
    return 0


async def _contacts_list(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        directory = Directory(client)
        empty = True
        async for contact in client.list_contacts():
            empty = False
            added = f" added={_when(contact.added_at)}" if contact.added_at else ""
            name = await directory.handle(contact.account_id)
            emit(f"@{name}{added} account={contact.account_id}")
        if empty:
            emit("(no contacts)")
    return 0
