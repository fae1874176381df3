"""Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).

A timestamp is ``(wall_ms, logical, node)``, ordered as that tuple. ``wall_ms``
stays close to physical time (never behind the largest physical time the node
has seen, its own or a peer's), ``logical`` orders events inside one wall
millisecond, and ``node`` (unique per writer: a region, or a process within
one) makes two writers' stamps distinct, so the order is total and every
write gets a stamp no other write has.

The property the merge rules rely on: if event e happened before f (same node
later, or f's node observed e's stamp before f), then stamp(e) < stamp(f),
whatever the physical clocks say. A node whose clock runs 10 minutes behind
still stamps its writes above everything it has observed.

Physical time is always passed in (``physical_ms``); nothing here reads a
clock, so tests set any skew they like.

Drift refusal is optional: with ``max_drift_ms`` set, ``observe`` refuses a
remote stamp more than that far ahead of local physical time
(``ClockDriftError``) and leaves the clock where it was. Without it a peer
with a wildly fast clock drags every wall_ms forward with it (HLC's known
weakness), which is safe for ordering but makes stamps lie about time. The
caller decides what a refusal means (see docs/design/crdt.md, "Clock drift").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# 12 hex digits of milliseconds reach the year 10889; 4 of logical counter
# allow 65,536 events in one wall millisecond before the clock borrows the
# next millisecond (see ``_next``).
_WALL_DIGITS: Final = 12
_LOGICAL_DIGITS: Final = 4
MAX_WALL_MS: Final = 16**_WALL_DIGITS - 1
MAX_LOGICAL: Final = 16**_LOGICAL_DIGITS - 1
# Node ids end the encoded string, so any characters would still sort; the
# limit keeps them short and printable in documents and logs.
_NODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ENCODED = re.compile(rf"([0-9a-f]{{{_WALL_DIGITS}}})\.([0-9a-f]{{{_LOGICAL_DIGITS}}})\.(.*)")


class ClockDriftError(ValueError):
    """A remote stamp is further ahead of local physical time than allowed."""


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """One HLC stamp. Field order is the comparison order."""

    wall_ms: int
    logical: int
    node: str

    def __post_init__(self) -> None:
        if not 0 <= self.wall_ms <= MAX_WALL_MS:
            raise ValueError(f"wall_ms out of range: {self.wall_ms}")
        if not 0 <= self.logical <= MAX_LOGICAL:
            raise ValueError(f"logical out of range: {self.logical}")
        # The zero stamp's empty node is the only one allowed.
        if self.node and not _NODE.fullmatch(self.node):
            raise ValueError(f"invalid node id: {self.node!r}")

    def encode(self) -> str:
        """A string whose lexicographic order is the stamp order: fixed-width
        hex fields first, the node id last (a prefix sorts first, as in the
        tuple order)."""
        return f"{self.wall_ms:0{_WALL_DIGITS}x}.{self.logical:0{_LOGICAL_DIGITS}x}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> Timestamp:
        match = _ENCODED.fullmatch(text)
        if match is None:
            raise ValueError(f"not an encoded HLC timestamp: {text!r}")
        wall, logical, node = match.groups()
        return cls(int(wall, 16), int(logical, 16), node)

    def packed(self) -> int:
        """(wall_ms, logical) as one int64-safe integer, for an index that
        needs a number; it leaves the node out, so equal packs of different
        nodes are possible and the node must break ties where it matters."""
        return (self.wall_ms << (4 * _LOGICAL_DIGITS)) | self.logical


# Below every stamp a clock issues: the stamp of "never written".
ZERO: Final = Timestamp(0, 0, "")


def _next(wall_ms: int, logical: int) -> tuple[int, int]:
    """The logical successor, borrowing the next millisecond when the counter
    is full (still monotone; the wall runs ahead of physical time by at most
    one millisecond per 65,536 events)."""
    if logical < MAX_LOGICAL:
        return wall_ms, logical + 1
    return wall_ms + 1, 0


def tick(last: Timestamp, node: str, physical_ms: int) -> Timestamp:
    """The stamp of a local event (send or local write) after ``last``."""
    if physical_ms > last.wall_ms:
        return Timestamp(physical_ms, 0, node)
    return Timestamp(*_next(last.wall_ms, last.logical), node)


def receive(last: Timestamp, remote: Timestamp, node: str, physical_ms: int) -> Timestamp:
    """The stamp of receiving ``remote`` after ``last``: above both."""
    wall = max(last.wall_ms, remote.wall_ms, physical_ms)
    if wall == last.wall_ms and wall == remote.wall_ms:
        return Timestamp(*_next(wall, max(last.logical, remote.logical)), node)
    if wall == last.wall_ms:
        return Timestamp(*_next(wall, last.logical), node)
    if wall == remote.wall_ms:
        return Timestamp(*_next(wall, remote.logical), node)
    return Timestamp(wall, 0, node)


class HybridClock:
    """One writer's clock: the last stamp it issued or observed.

    One per writer (node id) and owned by whoever composes it; it is not safe
    to share one node id between two clocks (their stamps could collide).
    """

    def __init__(
        self, node: str, *, last: Timestamp = ZERO, max_drift_ms: int | None = None
    ) -> None:
        if not _NODE.fullmatch(node):
            raise ValueError(f"invalid node id: {node!r}")
        self._node = node
        self._last = last
        self._max_drift_ms = max_drift_ms

    @property
    def node(self) -> str:
        return self._node

    @property
    def last(self) -> Timestamp:
        return self._last

    def now(self, physical_ms: int) -> Timestamp:
        """Stamp a local event."""
        self._last = tick(self._last, self._node, physical_ms)
        return self._last

    def observe(self, remote: Timestamp, physical_ms: int) -> Timestamp:
        """Take in a stamp received from another node; every later ``now``
        is above it. Refuses (and changes nothing) if ``remote`` is more than
        ``max_drift_ms`` ahead of ``physical_ms``."""
        if self._max_drift_ms is not None and remote.wall_ms - physical_ms > self._max_drift_ms:
            raise ClockDriftError(
                f"stamp from {remote.node} is {remote.wall_ms - physical_ms} ms ahead"
                f" of local time (limit {self._max_drift_ms} ms)"
            )
        self._last = receive(self._last, remote, self._node, physical_ms)
        return self._last
