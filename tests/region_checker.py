"""A history checker over N regions (issue 20, part 9).

A test records every write its clients attempted (``History``): the
conversation, the request id, the account, the region it was sent through,
and whether it was acknowledged, with the message id and seq an acknowledged
send got back and the SHA-256 of every body. A write refused with UNAVAILABLE
or a deadline is *uncertain*: it may have committed at the owner before the
answer was lost, so it may be present but need not be. At the end the test
reads every region's stored state (``tests/region_snapshot.py``) and
``check`` answers, purely, a list of readable violations:

- lost: an acknowledged write missing at the owner region (or stored with
  another id or seq than the client was told);
- unexplained: an entry at the owner that no client attempted;
- duplicate: two entries at the owner of one request (a retry committed twice);
- final state: a message's body or tombstone at the owner that no order of
  the acknowledged and uncertain writes explains;
- gaps: seqs of history items not exactly 1..n, or feed versions not exactly
  1..m, at the owner or in any replica region;
- convergence: a replica region (a member is homed there) holding other
  entries than the owner (ids, kinds, seqs, versions, state versions, bodies,
  tombstones), or no conversation head;
- resurrection: a message deleted for everyone that still has a body in some
  region;
- residency: a conversation (its id or one of its ciphertexts) present in a
  region that is neither its owner nor a member's home: its feed, head or
  member documents, any other MongoDB document, or a Redis key.

Ordering assumption: a test touches one message with one write at a time, so
the writes of one message are in the order it issued them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SEND, EDIT, DELETE = "send", "edit", "delete"
# Feed entry kinds as svc_message stores them.
MESSAGE, SYSTEM = "message", "system"
HISTORY = frozenset({MESSAGE, SYSTEM})
# Differences listed per conversation and region before "... and N more".
_SHOWN = 5


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Plan:
    """Where a conversation belongs: its owner and its members' home regions."""

    owner: str
    homes: frozenset[str]

    @property
    def replicas(self) -> frozenset[str]:
        return self.homes - {self.owner}

    @property
    def regions(self) -> frozenset[str]:
        return self.homes | {self.owner}


@dataclass(frozen=True)
class Attempt:
    """One write a client issued. ``message_id`` is the target of an edit or
    delete, or the id an acknowledged send got (empty for an uncertain one)."""

    kind: str
    conversation_id: str
    request_id: str
    account_id: str
    via_region: str
    acknowledged: bool
    message_id: str = ""
    seq: int = 0
    body_hash: str = ""


@dataclass
class History:
    plans: dict[str, Plan] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    # Per conversation, the bodies sent or edited in, searched for by residency.
    ciphertexts: dict[str, list[bytes]] = field(default_factory=dict)

    def plan(self, conversation_id: str, *, owner: str, homes: Iterable[str]) -> None:
        self.plans[conversation_id] = Plan(owner, frozenset(homes))

    def record(self, attempt: Attempt, body: bytes | None = None) -> None:
        self.attempts.append(attempt)
        if body is not None:
            self.ciphertexts.setdefault(attempt.conversation_id, []).append(body)

    def needles(self, region: str) -> dict[bytes, str]:
        """What must never be found in ``region``: the id and ciphertexts of
        every conversation it should not hold, each naming its conversation."""
        found: dict[bytes, str] = {}
        for conversation_id, plan in self.plans.items():
            if region in plan.regions:
                continue
            found[conversation_id.encode()] = conversation_id
            for body in self.ciphertexts.get(conversation_id, []):
                found[body] = conversation_id
        return found


@dataclass(frozen=True)
class Entry:
    """A stored feed entry (a ``messages`` document) as the checker compares it."""

    id: str
    conversation_id: str
    kind: str
    version: int
    state_version: int
    sender_id: str
    request_id: str
    seq: int | None = None
    body_hash: str | None = None  # None: no body or an empty one
    deleted: bool = False
    target: str = ""

    def state(self) -> dict[str, object]:
        """What a replica must hold as the owner does (bodies as short hashes)."""
        return {
            "kind": self.kind,
            "seq": self.seq,
            "version": self.version,
            "state_version": self.state_version,
            "body": None if self.body_hash is None else self.body_hash[:12],
            "deleted": self.deleted,
            "target": self.target,
        }

    def differences(self, owner: Entry) -> str:
        mine, theirs = self.state(), owner.state()
        return ", ".join(f"{k} {mine[k]} (owner {theirs[k]})" for k in mine if mine[k] != theirs[k])


@dataclass
class RegionSnapshot:
    """One region's stored state of the history's conversations.

    ``found`` maps a residency needle's conversation to where it was seen
    (``mongo:<collection>`` or ``redis:<key>``)."""

    region: str
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    heads: set[str] = field(default_factory=set)
    member_docs: dict[str, int] = field(default_factory=dict)
    found: dict[str, set[str]] = field(default_factory=dict)

    def holds(self, conversation_id: str) -> bool:
        return (
            bool(self.entries.get(conversation_id))
            or conversation_id in self.heads
            or self.member_docs.get(conversation_id, 0) > 0
        )


