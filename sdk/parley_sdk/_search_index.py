"""The device's full-text index of the messages it can read: SQLite FTS5 in its store.

Tables beside the encryption state. ``search_docs`` holds each indexed
message (its id, conversation, seq, sender and text, for results and
snippets); ``search_fts`` is a contentless FTS5 table over the terms
:mod:`parley_sdk.search_text` makes of that text, plus one term naming the
conversation (so a search inside one conversation is an index intersection,
not a filter over every match). The text is folded in Python, so FTS5's own
tokenizer only splits at the spaces between terms. Conversation and sender
ids are stored once in ``search_names`` and message ids that are UUIDs as 16
bytes: ids are most of what a short message costs.

A document's id (its FTS rowid) is its send time in microseconds times 1024
(plus a slot for messages sent in the same microsecond), so "newest first" is
FTS5's native descending rowid order and a page stops after ``page_size``
matches however many messages match. An edit keeps its message's place.

Deleting from a contentless table takes the exact terms it was indexed with;
they are made again from the stored text, which is why the index records the
:data:`parley_sdk.search_text.NORMALISER_VERSION` it was built with and is
rebuilt from ``search_docs`` when that changes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from parley_sdk._search_query import (
    DEFAULT_SEARCH_PAGE_SIZE,
    MAX_SEARCH_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    fts_terms,
    match_expression,
    message_id_of,
    message_key,
    query_key,
    scope_term,
)
from parley_sdk.e2ee import DeviceStore
from parley_sdk.search_text import NORMALISER_VERSION, highlight_spans, parse_query, snippet

__all__ = [
    "DEFAULT_SEARCH_PAGE_SIZE",
    "MAX_SEARCH_PAGE_SIZE",
    "IndexedMessage",
    "SearchIndex",
    "SearchPage",
    "SearchResult",
    "SearchUnavailableError",
]

_SLOTS = 1024
_MAX_DOC_ID = (1 << 63) - 1
_VERSION_SETTING = "search.normaliser"
_REBUILD_BATCH = 2000
# Letters, digits and marks make terms; everything else (the spaces between
# terms) separates them. Case and diacritics are already folded.
_TOKENIZER = "unicode61 remove_diacritics 0 categories 'L* N* Co M*'"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS search_names (
        name_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    )""",
    # message_key has no type: a UUID's 16 bytes, or another id's text.
    """CREATE TABLE IF NOT EXISTS search_docs (
        doc_id INTEGER PRIMARY KEY,
        message_key NOT NULL UNIQUE,
        conversation INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender_account INTEGER NOT NULL,
        sender_device INTEGER NOT NULL,
        text TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS search_docs_by_conversation ON search_docs (conversation, seq)",
    """CREATE TABLE IF NOT EXISTS search_backfill (
        conversation_id TEXT PRIMARY KEY,
        done_seq INTEGER NOT NULL
    )""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5("
    f"terms, scope, content='', columnsize=0, tokenize=\"{_TOKENIZER}\")",
)

log = logging.getLogger(__name__)


class SearchUnavailableError(RuntimeError):
    """This Python's SQLite has no FTS5, so the device cannot keep a search index."""


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    """A message as the index takes it: where it is, who sent it when, its text."""

    conversation_id: str
    message_id: str
    seq: int
    sender_account_id: str
    sender_device_id: str
    sent_at: float
    """Seconds since the epoch (the server's send time)."""
    text: str


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One matching message.

    ``snippet`` is about 80 characters of ``text`` around the first match, on
    one line, matches wrapped in the search's ``marks``; ``highlights`` are the
    matches as (start, end) offsets into ``text``, for drawing them yourself.
    """

    conversation_id: str
    message_id: str
    seq: int
    sender_account_id: str
    sender_device_id: str
    sent_at: datetime
    text: str
    snippet: str
    highlights: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of results, newest first; ``next_page_token`` is empty on the last."""

    results: tuple[SearchResult, ...]
    next_page_token: str


class _Stored(NamedTuple):
    doc_id: int
    conversation: int
    text: str


class _Row(NamedTuple):
    doc_id: int
    message_key: bytes | str
    conversation: int
    seq: int
    sender_account: int
    sender_device: int
    text: str


