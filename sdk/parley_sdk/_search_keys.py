"""The blind index's state in the device store: epochs, their keys, query cursors.

An epoch of a conversation starts at a system message: server search turned
on, or a membership change while it is on. Its key is made by one member
(:func:`designated_creator`) and sent to the members of that epoch; a
member that needs a key before it arrives makes its own, so an epoch may
have two keys (each names itself to the server by its key id, and a query
asks under both). Turning server search off forgets the conversation's keys:
the server dropped their postings.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parley_sdk._blind_tokens import EpochKey
from parley_sdk.e2ee import DeviceStore
from parley_sdk.models import Message, Role, SystemAction

__all__ = [
    "CURSOR_LIFETIME",
    "EPOCH_ACTIONS",
    "Epoch",
    "ScanState",
    "SearchKeys",
    "designated_creator",
]

CURSOR_LIFETIME = 24 * 3600.0
"""Seconds a server search's page token stays usable."""

EPOCH_ACTIONS = frozenset(
    {
        SystemAction.MEMBERS_ADDED,
        SystemAction.MEMBER_REMOVED,
        SystemAction.MEMBER_LEFT,
        SystemAction.SUBSCRIBED,
    }
)
"""Membership changes that start a new epoch while server search is on."""

_TABLES = (
    """CREATE TABLE IF NOT EXISTS search_keys (
        conversation_id TEXT NOT NULL,
        epoch_seq INTEGER NOT NULL,
        key_id BLOB NOT NULL,
        key BLOB NOT NULL,
        token_bytes INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, epoch_seq, key_id)
    )""",
    """CREATE TABLE IF NOT EXISTS search_epochs (
        conversation_id TEXT NOT NULL,
        epoch_seq INTEGER NOT NULL,
        actor TEXT NOT NULL,
        departed TEXT NOT NULL,
        PRIMARY KEY (conversation_id, epoch_seq)
    )""",
    """CREATE TABLE IF NOT EXISTS search_scan (
        conversation_id TEXT PRIMARY KEY,
        scanned_seq INTEGER NOT NULL,
        enabled INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS search_cursors (
        token TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)

_ADMINS = (int(Role.OWNER), int(Role.ADMIN))


@dataclass(frozen=True, slots=True)
class Epoch:
    conversation_id: str
    seq: int
    actor: str
    """Who made the change that started it."""
    departed: tuple[str, ...]
    """Who left with it (a removed member, or the actor who left)."""


@dataclass(frozen=True, slots=True)
class ScanState:
    """How far this device has read a conversation's system messages, and
    whether server search was on there."""

    scanned_seq: int
    enabled: bool


def designated_creator(epoch: Epoch, members: Sequence[tuple[str, int]]) -> str | None:
    """Who makes the epoch's key, the same answer on every member's device:
    the member who made the change, else (they left) the lowest account id
    among the owners and admins, else among all members. ``members`` are
    (account id, role) now; None when there is nobody."""
    present = {account for account, _ in members} - set(epoch.departed)
    if epoch.actor in present:
        return epoch.actor
    admins = sorted(a for a, role in members if role in _ADMINS and a in present)
    if admins:
        return admins[0]
    return min(present) if present else None


def epoch_of(message: Message) -> tuple[Epoch | None, bool | None]:
    """What a history item does to the blind index: the epoch it starts (or
    None), and the setting it changes server search to (or None)."""
    if not message.HasField("system"):
        return None, None
    system = message.system
    action = SystemAction(system.action)
    actor = system.actor_account_id
    if action is SystemAction.SEARCH_CHANGED:
        if system.server_search:
            return Epoch(message.conversation_id, message.seq, actor, ()), True
        return None, False
    if action in EPOCH_ACTIONS:
        departed: tuple[str, ...] = ()
        if action is SystemAction.MEMBER_REMOVED:
            departed = tuple(system.target_account_ids)
        elif action is SystemAction.MEMBER_LEFT:
            departed = (actor,)
        return Epoch(message.conversation_id, message.seq, actor, departed), None
    return None, None


class SearchKeys:
    """The tables above in one device store."""

    def __init__(self, store: DeviceStore) -> None:
        self._store = store
        self._db: sqlite3.Connection = store.connection
        for statement in _TABLES:
            self._db.execute(statement)

    # -- scanning ---------------------------------------------------------------

    def scan_state(self, conversation_id: str) -> ScanState | None:
        row = self._db.execute(
            "SELECT scanned_seq, enabled FROM search_scan WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        return None if row is None else ScanState(int(row[0]), bool(row[1]))

    def record_scan(
        self, conversation_id: str, items: Iterable[Message], *, through_seq: int, enabled: bool
    ) -> ScanState:
        """Applies history items (oldest first) read after the last scan, in one
        transaction with the new checkpoint; returns the state after them."""
        with self._store.transaction():
            for message in items:
                epoch, setting = epoch_of(message)
                # Postings of earlier epochs went when search was turned off;
                # a key of a later epoch may have arrived before this scan.
                if setting is False:
                    enabled = False
                    self._forget(conversation_id, before_seq=message.seq)
                    continue
                if setting is True:
                    enabled = True
                    self._forget(conversation_id, before_seq=message.seq)
                if epoch is not None and enabled:
                    self._db.execute(
                        "INSERT OR IGNORE INTO search_epochs"
                        " (conversation_id, epoch_seq, actor, departed) VALUES (?, ?, ?, ?)",
                        (conversation_id, epoch.seq, epoch.actor, json.dumps(epoch.departed)),
                    )
            self._db.execute(
                "INSERT INTO search_scan (conversation_id, scanned_seq, enabled) VALUES (?, ?, ?)"
                " ON CONFLICT (conversation_id) DO UPDATE SET"
                " scanned_seq = max(scanned_seq, excluded.scanned_seq), enabled = excluded.enabled",
                (conversation_id, through_seq, int(enabled)),
            )
        state = self.scan_state(conversation_id)
        assert state is not None
        return state

    def _forget(self, conversation_id: str, *, before_seq: int) -> None:
        for table in ("search_keys", "search_epochs"):
            self._db.execute(
                f"DELETE FROM {table} WHERE conversation_id = ? AND epoch_seq < ?",  # noqa: S608
                (conversation_id, before_seq),
            )

    def epoch_at(self, conversation_id: str, seq: int) -> Epoch | None:
        """The epoch a message of ``seq`` belongs to (the latest that started before it)."""
        row = self._db.execute(
            "SELECT epoch_seq, actor, departed FROM search_epochs"
            " WHERE conversation_id = ? AND epoch_seq <= ? ORDER BY epoch_seq DESC LIMIT 1",
            (conversation_id, seq),
        ).fetchone()
        if row is None:
            return None
        return Epoch(conversation_id, int(row[0]), str(row[1]), tuple(json.loads(row[2])))

    # -- keys -------------------------------------------------------------------

    def add_key(self, key: EpochKey) -> bool:
        """Keeps a key (made here or received); returns whether it was new."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO search_keys"
            " (conversation_id, epoch_seq, key_id, key, token_bytes) VALUES (?, ?, ?, ?, ?)",
            (key.conversation_id, key.epoch_seq, key.key_id, key.key, key.token_bytes),
        )
        self._db.commit()
        return cursor.rowcount > 0

    def keys_of(self, conversation_id: str, epoch_seq: int) -> list[EpochKey]:
        """The epoch's keys, the one every member indexes with first (the
        lowest key id: members holding both agree)."""
        rows = self._db.execute(
            "SELECT key, token_bytes FROM search_keys WHERE conversation_id = ? AND epoch_seq = ?",
            (conversation_id, epoch_seq),
        ).fetchall()
        keys = [EpochKey(conversation_id, epoch_seq, bytes(k), int(n)) for k, n in rows]
        return sorted(keys, key=lambda key: key.key_id)

    def all_keys(self, conversation_id: str | None = None) -> list[EpochKey]:
        """Every key held (of one conversation), oldest epoch first."""
        sql = "SELECT conversation_id, epoch_seq, key, token_bytes FROM search_keys"
        parameters: tuple[str, ...] = ()
        if conversation_id is not None:
            sql += " WHERE conversation_id = ?"
            parameters = (conversation_id,)
        rows = self._db.execute(sql + " ORDER BY conversation_id, epoch_seq, key_id", parameters)
        return [EpochKey(str(c), int(e), bytes(k), int(n)) for c, e, k, n in rows]

    # -- query cursors ----------------------------------------------------------

    def save_cursor(self, token: str, state: dict[str, object], *, now: float) -> None:
        with self._store.transaction():
            self._db.execute(
                "DELETE FROM search_cursors WHERE created_at < ?", (now - CURSOR_LIFETIME,)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO search_cursors (token, state, created_at) VALUES (?, ?, ?)",
                (token, json.dumps(state, separators=(",", ":")), now),
            )

    def load_cursor(self, token: str, *, now: float | None = None) -> dict[str, object] | None:
        moment = time.time() if now is None else now
        row = self._db.execute(
            "SELECT state, created_at FROM search_cursors WHERE token = ?", (token,)
        ).fetchone()
        if row is None or float(row[1]) < moment - CURSOR_LIFETIME:
            return None
        loaded = json.loads(row[0])
        return loaded if isinstance(loaded, dict) else None
