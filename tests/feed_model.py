"""The in-memory model of the change-feed state machine
(tests/integration/test_feed_state_machine.py): what each account of a
conversation should see.

A ``Conversation`` holds every history item as it is now, each account's
membership (joined from the system message that added them; a removed or
departed member frozen at what they saw then), and every feed version with
the history item it is or changes. From that it says what a device of an
account shows, the newest version the account's stream delivers, and what
ListMessages gives the account. ``expected_view``, ``held_versions`` and
``diff`` compare a ``DeviceView`` with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from parley.message.v1 import messages_pb2 as mpb
from tests.feed_view import DeviceView, Shown, shown

# -- the model ---------------------------------------------------------------------------


@dataclass
class Item:
    """A history item as it is now."""

    message_id: str
    seq: int
    sender: str
    type: int
    body: bytes
    reply_to: str = ""
    edited: bool = False
    deleted: bool = False
    reactions: dict[str, set[str]] = field(default_factory=dict)
    system_action: int = 0
    system_targets: tuple[str, ...] = ()

    @classmethod
    def of(cls, m: mpb.Message) -> Item:
        system = m.type == mpb.MESSAGE_TYPE_SYSTEM
        return cls(
            message_id=m.message_id,
            seq=m.seq,
            sender=m.sender_account_id,
            type=m.type,
            body=m.body,
            reply_to=m.reply_to_message_id,
            system_action=m.system.action if system else 0,
            system_targets=tuple(m.system.target_account_ids) if system else (),
        )

    @property
    def is_system(self) -> bool:
        return self.type == mpb.MESSAGE_TYPE_SYSTEM

    def react(self, account: str, emoji: str, remove: bool) -> bool:
        """Adds or removes the account's reaction; whether that changed it."""
        who = self.reactions.setdefault(emoji, set())
        changed = (account in who) if remove else (account not in who)
        if remove:
            who.discard(account)
        else:
            who.add(account)
        return changed

    def shown(self) -> Shown:
        return shown(
            message_id=self.message_id,
            seq=self.seq,
            sender_account_id=self.sender,
            type=self.type,
            body=self.body,
            edited=self.edited,
            deleted=self.deleted,
            reply_to_message_id=self.reply_to,
            reactions=self.reactions,
            system_action=self.system_action,
            system_targets=self.system_targets,
        )


@dataclass
class Member:
    role: int
    # History from this seq on (the system message that added them).
    joined_seq: int
    # The seq and version of the removal or departure; 0 while a member.
    left_seq: int = 0
    left_version: int = 0
    # What the member saw when they were removed, and the newest version
    # their devices get.
    frozen: list[Shown] = field(default_factory=list)
    frozen_version: int = 0
    hidden: set[str] = field(default_factory=set)
    # Devices that held nothing of the conversation when the account left:
    # they never learn of it (a device resumes only what it knows).
    unaware: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.left_seq == 0


@dataclass(frozen=True)
class Change:
    """One version of the feed: which history item it is or changes, and the
    one account that sees it (a delete for me) or "" for everyone."""

    version: int
    seq: int
    only_for: str = ""


