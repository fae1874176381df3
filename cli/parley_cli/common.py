"""What every ``parley`` chat command shares: options, connecting, naming things."""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from parley_cli.output import warn
from parley_cli.profiles import Profile, ProfileError, ProfileStore
from parley_cli.targets import Targets, unreachable_message
from parley_sdk import (
    DEFAULT_KEYS_TARGET,
    DEFAULT_MEDIA_TARGET,
    DEFAULT_MESSAGE_TARGET,
    DEFAULT_PRESENCE_TARGET,
    DEFAULT_SEARCH_TARGET,
    Client,
    Credentials,
    Direction,
    NoRecipientDevicesError,
    ParleyError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "Command",
    "Commands",
    "UsageError",
    "connect",
    "handle",
    "open_conversation",
    "parse_duration",
    "positive_int",
    "resolve_account",
    "resolve_conversation",
    "resolve_message",
]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# Ids are canonical lower-case UUIDs; handles never contain '-', so the two
# cannot be confused.
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SEQ = re.compile(r"^#?([0-9]+)$")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(Exception):
    """A command line that names something that is not there; exit code 2."""


class Commands:
    """Adds commands that take the common options (profile, targets)."""

    def __init__(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        self.subparsers = subparsers
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument(
            "--profile", default="default", help="profile to act as (default: default)"
        )
        self.common.add_argument(
            "--keys-target",
            default=None,
            metavar="HOST:PORT",
            help=f"svc_keys address (default: the profile's, else {DEFAULT_KEYS_TARGET})",
        )
        self.common.add_argument(
            "--message-target",
            default=None,
            metavar="HOST:PORT",
            help=f"svc_message address (default: the profile's, else {DEFAULT_MESSAGE_TARGET})",
        )
        self.common.add_argument(
            "--presence-target",
            default=None,
            metavar="HOST:PORT",
            help=f"svc_presence address (default: the profile's, else {DEFAULT_PRESENCE_TARGET})",
        )
        self.common.add_argument(
            "--media-target",
            default=None,
            metavar="HOST:PORT",
            help=f"svc_media address (default: the profile's, else {DEFAULT_MEDIA_TARGET})",
        )
        self.common.add_argument(
            "--search-target",
            default=None,
            metavar="HOST:PORT",
            help=f"svc_search address (default: the profile's, else {DEFAULT_SEARCH_TARGET})",
        )

    def add(
        self,
        name: str,
        command: Command,
        help_text: str,
        *,
        interrupt_code: int = 130,
        under: argparse._SubParsersAction[Any] | None = None,
    ) -> argparse.ArgumentParser:
        """A command; ``under`` puts it below a command group (``parley group add``)."""
        parser: argparse.ArgumentParser = (under or self.subparsers).add_parser(
            name, parents=[self.common], help=help_text, description=help_text
        )
        parser.set_defaults(func=functools.partial(run, command, interrupt_code=interrupt_code))
        return parser

    def group(self, name: str, help_text: str) -> argparse._SubParsersAction[Any]:
        """A command group such as ``parley group``; its subcommands go ``under`` it."""
        parser = self.subparsers.add_parser(name, help=help_text, description=help_text)
        commands: argparse._SubParsersAction[Any] = parser.add_subparsers(
            title="commands", metavar="COMMAND", required=True
        )
        return commands


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``8h``, ``2d``, ``1w``."""
    match = _DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 8h, 2d or 1w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def run(command: Command, args: argparse.Namespace, *, interrupt_code: int) -> int:
    try:
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return interrupt_code
    except (ProfileError, UsageError) as error:
        warn(f"error: {error}")
        return 2
    except NoRecipientDevicesError as error:
        warn(f"error: {error}")
        warn("hint: they need a client with end-to-end encryption (a newer `parley`)")
        return 1
    except UnavailableError:
        # The SDK gave up retrying: say which address is down, not gRPC's details.
        targets = Targets.used_by(args, ProfileStore())
        warn(
            unreachable_message(
                targets,
                media=getattr(args, "uses_media", False),
                search=getattr(args, "uses_search", False),
            )
        )
        return 1
    except UnauthenticatedError as error:
        warn(f"error: {error}")
        warn(f"hint: the profile {args.profile!r} may be signed out; `parley signup` again")
        return 1
    except ParleyError as error:
        warn(f"error: {error}")
        for field, description in error.field_violations:
            warn(f"  {field}: {description}")
        return 1


def handle(text: str) -> str:
    return text.removeprefix("@")


async def connect(args: argparse.Namespace, store: ProfileStore) -> tuple[Client, Profile]:
    profile = store.load(args.profile)

    def persist(credentials: Credentials) -> None:
        # Refresh tokens rotate: the old one is dead once the server answered, so
        # the new one must reach disk or the profile is signed out for good.
        # Reloaded first so as not to undo what `follow` saved meanwhile.
        store.save(store.load(profile.name).with_credentials(credentials))

    device_store = store.device_store_path(profile.name)
    if not device_store.exists():
        # A profile from before encryption: its device gets keys on this connect.
        store.new_device_store(profile.name)
    targets = Targets.of(args, profile)
    try:
        client = await Client.connect(
            keys_target=targets.keys,
            message_target=targets.message,
            presence_target=targets.presence,
            media_target=targets.media,
            search_target=targets.search,
            credentials=profile.credentials,
            on_credentials_changed=persist,
            store=device_store,
        )
    except ValueError as error:  # the store belongs to another device
        raise ProfileError(f"profile {profile.name!r}: {error}") from None
    return client, profile


async def open_conversation(client: Client, peer: str) -> tuple[str, str, str]:
    """(conversation id, peer account id, peer handle as stored)."""
    account = await client.get_account(handle=handle(peer))
    view = await client.create_direct_conversation(account.account_id)
    return view.conversation.conversation_id, account.account_id, account.handle


async def resolve_conversation(client: Client, target: str) -> str:
    """A conversation id as given, or the direct conversation with @HANDLE."""
    if _ID.match(target):
        return target
    conversation_id, _, _ = await open_conversation(client, target)
    return conversation_id


async def resolve_account(client: Client, target: str) -> str:
    """An account id as given, or the account of @HANDLE."""
    if _ID.match(target):
        return target
    return (await client.get_account(handle=handle(target))).account_id


async def resolve_message(client: Client, conversation_id: str, ref: str) -> str:
    """A message id as given, or the id of the message #SEQ (as history shows it)."""
    if _ID.match(ref):
        return ref
    match = _SEQ.match(ref)
    if not match:
        raise UsageError(f"{ref!r} is neither a message id nor #SEQ")
    seq = int(match.group(1))
    async for message in client.list_messages(
        conversation_id, direction=Direction.FORWARD, start_seq=seq, page_size=1
    ):
        if message.seq == seq:
            return message.message_id
        break
    raise UsageError(f"no message #{seq} in {conversation_id} (or it is hidden from you)")
