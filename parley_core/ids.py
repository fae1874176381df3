"""Identifiers: UUID strings. Time-ordered ones (UUIDv7 layout) sort by
creation time and index well; random ones spread over a sharded key range.

In a multi-region deployment the ids of accounts and conversations carry the
number of the region that minted them (docs/design/regions.md, "Region numbers
and tagged ids"): such ids are version 8 (RFC 9562's custom version) with the
number in the 8 bits that follow the version nibble, shown as the second and
third hex digits of the id's third group. Every other bit keeps its layout, so
a tagged time-ordered id still sorts by time. Ids of other versions carry no
region.
"""

from __future__ import annotations

import os
import re
import time
import uuid

_CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_VERSION_SHIFT = 76
_TAG_SHIFT = 68
_TAGGED_VERSION = 8
MAX_REGION_NUMBER = 255


def _versioned(value: int, version: int) -> int:
    value = (value & ~(0xF << _VERSION_SHIFT)) | (version << _VERSION_SHIFT)
    return (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant


def _tagged(value: int, region_number: int) -> int:
    if not 0 <= region_number <= MAX_REGION_NUMBER:
        raise ValueError(f"a region number is 0..{MAX_REGION_NUMBER}, not {region_number}")
    value = (value & ~(0xFF << _TAG_SHIFT)) | (region_number << _TAG_SHIFT)
    return _versioned(value, _TAGGED_VERSION)


def new_id(now_ms: int | None = None, *, region_number: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits; with
    ``region_number``, the same layout as a version 8 id carrying the region."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    if region_number is not None:
        return str(uuid.UUID(int=_tagged(value, region_number)))
    return str(uuid.UUID(int=_versioned(value, 7)))


def random_id(*, region_number: int | None = None) -> str:
    """A random UUIDv4, for keys a sharded cluster ranges over: time-ordered
    ids would send every new key to the same chunk. With ``region_number``, a
    version 8 id whose other bits are random."""
    if region_number is not None:
        return with_region(str(uuid.uuid4()), region_number)
    return str(uuid.uuid4())


def with_region(value: str, region_number: int) -> str:
    """``value`` (a UUID string) made a version 8 id carrying ``region_number``;
    for ids derived from a digest, which must come out the same on a retry."""
    return str(uuid.UUID(int=_tagged(uuid.UUID(value).int, region_number)))


def region_number_of(value: str) -> int | None:
    """The region number a tagged id carries; None for an id without one (or
    a string that is not a UUID)."""
    try:
        number = uuid.UUID(value).int
    except ValueError:
        return None
    if (number >> _VERSION_SHIFT) & 0xF != _TAGGED_VERSION:
        return None
    return (number >> _TAG_SHIFT) & 0xFF


def is_valid_id(value: str) -> bool:
    """True for a canonical lower-case UUID string, the only id form we accept."""
    return bool(_CANONICAL.match(value))