def check(history: History, snapshots: Mapping[str, RegionSnapshot]) -> list[str]:
    """Every violation, readable, grouped by conversation; empty when the
    history is consistent with what the regions hold."""
    problems: list[str] = []
    for conversation_id, plan in sorted(history.plans.items()):
        attempts = [a for a in history.attempts if a.conversation_id == conversation_id]
        owner = snapshots.get(plan.owner)
        if owner is None:
            problems.append(f"[setup] {conversation_id}: no snapshot of owner {plan.owner}")
            continue
        owned = owner.entries.get(conversation_id, [])
        problems += _lost_and_unexplained(conversation_id, plan.owner, attempts, owned)
        problems += _final_states(conversation_id, plan.owner, attempts, owned)
        for region in sorted(plan.regions):
            snapshot = snapshots.get(region)
            if snapshot is None:
                problems.append(f"[setup] {conversation_id}: no snapshot of {region}")
                continue
            held = snapshot.entries.get(conversation_id, [])
            problems += _gaps(conversation_id, region, held)
            problems += _tombstones(conversation_id, region, held, owned)
            if region != plan.owner:
                problems += _convergence(conversation_id, plan.owner, region, owned, snapshot)
        for region, snapshot in sorted(snapshots.items()):
            if region not in plan.regions:
                problems += _residency(conversation_id, plan, snapshot)
    return problems


def _by_request(entries: Iterable[Entry]) -> dict[tuple[str, str], Entry]:
    return {(e.sender_id, e.request_id): e for e in entries if e.request_id}


def _lost_and_unexplained(
    conversation_id: str, owner: str, attempts: list[Attempt], owned: list[Entry]
) -> list[str]:
    problems: list[str] = []
    stored = _by_request(owned)
    expected_kind = {SEND: MESSAGE, EDIT: EDIT, DELETE: DELETE}
    for a in attempts:
        entry = stored.get((a.account_id, a.request_id))
        what = f"{a.kind} {a.request_id} via {a.via_region}"
        if entry is None:
            if a.acknowledged:
                problems.append(f"[lost] {conversation_id}: acknowledged {what} missing at {owner}")
            continue
        if entry.kind != expected_kind[a.kind]:
            problems.append(f"[lost] {conversation_id}: {what} stored as a {entry.kind} entry")
        elif a.kind == SEND and a.acknowledged and (entry.id, entry.seq) != (a.message_id, a.seq):
            problems.append(
                f"[lost] {conversation_id}: acknowledged {what} was message {a.message_id} "
                f"seq {a.seq}, {owner} holds {entry.id} seq {entry.seq}"
            )
        elif a.kind != SEND and entry.target != a.message_id:
            problems.append(
                f"[lost] {conversation_id}: {what} targets {entry.target}, not {a.message_id}"
            )
    requests = [(e.sender_id, e.request_id) for e in owned if e.request_id]
    for sender, request_id in sorted({r for r in requests if requests.count(r) > 1}):
        problems.append(
            f"[duplicate] {conversation_id}: {owner} holds request {request_id!r} of "
            f"{sender} {requests.count((sender, request_id))} times"
        )
    attempted = {(a.account_id, a.request_id) for a in attempts}
    for e in owned:
        if e.kind in (MESSAGE, EDIT, DELETE) and (e.sender_id, e.request_id) not in attempted:
            problems.append(
                f"[unexplained] {conversation_id}: {owner} holds {e.kind} {e.id} "
                f"(request {e.request_id!r}) that no client attempted"
            )
    return problems


State = tuple[bool, str | None]  # (deleted, body hash)


def _final_states(
    conversation_id: str, owner: str, attempts: list[Attempt], owned: list[Entry]
) -> list[str]:
    """Each message's (tombstone, body) at the owner must be reachable by
    applying its acknowledged writes and any subset of its uncertain ones,
    in the order they were issued."""
    stored = _by_request(owned)
    items = {e.id: e for e in owned if e.kind in HISTORY}
    possible: dict[str, set[State]] = {}
    for a in attempts:
        if a.kind == SEND:
            entry = stored.get((a.account_id, a.request_id))
            if entry is not None:
                possible[entry.id] = {(False, a.body_hash)}
            continue
        states = possible.get(a.message_id)
        if states is None:
            continue
        if a.kind == EDIT:
            done = {(False, a.body_hash)} if any(not d for d, _ in states) else set()
        else:
            done = {(True, None)}
        possible[a.message_id] = done if a.acknowledged else states | done
    problems: list[str] = []
    for message_id, states in sorted(possible.items()):
        item = items.get(message_id)
        if item is None:
            continue
        actual = (item.deleted, item.body_hash)
        if actual not in states:
            problems.append(
                f"[final state] {conversation_id}: message {message_id} at {owner} is "
                f"{_describe(actual)}, expected one of "
                f"{sorted(_describe(s) for s in states)}"
            )
    return problems