@dataclass
class Conversation:
    name: str
    conversation_id: str
    kind: int
    items: list[Item] = field(default_factory=list)
    members: dict[str, Member] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    last_version: int = 0

    @property
    def last_seq(self) -> int:
        return self.items[-1].seq if self.items else 0

    def item(self, message_id: str) -> Item:
        return next(i for i in self.items if i.message_id == message_id)

    def active(self) -> list[str]:
        return [a for a, m in self.members.items() if m.active]

    def managers(self) -> list[str]:
        return [
            a
            for a, m in self.members.items()
            if m.active and m.role in (mpb.ROLE_OWNER, mpb.ROLE_ADMIN)
        ]

    def non_owners(self) -> list[str]:
        return [a for a, m in self.members.items() if m.active and m.role != mpb.ROLE_OWNER]

    def removals(self) -> list[tuple[str, str]]:
        """(actor, target): owners remove admins and members, admins members."""
        result = []
        for actor in self.managers():
            mine = self.members[actor].role
            for a, m in self.members.items():
                if a == actor or not m.active or m.role == mpb.ROLE_OWNER:
                    continue
                if m.role == mpb.ROLE_MEMBER or mine == mpb.ROLE_OWNER:
                    result.append((actor, a))
        return result

    def visible(self, account: str) -> list[Item]:
        """What an active member can act on."""
        m = self.members[account]
        return [i for i in self.items if i.seq >= m.joined_seq and i.message_id not in m.hidden]

    def expected(self, account: str, device: str) -> tuple[list[Shown], int]:
        """What a device of the account shows, and the newest version it holds."""
        m = self.members.get(account)
        if m is None or device in m.unaware:
            return [], 0
        if not m.active:
            return m.frozen, m.frozen_version
        return [i.shown() for i in self.visible(account)], self.newest_seen(account)

    def newest_seen(self, account: str) -> int:
        """The newest version an account's stream delivers: changes to what
        it can see, up to its departure, and only its own deletes for me."""
        m = self.members[account]
        return max(
            (
                c.version
                for c in self.changes
                if c.seq >= m.joined_seq
                and (m.active or c.version <= m.left_version)
                and c.only_for in ("", account)
            ),
            default=0,
        )

    def expected_history(self, account: str) -> list[Any]:
        """What ListMessages gives the account: items in their current state,
        only which ones for a former member."""
        m = self.members.get(account)
        if m is None:
            return []
        if m.active:
            return [i.shown().counts_only() for i in self.visible(account)]
        return [
            (i.message_id, i.seq)
            for i in self.items
            if m.joined_seq <= i.seq <= m.left_seq and i.message_id not in m.hidden
        ]

    def append(self, message: mpb.Message) -> Item:
        assert message.seq == self.last_seq + 1, f"seq {message.seq} after {self.last_seq}"
        assert message.version == self.last_version + 1, (
            f"version {message.version} after {self.last_version}"
        )
        item = Item.of(message)
        self.items.append(item)
        self.last_version = message.version
        self.changes.append(Change(message.version, message.seq))
        return item

    def changed(self, version: int, target: Item, only_for: str = "") -> None:
        assert version == self.last_version + 1, f"version {version} after {self.last_version}"
        self.last_version = version
        self.changes.append(Change(version, target.seq, only_for))

    def edited(self, version: int, target: Item, body: bytes) -> None:
        self.changed(version, target)
        target.body, target.edited = body, True

    def deleted(self, version: int, target: Item, account: str, scope: int) -> None:
        """A delete by ``account``; one for me hides the message from them only."""
        for_me = scope == mpb.DELETE_SCOPE_FOR_ME
        self.changed(version, target, account if for_me else "")
        if for_me:
            self.members[account].hidden.add(target.message_id)
        else:
            target.deleted, target.body = True, b""

    def depart(self, account: str, seq: int, unaware: set[str]) -> None:
        """The account was removed or left by the system message at ``seq``."""
        member = self.members[account]
        member.frozen = [i.shown() for i in self.visible(account)]
        member.left_seq, member.left_version = seq, self.last_version
        member.frozen_version = self.newest_seen(account)
        member.unaware = unaware


@dataclass(frozen=True)
class Pick:
    """A message an actor may act on, as hypothesis prints it."""

    conversation: str
    actor: int
    item: Item

    def __repr__(self) -> str:
        return f"{self.conversation}: account {self.actor} on seq {self.item.seq}"


def target_of(conv: Conversation, item: Item) -> dict[str, str]:
    return {"conversation_id": conv.conversation_id, "message_id": item.message_id}


# -- comparing a device with the model --------------------------------------------------

# Per conversation id: the items a device shows, and the newest version it holds.
Expected = tuple[dict[str, list[Shown]], dict[str, int]]


def expected_view(conversations: Iterable[Conversation], view: DeviceView) -> Expected:
    """What the device shows per conversation, and the version it holds."""
    items, versions = {}, {}
    for conv in conversations:
        shown_items, version = conv.expected(view.account_id, view.device.device_id)
        if shown_items:
            items[conv.conversation_id] = shown_items
        if version:
            versions[conv.conversation_id] = version
    return items, versions


def held_versions(view: DeviceView) -> dict[str, int]:
    return {cid: feed.version for cid, feed in view.conversations.items() if feed.version}


def diff(
    got: dict[str, list[Shown]],
    expected: dict[str, list[Shown]],
    conversations: dict[str, Conversation],
) -> str:
    names = {c.conversation_id: c.name for c in conversations.values()}
    lines = []
    for cid in sorted(set(got) | set(expected)):
        have = {s.seq: s for s in got.get(cid, [])}
        want = {s.seq: s for s in expected.get(cid, [])}
        for seq in sorted(set(have) | set(want)):
            if have.get(seq) != want.get(seq):
                lines.append(f"  {names.get(cid, cid)} seq {seq}:")
                lines.append(f"    device: {have.get(seq)}")
                lines.append(f"    model:  {want.get(seq)}")
    return "\n".join(lines) or "  (equal now)"
