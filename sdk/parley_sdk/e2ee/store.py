"""The device's encryption state in one SQLite file (stdlib sqlite3, WAL).

Holds the identity and prekeys, the pairwise sessions, own and received sender
keys, who was given which sender key, a small settings table for the SDK, the
state of file uploads under way (with their file keys, so an interrupted
upload resumes), and the decrypted history (message keys work once, so history that must read after
a restart is kept as plaintext). Private keys are stored unencrypted: the file
is as sensitive as the device itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self

from parley_sdk.e2ee.keys import DeviceAddress

__all__ = ["DeviceStore"]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    x3dh_state TEXT NOT NULL,
    signed_pre_key_id INTEGER NOT NULL,
    old_signed_pre_key_id INTEGER
);
CREATE TABLE IF NOT EXISTS pre_keys (
    key_id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    private_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    ratchet TEXT NOT NULL,
    start_ephemeral BLOB NOT NULL,
    pending_start BLOB,
    PRIMARY KEY (account_id, device_id, slot)
);
CREATE TABLE IF NOT EXISTS seen_starts (ephemeral_key BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS own_sender_keys (
    conversation_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    chain_key BLOB,
    signing_private_key BLOB
);
CREATE TABLE IF NOT EXISTS sender_key_distributed (
    conversation_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (conversation_id, epoch, account_id, device_id)
);
CREATE TABLE IF NOT EXISTS received_sender_keys (
    conversation_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    chain_key BLOB NOT NULL,
    signing_public_key BLOB NOT NULL,
    PRIMARY KEY (conversation_id, account_id, device_id, epoch)
);
CREATE TABLE IF NOT EXISTS skipped_sender_keys (
    conversation_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    message_key BLOB NOT NULL,
    PRIMARY KEY (conversation_id, account_id, device_id, epoch, iteration)
);
CREATE TABLE IF NOT EXISTS media_uploads (
    request_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plaintext (
    message_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    sender_account_id TEXT NOT NULL,
    sender_device_id TEXT NOT NULL,
    content BLOB NOT NULL,
    sent_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    x3dh_state: str
    signed_pre_key_id: int
    old_signed_pre_key_id: int | None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A Double Ratchet session with one device.

    ``start_ephemeral`` is the X3DH ephemeral key that began it (ours when we
    started it), so a repeated start is recognised. ``pending_start`` is the
    serialized SessionStart still attached to every copy until the peer answers.
    """

    identity_key: bytes
    ratchet: str
    start_ephemeral: bytes
    pending_start: bytes | None


@dataclass(frozen=True, slots=True)
class OwnSenderKeyRecord:
    epoch: int
    iteration: int
    chain_key: bytes | None
    signing_private_key: bytes | None


@dataclass(frozen=True, slots=True)
class ReceivedSenderKeyRecord:
    iteration: int
    chain_key: bytes
    signing_public_key: bytes


CURRENT = 0
PREVIOUS = 1


