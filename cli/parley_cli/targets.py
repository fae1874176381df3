"""Where a command's services are, and which of them do not answer."""

from __future__ import annotations

import argparse
import contextlib
import socket
from dataclasses import dataclass

from parley_cli.profiles import Profile, ProfileError, ProfileStore
from parley_sdk import (
    DEFAULT_KEYS_TARGET,
    DEFAULT_MEDIA_TARGET,
    DEFAULT_MESSAGE_TARGET,
    DEFAULT_PRESENCE_TARGET,
    DEFAULT_SEARCH_TARGET,
)

__all__ = ["PROBE_SECONDS", "Targets", "unreachable_message"]

PROBE_SECONDS = 1.0
"""How long a probe waits for a TCP connection; a local refusal is immediate."""


@dataclass(frozen=True, slots=True)
class Targets:
    keys: str
    message: str
    presence: str
    media: str = DEFAULT_MEDIA_TARGET
    search: str = DEFAULT_SEARCH_TARGET

    @classmethod
    def of(cls, args: argparse.Namespace, profile: Profile | None = None) -> Targets:
        """The command line's, else the profile's, else the defaults."""
        return cls(
            keys=args.keys_target or (profile.keys_target if profile else DEFAULT_KEYS_TARGET),
            message=args.message_target
            or (profile.message_target if profile else DEFAULT_MESSAGE_TARGET),
            presence=args.presence_target
            or (profile.presence_target if profile else DEFAULT_PRESENCE_TARGET),
            # Parsers of other tools may predate media and lack the option.
            media=getattr(args, "media_target", None)
            or (profile.media_target if profile else DEFAULT_MEDIA_TARGET),
            search=getattr(args, "search_target", None)
            or (profile.search_target if profile else DEFAULT_SEARCH_TARGET),
        )

    @classmethod
    def used_by(cls, args: argparse.Namespace, store: ProfileStore) -> Targets:
        """Those of a command acting as ``args.profile``, whether or not it exists."""
        profile = None
        # `signup` (makes_profile) never reads the profile it is about to replace.
        if not getattr(args, "makes_profile", False):
            with contextlib.suppress(ProfileError):
                profile = store.load(args.profile)
        return cls.of(args, profile)

    def named(self, *, media: bool = False, search: bool = False) -> list[tuple[str, str]]:
        """The services a command talks to; the media service only for ``media``
        (file) commands and the search service only for ``search`` (server
        search) ones, so a deployment without them is not blamed for others."""
        named = [
            ("svc_keys", self.keys),
            ("svc_message", self.message),
            ("svc_presence", self.presence),
        ]
        if media:
            named.append(("svc_media", self.media))
        if search:
            named.append(("svc_search", self.search))
        return named


def unreachable_message(targets: Targets, *, media: bool = False, search: bool = False) -> str:
    """One line for a command whose server did not answer: which address, and what to do."""
    named = targets.named(media=media, search=search)
    down = [f"{service} at {target}" for service, target in named if not _answers(target)]
    if not down:
        # Every port takes connections now: the server went away or came back meanwhile.
        down = [f"{service} at {target}" for service, target in named]
        what = "a Parley service did not answer (" + ", ".join(down) + ")"
    else:
        what = "cannot reach " + ", ".join(down)
    return f"error: {what}; is the server running? (locally: ./parley up)"


def _answers(target: str) -> bool:
    """Whether something takes TCP connections at HOST:PORT (other target forms: assumed)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False
