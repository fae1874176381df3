"""Identifiers: UUIDv7 strings, so ids sort by creation time and index well."""

from __future__ import annotations

import os
import re
import time
import uuid

_CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def is_valid_id(value: str) -> bool:
    """True for a canonical lower-case UUID string, the only id form we accept."""
    return bool(_CANONICAL.match(value))


def random_id() -> str:
    """A random UUIDv4, for keys a sharded cluster ranges over: time-ordered
    ids would send every new key to the same chunk."""
    return str(uuid.uuid4())