def _sent_at(doc_id: int) -> datetime:
    return datetime.fromtimestamp(doc_id // _SLOTS / 1_000_000, UTC)


class SearchIndex:
    """The search index in one device store. Writes are idempotent: indexing a
    message again with the same text changes nothing."""

    def __init__(self, store: DeviceStore) -> None:
        self._store = store
        self._db = store.connection
        # Conversation and sender ids are few and never change their number.
        self._name_ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self.unavailable_reason: str | None = None
        try:
            for statement in _TABLES:
                self._db.execute(statement)
        except sqlite3.OperationalError as error:
            if "fts5" not in str(error).lower():
                raise
            self.unavailable_reason = (
                f"this Python's SQLite ({sqlite3.sqlite_version}) was built without FTS5, "
                "which the search index needs; use a Python whose sqlite3 module has it"
            )
            log.warning("search index disabled: %s", self.unavailable_reason)
            return
        if store.get_setting(_VERSION_SETTING) != NORMALISER_VERSION:
            self.rebuild()

    @property
    def available(self) -> bool:
        """Whether SQLite has FTS5; without it, indexing does nothing and
        searching raises :class:`SearchUnavailableError`."""
        return self.unavailable_reason is None

    def _require(self) -> None:
        if self.unavailable_reason is not None:
            raise SearchUnavailableError(self.unavailable_reason)

    # -- writing ----------------------------------------------------------------

    def index(self, message: IndexedMessage) -> bool:
        """Indexes the message, or its new text; returns whether anything changed."""
        if not self.available:
            return False
        stored = self._stored(message_key(message.message_id))
        # Read again (history, a replayed stream): no write lock, no commit.
        if (
            stored is not None
            and stored.text == message.text
            and self._name(stored.conversation) == message.conversation_id
        ):
            return False
        with self._writing():
            return self._put(message)

    def remove(self, message_ids: Iterable[str]) -> int:
        """Takes messages out of the index (deleted ones); returns how many were in it."""
        if not self.available:
            return 0
        keys = [message_key(message_id) for message_id in message_ids]
        if not any(self._stored(key) is not None for key in keys):
            return 0
        with self._writing():
            return sum(self._remove(key) for key in keys)

    def erase_conversation(self, conversation_id: str) -> int:
        """Takes every message of a conversation out of the index (its history
        was erased on this device); returns how many. A later backfill does not
        bring them back: the conversation's checkpoint stays."""
        if not self.available:
            return 0
        conversation = self._name_id(conversation_id, create=False)
        with self._writing():
            rows = self._db.execute(
                "SELECT message_key FROM search_docs WHERE conversation = ?", (conversation,)
            ).fetchall()
            return sum(self._remove(row[0]) for row in rows)

    def record_backfill(
        self,
        conversation_id: str,
        messages: Sequence[IndexedMessage],
        *,
        listed: Collection[str],
        after_seq: int,
        through_seq: int,
    ) -> int:
        """One step of a backfill, in one transaction: indexes ``messages``, drops
        indexed messages of the seqs after ``after_seq`` up to ``through_seq``
        that the history no longer ``listed`` (deleted since), and moves the
        conversation's checkpoint to ``through_seq``. Returns how many messages
        were written."""
        self._require()
        with self._writing():
            written = sum(self._put(message) for message in messages)
            conversation = self._name_id(conversation_id, create=False)
            rows = self._db.execute(
                "SELECT message_key FROM search_docs WHERE conversation = ?"
                " AND seq > ? AND seq <= ?",
                (conversation, after_seq, through_seq),
            ).fetchall()
            kept = {message_key(message_id) for message_id in listed}
            for (key,) in rows:
                if key not in kept:
                    self._remove(key)
            self._db.execute(
                "INSERT INTO search_backfill (conversation_id, done_seq) VALUES (?, ?)"
                " ON CONFLICT (conversation_id) DO UPDATE SET done_seq = excluded.done_seq",
                (conversation_id, through_seq),
            )
        return written

    def backfilled_through(self, conversation_id: str) -> int:
        """The seq up to which a backfill has walked this conversation (0: not yet)."""
        if not self.available:
            return 0
        row = self._db.execute(
            "SELECT done_seq FROM search_backfill WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _name_id(self, name: str, *, create: bool = True) -> int:
        """The number standing for a conversation or sender id (-1: none yet)."""
        known = self._name_ids.get(name)
        if known is not None:
            return known
        row = self._db.execute(
            "SELECT name_id FROM search_names WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            if not create:
                return -1
            cursor = self._db.execute("INSERT INTO search_names (name) VALUES (?)", (name,))
            assert cursor.lastrowid is not None
            row = (cursor.lastrowid,)
        self._name_ids[name] = int(row[0])
        return int(row[0])

    def _name(self, name_id: int) -> str:
        known = self._names.get(name_id)
        if known is None:
            row = self._db.execute(
                "SELECT name FROM search_names WHERE name_id = ?", (name_id,)
            ).fetchone()
            known = self._names[name_id] = str(row[0])
        return known

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            with self._store.transaction():
                yield
        except BaseException:
            # A rolled-back write may have numbered new names: forget them.
            self._name_ids.clear()
            self._names.clear()
            raise

    def _stored(self, key: bytes | str) -> _Stored | None:
        row = self._db.execute(
            "SELECT doc_id, conversation, text FROM search_docs WHERE message_key = ?", (key,)
        ).fetchone()
        return None if row is None else _Stored(int(row[0]), int(row[1]), str(row[2]))

    def _put(self, message: IndexedMessage) -> bool:
        key = message_key(message.message_id)
        conversation = self._name_id(message.conversation_id)
        stored = self._stored(key)
        if stored is not None:
            if stored.text == message.text and stored.conversation == conversation:
                return False
            doc_id = stored.doc_id
            self._fts("delete", doc_id, self._name(stored.conversation), stored.text)
            self._db.execute(
                "UPDATE search_docs SET conversation = ?, seq = ?, text = ? WHERE doc_id = ?",
                (conversation, message.seq, message.text, doc_id),
            )
        else:
            doc_id = self._free_doc_id(message.sent_at)
            self._db.execute(
                "INSERT INTO search_docs (doc_id, message_key, conversation, seq,"
                " sender_account, sender_device, text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    doc_id,
                    key,
                    conversation,
                    message.seq,
                    self._name_id(message.sender_account_id),
                    self._name_id(message.sender_device_id),
                    message.text,
                ),
            )
        self._fts("insert", doc_id, message.conversation_id, message.text)
        return True

    def _remove(self, key: bytes | str) -> bool:
        stored = self._stored(key)
        if stored is None:
            return False
        self._fts("delete", stored.doc_id, self._name(stored.conversation), stored.text)
        self._db.execute("DELETE FROM search_docs WHERE doc_id = ?", (stored.doc_id,))
        return True

    def _fts(self, command: str, doc_id: int, conversation_id: str, text: str) -> None:
        values = (doc_id, fts_terms(text), scope_term(conversation_id))
        if command == "delete":
            self._db.execute(
                "INSERT INTO search_fts (search_fts, rowid, terms, scope)"
                " VALUES ('delete', ?, ?, ?)",
                values,
            )
        else:
            self._db.execute(
                "INSERT INTO search_fts (rowid, terms, scope) VALUES (?, ?, ?)", values
            )

    def _free_doc_id(self, sent_at: float) -> int:
        base = min(max(0, round(sent_at * 1_000_000)) * _SLOTS, _MAX_DOC_ID - _SLOTS)
        row = self._db.execute(
            "SELECT max(doc_id) FROM search_docs WHERE doc_id >= ? AND doc_id < ?",
            (base, base + _SLOTS),
        ).fetchone()
        if row[0] is None:
            return base
        if int(row[0]) + 1 < base + _SLOTS:
            return int(row[0]) + 1
        # Over a thousand messages in one microsecond: the first free id after.
        row = self._db.execute(
            "SELECT d.doc_id + 1 FROM search_docs AS d WHERE d.doc_id >= ? AND NOT EXISTS"
            " (SELECT 1 FROM search_docs AS e WHERE e.doc_id = d.doc_id + 1)"
            " ORDER BY d.doc_id LIMIT 1",
            (base,),
        ).fetchone()
        return int(row[0])

    def rebuild(self) -> int:
        """Indexes every stored message again under the current normaliser (done
        by itself when the normaliser changed); returns how many."""
        self._require()
        count = 0
        with self._writing():
            self._db.execute("INSERT INTO search_fts (search_fts) VALUES ('delete-all')")
            cursor = self._db.execute(
                "SELECT d.doc_id, n.name, d.text FROM search_docs AS d"
                " JOIN search_names AS n ON n.name_id = d.conversation"
            )
            while rows := cursor.fetchmany(_REBUILD_BATCH):
                for doc_id, conversation_id, text in rows:
                    self._fts("insert", int(doc_id), str(conversation_id), str(text))
                count += len(rows)
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_VERSION_SETTING, NORMALISER_VERSION),
            )
        return count

    # -- reading ----------------------------------------------------------------

    def document(self, message_id: str) -> IndexedMessage | None:
        """The indexed message with this id, as its newest text was indexed."""
        if not self.available:
            return None
        row = self._db.execute(
            "SELECT doc_id, conversation, seq, sender_account, sender_device, text"
            " FROM search_docs WHERE message_key = ?",
            (message_key(message_id),),
        ).fetchone()
        if row is None:
            return None
        return IndexedMessage(
            conversation_id=self._name(int(row[1])),
            message_id=message_id,
            seq=int(row[2]),
            sender_account_id=self._name(int(row[3])),
            sender_device_id=self._name(int(row[4])),
            sent_at=_sent_at(int(row[0])).timestamp(),
            text=str(row[5]),
        )

    def count(self) -> int:
        """How many messages the index holds."""
        if not self.available:
            return 0
        return int(self._db.execute("SELECT count(*) FROM search_docs").fetchone()[0])

    def search(
        self,
        query: str,
        *,
        conversation_id: str | None = None,
        page_size: int | None = DEFAULT_SEARCH_PAGE_SIZE,
        page_token: str | None = None,
        marks: tuple[str, str] = ("[", "]"),
    ) -> SearchPage:
        """Messages matching ``query`` (see :func:`parley_sdk.search_text.parse_query`),
        newest first, in pages of ``page_size`` (1-100; 0 or None: 20).

        Raises :class:`parley_sdk.search_text.QueryError` (a ``ValueError``) for a
        query without words, a negative page size, or a page token of another
        query; :class:`SearchUnavailableError` without FTS5.
        """
        self._require()
        size = clamp_page_size(page_size)
        parsed = parse_query(query)
        key = query_key(query, conversation_id)
        parameters: list[object] = [match_expression(parsed, conversation_id)]
        sql = "SELECT rowid FROM search_fts WHERE search_fts MATCH ?"
        if page_token:
            sql += " AND rowid < ?"
            parameters.append(decode_page_token(page_token, key))
        sql += " ORDER BY rowid DESC LIMIT ?"
        parameters.append(size + 1)
        doc_ids = [int(row[0]) for row in self._db.execute(sql, parameters)]
        more = len(doc_ids) > size
        doc_ids = doc_ids[:size]
        results = []
        for row in self._rows(doc_ids):
            doc_id, key_value, conversation, seq, account, device, text = row
            if conversation_id and self._name(conversation) != conversation_id:
                continue  # another conversation whose scope term collides
            spans = highlight_spans(text, parsed)
            results.append(
                SearchResult(
                    conversation_id=self._name(conversation),
                    message_id=message_id_of(key_value),
                    seq=seq,
                    sender_account_id=self._name(account),
                    sender_device_id=self._name(device),
                    sent_at=_sent_at(doc_id),
                    text=text,
                    snippet=snippet(text, spans, marks=marks),
                    highlights=tuple(spans),
                )
            )
        return SearchPage(tuple(results), encode_page_token(key, doc_ids[-1]) if more else "")

    def _rows(self, doc_ids: Sequence[int]) -> list[_Row]:
        if not doc_ids:
            return []
        placeholders = ", ".join("?" * len(doc_ids))
        rows = self._db.execute(
            f"SELECT doc_id, message_key, conversation, seq, sender_account, sender_device, text"  # noqa: S608
            f" FROM search_docs WHERE doc_id IN ({placeholders})",
            doc_ids,
        ).fetchall()
        by_id = {int(row[0]): _Row(*row) for row in rows}
        return [by_id[doc_id] for doc_id in doc_ids if doc_id in by_id]