def _describe(state: State) -> str:
    deleted, digest = state
    body = "no body" if digest is None else f"body {digest[:12]}"
    return f"deleted, {body}" if deleted else body


def _gaps(conversation_id: str, region: str, held: list[Entry]) -> list[str]:
    problems: list[str] = []
    seqs = sorted(e.seq for e in held if e.kind in HISTORY and e.seq is not None)
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"[gap] {conversation_id} in {region}: seqs {_runs(seqs)}")
    versions = sorted(e.version for e in held)
    if versions != list(range(1, len(versions) + 1)):
        problems.append(f"[gap] {conversation_id} in {region}: versions {_runs(versions)}")
    return problems


def _runs(numbers: list[int]) -> str:
    """1..5, 7, 7, 9..10: contiguous runs, repeats shown."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs) or "none"


def _tombstones(
    conversation_id: str, region: str, held: list[Entry], owned: list[Entry]
) -> list[str]:
    """A message deleted for everyone at the owner is a tombstone without a
    body wherever it is held."""
    gone = {e.id for e in owned if e.kind in HISTORY and e.deleted}
    return [
        f"[resurrection] {conversation_id} in {region}: message {e.id} is deleted for "
        f"everyone but holds {'a body' if e.deleted else 'its body, not deleted'} "
        f"{e.body_hash[:12] if e.body_hash else ''}".rstrip()
        for e in held
        if e.kind in HISTORY and (e.deleted or e.id in gone) and (e.body_hash or not e.deleted)
    ]


def _convergence(
    conversation_id: str,
    owner: str,
    region: str,
    owned: list[Entry],
    snapshot: RegionSnapshot,
) -> list[str]:
    theirs = {e.id: e for e in snapshot.entries.get(conversation_id, [])}
    ours = {e.id: e for e in owned}
    differences: list[str] = []
    for entry_id in sorted(ours.keys() | theirs.keys()):
        mine, copy = ours.get(entry_id), theirs.get(entry_id)
        if copy is None:
            differences.append(f"{entry_id} missing")
        elif mine is None:
            differences.append(f"{entry_id} not at the owner")
        elif mine.state() != copy.state():
            differences.append(f"{entry_id}: {copy.differences(mine)}")
    problems: list[str] = []
    if differences:
        shown = "; ".join(differences[:_SHOWN])
        more = len(differences) - _SHOWN
        tail = f"; ... and {more} more" if more > 0 else ""
        problems.append(
            f"[convergence] {conversation_id} in {region} differs from owner {owner} "
            f"({len(ours)} entries there, {len(theirs)} here): {shown}{tail}"
        )
    if conversation_id not in snapshot.heads:
        problems.append(f"[convergence] {conversation_id} in {region}: no conversation head")
    return problems


def _residency(conversation_id: str, plan: Plan, snapshot: RegionSnapshot) -> list[str]:
    where: set[str] = set(snapshot.found.get(conversation_id, set()))
    if snapshot.entries.get(conversation_id):
        where.add(f"{len(snapshot.entries[conversation_id])} feed entries")
    if conversation_id in snapshot.heads:
        where.add("its head")
    if snapshot.member_docs.get(conversation_id):
        where.add(f"{snapshot.member_docs[conversation_id]} member documents")
    if not where:
        return []
    return [
        f"[residency] {conversation_id} (owner {plan.owner}, homes {sorted(plan.homes)}) "
        f"found in {snapshot.region}: {', '.join(sorted(where))}"
    ]


def uncertain_outcomes(
    history: History, snapshots: Mapping[str, RegionSnapshot]
) -> tuple[int, int]:
    """(uncertain writes, how many of them committed at their owner anyway)."""
    committed = total = 0
    for a in history.attempts:
        if a.acknowledged:
            continue
        total += 1
        owner = snapshots[history.plans[a.conversation_id].owner]
        stored = owner.entries.get(a.conversation_id, [])
        committed += any(
            (e.sender_id, e.request_id) == (a.account_id, a.request_id) for e in stored
        )
    return total, committed


def edit_bodies_of_deleted(history: History, snapshots: Mapping[str, RegionSnapshot]) -> list[str]:
    """Edit entries that still hold a body although the message they edit was
    deleted for everyone. Not a violation of ``check``: deleting for everyone
    tombstones the message, not its earlier edit entries (svc_message keeps
    them as they were, and replicates them so); listed so a test can report
    how much ciphertext of deleted messages the feeds keep."""
    found: list[str] = []
    for conversation_id in sorted(history.plans):
        for region, snapshot in sorted(snapshots.items()):
            held = snapshot.entries.get(conversation_id, [])
            gone = {e.id for e in held if e.kind in HISTORY and e.deleted}
            found += [
                f"[deleted edit body] {conversation_id} in {region}: edit {e.id} of "
                f"deleted message {e.target} holds a body"
                for e in held
                if e.kind == EDIT and e.target in gone and e.body_hash is not None
            ]
    return found
