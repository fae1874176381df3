"""Pure parts of a Search: the query's fingerprint, where a page ends, and
the padding that rounds a response up to its size bucket.

Hits of all groups are merged newest first by (send time, message id), the
lower group index first among equals. Each group is scanned only as far as
the page needs, so a page may only hold hits at or above every group's
frontier (below it, a group may have hits not fetched yet); the next page
starts strictly below the last hit given, or below the highest frontier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from svc_search.model import Candidate, Group, GroupScan, Position


def fingerprint(groups: Sequence[Group]) -> str:
    """Binds a page token to its query: the same groups in the same order."""
    digest = hashlib.blake2b(digest_size=16)
    for group in groups:
        digest.update(group.conversation_id.encode())
        digest.update(b"\x00")
        digest.update(group.key_id)
        for token in group.tokens:
            digest.update(len(token).to_bytes(1, "big"))
            digest.update(token)
        digest.update(b"\x01")
    return digest.hexdigest()


def below(position: Position, start: Position | None) -> bool:
    return start is None or position < start


def boundary(scans: Iterable[GroupScan]) -> Position | None:
    """The highest frontier: every group's candidates at or above it are known."""
    frontiers = [s.frontier for s in scans if s.frontier is not None]
    return max(frontiers) if frontiers else None


def page_of(
    scans: Sequence[GroupScan], keep: Iterable[Candidate], page_size: int
) -> tuple[list[Candidate], Position | None]:
    """The page's hits among ``keep`` (candidates of ``scans`` that passed
    the access checks) and where the next page starts (None: no more).
    ``scans`` are the groups the caller may search: the frontier of a group
    it may not search must not shape its pages."""
    floor = boundary(scans)
    eligible = sorted(
        (c for c in keep if floor is None or c.position >= floor),
        key=lambda c: c.position,
        reverse=True,
    )
    if len(eligible) > page_size:
        hits = eligible[:page_size]
        return hits, hits[-1].position
    return eligible, floor


def padding_length(size: int, *, smallest: int) -> int:
    """Bytes of a padding field (tag 1 byte, length varint, the bytes) that
    make a ``size``-byte message exactly (an empty one would not be sent:
    at least one byte) a power of two of at least
    ``smallest`` bytes. A size whose bucket cannot be hit exactly (the
    length varint grows by a byte) goes to the next bucket."""
    bucket = smallest
    while bucket < size + 2:
        bucket *= 2
    while True:
        for varint in range(1, 6):
            pad = bucket - size - 1 - varint
            if pad >= 1 and _varint_len(pad) == varint:
                return pad
        bucket *= 2


def _varint_len(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length
