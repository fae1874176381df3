"""State-based CRDTs (convergent replicated data types) for metadata written in
several regions and merged without coordination.

Every type here is an immutable value with ``merge`` (the lattice join:
commutative, associative, idempotent), local operations that return a new
value no smaller than the old one (each is a join with the write's own small
state, so a write that arrives late loses exactly as it would in a merge),
and ``to_dict``/``from_dict`` to plain JSON/BSON-friendly data. Values of the
element or register type go through an ``encode``/``decode`` pair (identity
by default, for ints, strings and bools).

- ``MaxRegister``: the largest value written (watermarks).
- ``EpochMaxRegister``: a max register that can go back: a reset opens a new
  epoch (an HLC stamp), and the newest epoch wins before values compare.
- ``LWWRegister``: the value of the write with the greatest HLC stamp.
- ``AddWinsSet``: an observed-remove set; each add carries a unique tag (its
  HLC stamp), a remove tombstones only the tags it has seen, so an add
  concurrent with a remove survives it.

Design and field choices: docs/design/crdt.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, Self, TypeVar

from parley_core.hlc import ZERO, Timestamp

# What encode returns and decode takes: anything JSON and BSON can carry.
Plain = Any


class _Comparable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


C = TypeVar("C", bound=_Comparable)
T = TypeVar("T")
H = TypeVar("H")  # a hashable set element


def _same(value: Any) -> Any:
    return value


def _tiebreak(a: object, b: object) -> bool:
    """True if ``b`` should win a tie of equal stamps over ``a``. Two writes
    share a stamp only if two writers share a node id (a misconfiguration);
    merging must still be deterministic, so compare their representations."""
    return repr(a) < repr(b)


# -- registers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaxRegister(Generic[C]):
    """The largest value ever written."""

    value: C

    def merge(self, other: MaxRegister[C]) -> MaxRegister[C]:
        return other if self.value < other.value else self

    def raised(self, value: C) -> MaxRegister[C]:
        """Write ``value``; a smaller one changes nothing."""
        return self.merge(MaxRegister(value))

    def to_dict(self, encode: Callable[[C], Plain] = _same) -> dict[str, Plain]:
        return {"max": encode(self.value)}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Plain], decode: Callable[[Plain], C] = _same
    ) -> MaxRegister[C]:
        return cls(decode(data["max"]))


@dataclass(frozen=True, slots=True)
class EpochMaxRegister(Generic[C]):
    """A max register per epoch; the newest epoch wins.

    ``raised`` writes within the current epoch (concurrent raises merge to the
    largest); ``reset`` opens a new epoch stamped by the writer's HLC and sets
    any value, smaller ones included. A reset therefore wins over raises it
    has not seen (they belong to an older epoch), and the merge is the
    lexicographic join of (epoch, value).
    """

    epoch: Timestamp
    value: C

    def merge(self, other: EpochMaxRegister[C]) -> EpochMaxRegister[C]:
        if self.epoch != other.epoch:
            return other if self.epoch < other.epoch else self
        return other if self.value < other.value else self

    def raised(self, value: C) -> EpochMaxRegister[C]:
        return self.merge(EpochMaxRegister(self.epoch, value))

    def reset(self, value: C, stamp: Timestamp) -> EpochMaxRegister[C]:
        return self.merge(EpochMaxRegister(stamp, value))

    def to_dict(self, encode: Callable[[C], Plain] = _same) -> dict[str, Plain]:
        return {"epoch": self.epoch.encode(), "max": encode(self.value)}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Plain], decode: Callable[[Plain], C] = _same
    ) -> EpochMaxRegister[C]:
        return cls(Timestamp.decode(data["epoch"]), decode(data["max"]))


@dataclass(frozen=True, slots=True)
class LWWRegister(Generic[T]):
    """Last writer wins: the value of the write with the greatest HLC stamp
    (stamps are unique per write, node id breaking wall-and-counter ties).
    The initial value carries ``ZERO``, below every write."""

    value: T
    stamp: Timestamp = ZERO

    def merge(self, other: LWWRegister[T]) -> LWWRegister[T]:
        if self.stamp != other.stamp:
            return other if self.stamp < other.stamp else self
        if self.value != other.value and _tiebreak(self.value, other.value):
            return other
        return self

    def assign(self, value: T, stamp: Timestamp) -> LWWRegister[T]:
        """Write ``value`` at ``stamp``; a stamp below the current one loses."""
        return self.merge(LWWRegister(value, stamp))

    def to_dict(self, encode: Callable[[T], Plain] = _same) -> dict[str, Plain]:
        return {"value": encode(self.value), "at": self.stamp.encode()}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Plain], decode: Callable[[Plain], T] = _same
    ) -> LWWRegister[T]:
        return cls(decode(data["value"]), Timestamp.decode(data["at"]))


# -- sets ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddWinsSet(Generic[H]):
    """An observed-remove set with unique add tags (add wins).

    ``adds`` holds the live (element, tag) pairs; ``removed`` maps each
    tombstoned tag to the stamp of the (latest) remove that killed it. An
    element is present while it has a live tag. A remove kills only the tags
    its replica had seen, so a concurrent add's fresh tag survives: a
    concurrent add and remove leave the element present.

    Tombstones are what makes a late-arriving add of a removed tag stay dead;
    they only grow under ``merge``. ``compact`` forgets old ones, which is
    safe only where replicas older than the horizon are resynced rather than
    merged (docs/design/crdt.md, "Tombstones").
    """

    adds: frozenset[tuple[H, Timestamp]] = frozenset()
    removed: Mapping[Timestamp, Timestamp] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        adds: Iterable[tuple[H, Timestamp]],
        removed: Mapping[Timestamp, Timestamp] | None = None,
    ) -> Self:
        """A normalised value: no live pair carries a tombstoned tag (so
        equal states compare equal)."""
        dead = dict(removed or {})
        live = frozenset(pair for pair in adds if pair[1] not in dead)
        return cls(live, MappingProxyType(dead))

    def __contains__(self, element: object) -> bool:
        return any(e == element for e, _ in self.adds)

    def elements(self) -> frozenset[H]:
        return frozenset(e for e, _ in self.adds)

    def tags(self, element: H) -> frozenset[Timestamp]:
        return frozenset(tag for e, tag in self.adds if e == element)

    def merge(self, other: AddWinsSet[H]) -> AddWinsSet[H]:
        removed = dict(self.removed)
        for tag, at in other.removed.items():
            if at > removed.get(tag, ZERO):
                removed[tag] = at
        return AddWinsSet.of(self.adds | other.adds, removed)

    def add(self, element: H, tag: Timestamp) -> AddWinsSet[H]:
        """Add with a fresh tag (the write's HLC stamp). Adding what is
        already present still adds a tag: the add must survive a concurrent
        remove of the tags seen so far."""
        return self.merge(AddWinsSet.of([(element, tag)]))

    def remove(self, element: H, stamp: Timestamp) -> AddWinsSet[H]:
        """Tombstone every tag of ``element`` seen here, stamped ``stamp``."""
        return self.merge(AddWinsSet.of([], dict.fromkeys(self.tags(element), stamp)))

    def compact(self, horizon: Timestamp) -> AddWinsSet[H]:
        """Forget tombstones written before ``horizon``. Not a lattice
        operation: see the class docstring."""
        kept = {tag: at for tag, at in self.removed.items() if not at < horizon}
        return AddWinsSet.of(self.adds, kept)

    def to_dict(self, encode: Callable[[H], Plain] = _same) -> dict[str, Plain]:
        # Lists of pairs rather than objects keyed by tag: encoded stamps
        # contain dots, which MongoDB field names should not.
        adds = sorted(
            ([encode(e), tag.encode()] for e, tag in self.adds), key=lambda p: (p[1], repr(p[0]))
        )
        removed = sorted([tag.encode(), at.encode()] for tag, at in self.removed.items())
        return {"adds": adds, "removed": removed}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Plain], decode: Callable[[Plain], H] = _same
    ) -> AddWinsSet[H]:
        adds = [(decode(e), Timestamp.decode(tag)) for e, tag in data.get("adds", ())]
        removed = {
            Timestamp.decode(tag): Timestamp.decode(at) for tag, at in data.get("removed", ())
        }
        return cls.of(adds, removed)
