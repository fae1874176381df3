"""``parley push register/remove/dnd``: this device's push token and the account's quiet hours."""

from __future__ import annotations

import argparse
import os
import re
from datetime import time
from pathlib import Path

from parley_cli.common import Commands, UsageError, connect
from parley_cli.output import emit
from parley_cli.profiles import ProfileStore
from parley_sdk import DoNotDisturb, PushProvider, PushSettings

__all__ = [
    "clock_time",
    "dnd_from_args",
    "format_push_settings",
    "local_time_zone",
    "register_push_commands",
]

_PROVIDERS = {"webhook": PushProvider.WEBHOOK, "apns": PushProvider.APNS, "fcm": PushProvider.FCM}
_CLOCK = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


def clock_time(text: str) -> time:
    """``22:00`` or ``7:30`` as a time of day."""
    match = _CLOCK.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day like 22:00 or 7:30")
    return time(int(match.group(1)), int(match.group(2)))


def local_time_zone(
    environ: dict[str, str] | None = None, localtime: Path = Path("/etc/localtime")
) -> str:
    """This machine's IANA zone name when it can be told (``TZ``, or where
    ``/etc/localtime`` points), else ``""``, which the server reads as UTC."""
    env = os.environ if environ is None else environ
    configured = env.get("TZ", "").removeprefix(":")
    if configured and _ZONE_NAME.match(configured) and not configured.startswith("/"):
        return configured
    try:
        target = str(localtime.resolve(strict=True))
    except OSError:
        return ""
    _, found, zone = target.partition("/zoneinfo/")
    return zone if found and _ZONE_NAME.match(zone) else ""


def format_push_settings(settings: PushSettings) -> str:
    window = settings.do_not_disturb
    if not window.enabled:
        return "dnd off"
    zone = window.time_zone or "UTC"
    return f"dnd {window.start:%H:%M}-{window.end:%H:%M} {zone}"


def register_push_commands(commands: Commands) -> None:
    add = commands.add
    push = commands.group("push", "push notifications: this device's token, quiet hours")

    register = add(
        "register", _register, "register this device's push token (replaces any)", under=push
    )
    register.add_argument(
        "--provider", required=True, choices=sorted(_PROVIDERS), metavar="webhook|apns|fcm"
    )
    register.add_argument("--token", required=True, help="the provider's device token")
    register.add_argument(
        "--locale", default="", help="BCP 47 language of notification texts (default: en)"
    )

    add("remove", _remove, "remove this device's push token", under=push)

    dnd = add(
        "dnd",
        _dnd,
        "show the account's quiet hours; set them with --from/--to, or --off",
        under=push,
    )
    dnd.add_argument("--from", dest="start", type=clock_time, metavar="HH:MM")
    dnd.add_argument("--to", dest="end", type=clock_time, metavar="HH:MM")
    dnd.add_argument(
        "--tz",
        default=None,
        metavar="ZONE",
        help="IANA time zone, e.g. Europe/Berlin (default: this machine's, else UTC)",
    )
    dnd.add_argument("--off", action="store_true", help="no quiet hours")


async def _register(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        registration = await client.register_push_token(
            _PROVIDERS[args.provider], args.token, locale=args.locale
        )
        emit(
            f"registered {registration.provider.name.lower()} token "
            f"device={registration.device_id} locale={registration.locale or 'en'}"
        )
    return 0


async def _remove(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        await client.remove_push_token()
        emit(f"removed the push token of device={client.device_id}")
    return 0


def dnd_from_args(args: argparse.Namespace) -> DoNotDisturb | None:
    """The window the options ask for; None when they only ask to show it."""
    window_given = args.start is not None or args.end is not None or args.tz is not None
    if args.off:
        if window_given:
            raise UsageError("--off takes no --from, --to or --tz")
        return DoNotDisturb.off()
    if not window_given:
        return None
    if args.start is None or args.end is None:
        raise UsageError("quiet hours need both --from and --to")
    zone = args.tz if args.tz is not None else local_time_zone()
    return DoNotDisturb(start=args.start, end=args.end, time_zone=zone)


async def _dnd(args: argparse.Namespace) -> int:
    window = dnd_from_args(args)
    client, _ = await connect(args, ProfileStore())
    async with client:
        if window is None:
            settings = await client.get_push_settings()
        else:
            settings = await client.update_push_settings(do_not_disturb=window)
        emit(format_push_settings(settings))
    return 0
