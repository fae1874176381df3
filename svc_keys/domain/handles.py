"""Handle policy: what a handle may look like and when two are the same."""

from __future__ import annotations

import re

MIN_LENGTH = 3
MAX_LENGTH = 32
_PATTERN = re.compile(r"^[a-z][a-z0-9_.]*$")
# Names users would take for official accounts.
RESERVED = frozenset({"admin", "administrator", "parley", "root", "support", "system", "security"})


def handle_key(handle: str) -> str:
    """The form uniqueness is checked on: handles are unique regardless of case."""
    return handle.lower()


def handle_problem(handle: str) -> str | None:
    """Why a handle is not acceptable, or None when it is.

    ASCII only, so look-alike letters from other scripts cannot impersonate an
    existing handle.
    """
    if not (MIN_LENGTH <= len(handle) <= MAX_LENGTH):
        return f"must be {MIN_LENGTH}-{MAX_LENGTH} characters"
    if not handle.isascii():
        return "must use ASCII letters, digits, '_' and '.' only"
    key = handle_key(handle)
    if not _PATTERN.match(key):
        return "must start with a letter and use only letters, digits, '_' and '.'"
    if ".." in key or key.endswith("."):
        return "must not end with '.' or contain '..'"
    if key in RESERVED:
        return "is reserved"
    return None
