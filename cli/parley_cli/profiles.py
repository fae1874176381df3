"""CLI profiles: one device's credentials and targets per JSON file.

Files live in ``$PARLEY_HOME`` (or ``~/.parley-cli``) as ``<profile>.json``,
readable by the owner only, since they hold a refresh token that signs in as
the device until it is revoked. Beside each, ``<profile>.db`` is the device's
end-to-end encryption store (private keys, sessions, decrypted history), also
owner-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from parley_sdk import (
    DEFAULT_MEDIA_TARGET,
    DEFAULT_PRESENCE_TARGET,
    DEFAULT_SEARCH_TARGET,
    Credentials,
)

__all__ = ["Profile", "ProfileError", "ProfileStore", "discard_store"]

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FORMAT_VERSION = 1
# A SQLite database is its file and, while or after it is used, these beside it.
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


class ProfileError(Exception):
    """A profile is missing, unreadable or would be overwritten."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str
    handle: str
    keys_target: str
    message_target: str
    credentials: Credentials
    # Profiles written before presence existed have no presence target: they get
    # the default, as the other targets would.
    presence_target: str = DEFAULT_PRESENCE_TARGET
    # Likewise for media (files), which came later still.
    media_target: str = DEFAULT_MEDIA_TARGET
    # And server search.
    search_target: str = DEFAULT_SEARCH_TARGET
    # From the last SyncComplete that `follow` saw, so the next run replays only
    # the receipts that changed since.
    sync_token: str = ""

    def with_credentials(self, credentials: Credentials) -> Profile:
        return replace(self, credentials=credentials)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "handle": self.handle,
            "keys_target": self.keys_target,
            "message_target": self.message_target,
            "presence_target": self.presence_target,
            "media_target": self.media_target,
            "search_target": self.search_target,
            "sync_token": self.sync_token,
            "credentials": self.credentials.to_dict(),
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Profile:
        try:
            return cls(
                name=name,
                handle=str(data["handle"]),
                keys_target=str(data["keys_target"]),
                message_target=str(data["message_target"]),
                presence_target=str(data.get("presence_target", DEFAULT_PRESENCE_TARGET)),
                media_target=str(data.get("media_target", DEFAULT_MEDIA_TARGET)),
                search_target=str(data.get("search_target", DEFAULT_SEARCH_TARGET)),
                sync_token=str(data.get("sync_token", "")),
                credentials=Credentials.from_dict(data["credentials"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ProfileError(f"profile {name!r} is malformed: {error}") from None


def discard_store(path: Path) -> None:
    """Deletes an encryption store and SQLite's files beside it."""
    for suffix in _SQLITE_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def default_home() -> Path:
    configured = os.environ.get("PARLEY_HOME")
    return Path(configured) if configured else Path.home() / ".parley-cli"


class ProfileStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or default_home()

    def path(self, name: str) -> Path:
        # Names become file names; refuse anything that could leave the directory.
        if not _PROFILE_NAME.match(name):
            raise ProfileError(f"invalid profile name {name!r}: use letters, digits, '_', '.', '-'")
        return self.home / f"{name}.json"

    def device_store_path(self, name: str) -> Path:
        """The profile's encryption store (SQLite), next to its JSON file."""
        return self.path(name).with_suffix(".db")

    def new_device_store(self, name: str) -> Path:
        """An empty, owner-only encryption store for a new device of the profile;
        the previous device's store (and its keys) is deleted."""
        path = self.device_store_path(name)
        discard_store(path)
        self._create_private(path)
        return path

    def pending_device_store(self, name: str) -> Path:
        """An empty, owner-only store for a device still signing up, beside the
        profile's own: the profile (and any previous device's store) stays as it
        is until :meth:`adopt_device_store`, so a failed sign-up changes nothing."""
        path = self.device_store_path(name).with_name(f".{name}.signup.db")
        discard_store(path)
        self._create_private(path)
        return path

    def adopt_device_store(self, name: str, pending: Path) -> Path:
        """Makes a closed pending store the profile's, replacing the previous one."""
        path = self.device_store_path(name)
        discard_store(path)
        for suffix in _SQLITE_SUFFIXES:
            source = pending.with_name(pending.name + suffix)
            if source.exists():
                os.replace(source, path.with_name(path.name + suffix))
        return path

    def _create_private(self, path: Path) -> None:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm
        # files the database file's permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Profile:
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(
                f"no profile {name!r} in {self.home}; create it with "
                f"`parley signup HANDLE --profile {name}`"
            ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProfileError(f"profile {name!r} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ProfileError(f"profile {name!r} is malformed")
        return Profile.from_dict(name, data)

    def save(self, profile: Profile) -> None:
        """Writes atomically: a crash mid-write must not lose the only refresh token."""
        path = self.path(profile.name)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps(profile.to_dict(), indent=2, sort_keys=True) + "\n"
        # mkstemp creates the file 0600, so the token is never world-readable.
        fd, temp_name = tempfile.mkstemp(dir=self.home, prefix=f".{profile.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp_name, 0o600)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    def forget(self, name: str) -> None:
        """Remove the profile and its device store (the account is gone)."""
        self.path(name).unlink(missing_ok=True)
        discard_store(self.device_store_path(name))