class DeviceStore:
    """One device's encryption state. Open with :meth:`open`; ``":memory:"`` is allowed."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._depth = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so a
        # ratchet step and what depends on it commit together or not at all.
        location = os.fspath(path)
        connection = sqlite3.connect(location, isolation_level=None)
        if location != ":memory:" and not location.startswith("file:"):
            # Private keys live here; SQLite gives the -wal/-shm files the same mode.
            os.chmod(location, 0o600)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed ratchet step survives power loss, so no message
        # key is ever used twice.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            connection.close()
            raise ValueError(f"store schema {version} is newer than this SDK's {_SCHEMA_VERSION}")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        return cls(connection)

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for SDK parts that keep their own tables in the
        device's file (the search index); write inside :meth:`transaction`."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            # SQLite may already have rolled back (e.g. disk full).
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # --- settings and history (for the SDK integration)

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def remember_plaintext(
        self,
        *,
        message_id: str,
        conversation_id: str,
        sender: DeviceAddress,
        content: bytes,
        sent_at: float,
    ) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO plaintext (message_id, conversation_id, sender_account_id,"
                " sender_device_id, content, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    conversation_id,
                    sender.account_id,
                    sender.device_id,
                    content,
                    sent_at,
                ),
            )

    def recall_plaintext(self, message_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT content FROM plaintext WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # --- file uploads under way (parley_sdk._uploads)

    def save_upload(self, request_id: str, conversation_id: str, state: str, *, now: float) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO media_uploads (request_id, conversation_id, state,"
                " updated_at) VALUES (?, ?, ?, ?)",
                (request_id, conversation_id, state, now),
            )

    def load_upload(self, request_id: str) -> str | None:
        row = self._db.execute(
            "SELECT state FROM media_uploads WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def pending_uploads(self) -> list[str]:
        """Every saved upload state, oldest first."""
        rows = self._db.execute(
            "SELECT state FROM media_uploads ORDER BY updated_at, request_id"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def delete_upload(self, request_id: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM media_uploads WHERE request_id = ?", (request_id,))

    def plaintext_conversations(self) -> set[str]:
        """The conversations this device holds decrypted history of."""
        rows = self._db.execute("SELECT DISTINCT conversation_id FROM plaintext").fetchall()
        return {str(row[0]) for row in rows}

    # --- identity and prekeys (used by Crypto)

    def allocate_ids(self, name: str, count: int) -> int:
        """Reserves ``count`` consecutive ids of the named counter; returns the first (>= 1)."""
        with self.transaction():
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            first = 1 if row is None else int(row[0]) + 1
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, first + count - 1),
            )
        return first

    def load_identity(self) -> IdentityRecord | None:
        row = self._db.execute(
            "SELECT x3dh_state, signed_pre_key_id, old_signed_pre_key_id FROM identity"
        ).fetchone()
        return None if row is None else IdentityRecord(str(row[0]), int(row[1]), row[2])

    def save_identity(self, record: IdentityRecord) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO identity"
                " (singleton, x3dh_state, signed_pre_key_id, old_signed_pre_key_id)"
                " VALUES (1, ?, ?, ?)",
                (record.x3dh_state, record.signed_pre_key_id, record.old_signed_pre_key_id),
            )

    def add_pre_keys(self, keys: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Stores (key_id, public_key, private_key) triples."""
        with self.transaction():
            self._db.executemany(
                "INSERT INTO pre_keys (key_id, public_key, private_key) VALUES (?, ?, ?)", keys
            )

    def pre_key_private(self, public_key: bytes) -> bytes | None:
        row = self._db.execute(
            "SELECT private_key FROM pre_keys WHERE public_key = ?", (public_key,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def delete_pre_key(self, public_key: bytes) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM pre_keys WHERE public_key = ?", (public_key,))

    def pre_key_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pre_keys").fetchone()[0])

    # --- pairwise sessions

    def load_session(self, peer: DeviceAddress, slot: int) -> SessionRecord | None:
        row = self._db.execute(
            "SELECT identity_key, ratchet, start_ephemeral, pending_start FROM sessions"
            " WHERE account_id = ? AND device_id = ? AND slot = ?",
            (peer.account_id, peer.device_id, slot),
        ).fetchone()
        if row is None:
            return None
        pending = None if row[3] is None else bytes(row[3])
        return SessionRecord(bytes(row[0]), str(row[1]), bytes(row[2]), pending)

    def save_session(self, peer: DeviceAddress, slot: int, record: SessionRecord | None) -> None:
        with self.transaction():
            if record is None:
                self._db.execute(
                    "DELETE FROM sessions WHERE account_id = ? AND device_id = ? AND slot = ?",
                    (peer.account_id, peer.device_id, slot),
                )
                return
            self._db.execute(
                "INSERT OR REPLACE INTO sessions (account_id, device_id, slot, identity_key,"
                " ratchet, start_ephemeral, pending_start) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.account_id,
                    peer.device_id,
                    slot,
                    record.identity_key,
                    record.ratchet,
                    record.start_ephemeral,
                    record.pending_start,
                ),
            )

    def delete_sessions(self, peer: DeviceAddress) -> None:
        with self.transaction():
            self._db.execute(
                "DELETE FROM sessions WHERE account_id = ? AND device_id = ?",
                (peer.account_id, peer.device_id),
            )

    def session_identities(self, account_id: str) -> dict[str, bytes]:
        rows = self._db.execute(
            "SELECT device_id, identity_key FROM sessions WHERE account_id = ? AND slot = ?"
            " ORDER BY device_id",
            (account_id, CURRENT),
        ).fetchall()
        return {str(device_id): bytes(key) for device_id, key in rows}

    def start_seen(self, ephemeral_key: bytes) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM seen_starts WHERE ephemeral_key = ?", (ephemeral_key,)
        ).fetchone()
        return row is not None

    def mark_start_seen(self, ephemeral_key: bytes) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO seen_starts (ephemeral_key) VALUES (?)", (ephemeral_key,)
            )

    # --- sender keys

    def load_own_sender_key(self, conversation_id: str) -> OwnSenderKeyRecord | None:
        row = self._db.execute(
            "SELECT epoch, iteration, chain_key, signing_private_key FROM own_sender_keys"
            " WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            return None
        chain_key = None if row[2] is None else bytes(row[2])
        signing = None if row[3] is None else bytes(row[3])
        return OwnSenderKeyRecord(int(row[0]), int(row[1]), chain_key, signing)

    def save_own_sender_key(self, conversation_id: str, record: OwnSenderKeyRecord) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO own_sender_keys"
                " (conversation_id, epoch, iteration, chain_key, signing_private_key)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    record.epoch,
                    record.iteration,
                    record.chain_key,
                    record.signing_private_key,
                ),
            )
            # Bookkeeping of older epochs is never consulted again.
            self._db.execute(
                "DELETE FROM sender_key_distributed WHERE conversation_id = ? AND epoch < ?",
                (conversation_id, record.epoch),
            )

    def distributed_devices(self, conversation_id: str, epoch: int) -> set[DeviceAddress]:
        rows = self._db.execute(
            "SELECT account_id, device_id FROM sender_key_distributed"
            " WHERE conversation_id = ? AND epoch = ?",
            (conversation_id, epoch),
        ).fetchall()
        return {DeviceAddress(str(a), str(d)) for a, d in rows}

    def mark_distributed(
        self, conversation_id: str, epoch: int, devices: Sequence[DeviceAddress]
    ) -> None:
        with self.transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO sender_key_distributed"
                " (conversation_id, epoch, account_id, device_id) VALUES (?, ?, ?, ?)",
                [(conversation_id, epoch, d.account_id, d.device_id) for d in devices],
            )

    def load_received_sender_key(
        self, conversation_id: str, sender: DeviceAddress, epoch: int
    ) -> ReceivedSenderKeyRecord | None:
        row = self._db.execute(
            "SELECT iteration, chain_key, signing_public_key FROM received_sender_keys"
            " WHERE conversation_id = ? AND account_id = ? AND device_id = ? AND epoch = ?",
            (conversation_id, sender.account_id, sender.device_id, epoch),
        ).fetchone()
        if row is None:
            return None
        return ReceivedSenderKeyRecord(int(row[0]), bytes(row[1]), bytes(row[2]))

    def save_received_sender_key(
        self,
        conversation_id: str,
        sender: DeviceAddress,
        epoch: int,
        record: ReceivedSenderKeyRecord,
        *,
        replace_skipped: bool = False,
    ) -> None:
        key = (conversation_id, sender.account_id, sender.device_id, epoch)
        with self.transaction():
            if replace_skipped:
                self._db.execute(
                    "DELETE FROM skipped_sender_keys WHERE conversation_id = ? AND account_id = ?"
                    " AND device_id = ? AND epoch = ?",
                    key,
                )
            self._db.execute(
                "INSERT OR REPLACE INTO received_sender_keys (conversation_id, account_id,"
                " device_id, epoch, iteration, chain_key, signing_public_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, record.iteration, record.chain_key, record.signing_public_key),
            )

    def skipped_sender_key(
        self, conversation_id: str, sender: DeviceAddress, epoch: int, iteration: int
    ) -> bytes | None:
        """The skipped message key for ``iteration``, without removing it."""
        row = self._db.execute(
            "SELECT message_key FROM skipped_sender_keys WHERE conversation_id = ?"
            " AND account_id = ? AND device_id = ? AND epoch = ? AND iteration = ?",
            (conversation_id, sender.account_id, sender.device_id, epoch, iteration),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def update_skipped_sender_keys(
        self,
        conversation_id: str,
        sender: DeviceAddress,
        epoch: int,
        *,
        used: int | None,
        added: Sequence[tuple[int, bytes]],
        keep: int,
    ) -> None:
        """Removes the ``used`` key, adds (iteration, message_key) pairs, and keeps
        only the ``keep`` newest keys of this (group, sender, epoch)."""
        key = (conversation_id, sender.account_id, sender.device_id, epoch)
        where = "conversation_id = ? AND account_id = ? AND device_id = ? AND epoch = ?"
        with self.transaction():
            if used is not None:
                self._db.execute(
                    f"DELETE FROM skipped_sender_keys WHERE {where} AND iteration = ?",  # noqa: S608
                    (*key, used),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO skipped_sender_keys (conversation_id, account_id,"
                " device_id, epoch, iteration, message_key) VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, iteration, message_key) for iteration, message_key in added],
            )
            if added:
                self._db.execute(
                    f"DELETE FROM skipped_sender_keys WHERE {where} AND iteration NOT IN"  # noqa: S608
                    f" (SELECT iteration FROM skipped_sender_keys WHERE {where}"
                    " ORDER BY iteration DESC LIMIT ?)",
                    (*key, *key, keep),
                )

    def skipped_sender_key_count(
        self, conversation_id: str, sender: DeviceAddress, epoch: int
    ) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM skipped_sender_keys WHERE conversation_id = ?"
            " AND account_id = ? AND device_id = ? AND epoch = ?",
            (conversation_id, sender.account_id, sender.device_id, epoch),
        ).fetchone()
        return int(row[0])
