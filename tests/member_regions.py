"""Regions holding replicas of one account's member metadata, for the merge
tests: each has its own HLC with a skewed physical clock, applies local
writes as svc_message would, and merges what it receives from the others.
Plain in-memory state: what is tested is the pure merge logic."""

from __future__ import annotations

from dataclasses import dataclass, field

from parley_core.hlc import HybridClock, Timestamp
from svc_message.domain import member_replica as mr
from svc_message.model.member_replica import MemberReplica, merge

ACCOUNT = "acct"
T0 = 1_900_000_000_000  # ms, 2030
MINUTE = 60_000
CAP = 2
# The writes the simulations draw from.
OPS = (
    "mute",
    "mute_forever",
    "unmute",
    "pin",
    "unpin",
    "archive",
    "unarchive",
    "mark_unread",
    "mark_read",
    "deliver",
)


@dataclass
class Region:
    name: str
    skew_ms: int = 0
    clock: HybridClock = field(init=False)
    states: dict[str, MemberReplica] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clock = HybridClock(self.name)

    def physical(self, true_ms: int) -> int:
        return true_ms + self.skew_ms

    def state(self, conversation_id: str) -> MemberReplica:
        return self.states.get(conversation_id) or MemberReplica(conversation_id, ACCOUNT)

    def receive(self, incoming: MemberReplica, true_ms: int) -> None:
        """Merge a replicated state in, observing its stamps first."""
        self.clock.observe(incoming.latest_stamp(), self.physical(true_ms))
        self.states[incoming.conversation_id] = merge(
            self.state(incoming.conversation_id), incoming
        )

    def apply(self, op: str, conversation_id: str, arg: int, true_ms: int) -> None:
        """One local write, as the inbox would make it (pin cap included)."""
        now_ms = self.physical(true_ms)
        state = self.state(conversation_id)
        stamp = mr.write_stamp(self.clock, state, now_ms)
        if op == "mute":
            state = mr.set_muted(state, now_ms + arg * MINUTE, stamp=stamp, now_ms=now_ms)
        elif op == "mute_forever":
            state = mr.set_muted(state, None, forever=True, stamp=stamp, now_ms=now_ms)
        elif op == "unmute":
            state = mr.set_muted(state, None, stamp=stamp, now_ms=now_ms)
        elif op in ("pin", "unpin"):
            # Either acts on the pinned list as shown: pins a merge brought
            # past the cap (shown unpinned) go with it.
            self._release_overflow(conversation_id, stamp)
            state = self.state(conversation_id)
            if op == "unpin":
                self.states[conversation_id] = mr.unpin(state, stamp=stamp)
                return
            layout = mr.pin_layout(self.states.values(), CAP)
            if mr.pin_check(layout, conversation_id, CAP) is not mr.PinCheck.ALLOWED:
                return
            rank = mr.next_pin_rank(self.states.values(), stamp)
            state = mr.pin(state, stamp=stamp, rank=rank)
        elif op == "archive":
            state = mr.set_archived(state, True, archived_seq=arg, stamp=stamp)
        elif op == "unarchive":
            state = mr.set_archived(state, False, archived_seq=0, stamp=stamp)
        elif op == "mark_unread":
            state = mr.mark_unread(state, stamp=stamp)
        elif op == "mark_read":
            state = mr.mark_read(state, arg, stamp=stamp)
        elif op == "deliver":
            state = mr.mark_delivered(state, arg)
        else:
            raise AssertionError(op)
        self.states[conversation_id] = state

    def _release_overflow(self, conversation_id: str, stamp: Timestamp) -> None:
        layout = mr.pin_layout(self.states.values(), CAP)
        others = [s for c, s in self.states.items() if c != conversation_id]
        for released in mr.release_overflow(others, layout, stamp=stamp):
            self.states[released.conversation_id] = released


def regions(*skews_ms: int) -> list[Region]:
    return [Region(f"r{i}", skew) for i, skew in enumerate(skews_ms)]
