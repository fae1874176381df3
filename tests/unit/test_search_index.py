"""The device's FTS5 search index in its SQLite store: the language test vectors
through real FTS5 queries, newest-first paging, one conversation, edits,
deletes, erasure, backfill steps, a normaliser change, and SQLite without FTS5."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_sdk import (
    DeviceStore,
    IndexedMessage,
    QueryError,
    SearchIndex,
    SearchUnavailableError,
)

BASE = 1_700_000_000.0


@pytest.fixture
def index() -> Iterator[SearchIndex]:
    store = DeviceStore.open(":memory:")
    yield SearchIndex(store)
    store.close()


def message(
    number: int, text: str, *, conversation: str = "c1", sent_at: float | None = None
) -> IndexedMessage:
    return IndexedMessage(
        conversation_id=conversation,
        message_id=f"m{number}",
        seq=number,
        sender_account_id="alice",
        sender_device_id="a1",
        sent_at=BASE + number if sent_at is None else sent_at,
        text=text,
    )


def found(index: SearchIndex, query: str, **kwargs: Any) -> list[str]:
    return [r.message_id for r in index.search(query, **kwargs).results]


VECTORS = [
    "我明天去北京出差",  # m0: Chinese, no spaces
    "東京都に住んでいます",  # m1: Japanese
    "서울에서 만나요",  # m2: Korean
    "on a planté l'arbre près d'eau, qu'il pleuve",  # m3: French elision
    "Herr Müller kommt morgen",  # m4: umlaut
    "Frau Mueller und Herr muller",  # m5: the spellings without umlaut
    "un café crème",  # m6
    "pizza🍕tonight?",  # m7: emoji between words
    "hello there",  # m8
    "北方的京城",  # m9: 北 and 京, not next to each other
]


@pytest.fixture
def vectors(index: SearchIndex) -> SearchIndex:
    for number, text in enumerate(VECTORS):
        index.index(message(number, text))
    return index


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("北京", ["m0"]),  # a 2-character word inside an unspaced sentence
        ("東京", ["m1"]),
        ("天", ["m0"]),  # one Han character
        ("京", ["m9", "m1", "m0"]),
        ("서울에서", ["m2"]),  # a whole eojeol
        ("서울", ["m2"]),  # a 2-syllable word inside one
        ("울에", ["m2"]),
        ("arbre", ["m3"]),
        ("l'arbre", ["m3"]),
        ("larbre", ["m3"]),
        ("eau", ["m3"]),
        ("il", ["m3"]),
        ("muller", ["m5", "m4"]),
        ("Mueller", ["m5", "m4"]),
        ("Müller", ["m5", "m4"]),
        ("cafe", ["m6"]),
        ("CAFÉ", ["m6"]),
        ("creme", ["m6"]),
        ("pizza", ["m7"]),
        ("tonight", ["m7"]),
        ("hel*", ["m8"]),
        ("hello", ["m8"]),
        ("京出", ["m0"]),
        ("北京出差", ["m0"]),
    ],
)
def test_language_vectors(vectors: SearchIndex, query: str, expected: list[str]) -> None:
    assert found(vectors, query) == expected


@pytest.mark.parametrize("query", ["京城北", "北京城", "hel", "pizz", "arbres", "東京タワー"])
def test_no_false_matches(vectors: SearchIndex, query: str) -> None:
    assert found(vectors, query) == []


def test_words_are_anded_and_phrases_kept_in_order(vectors: SearchIndex) -> None:
    assert found(vectors, "herr morgen") == ["m4"]
    assert found(vectors, "herr tonight") == []
    assert found(vectors, '"herr muller"') == ["m5", "m4"]
    assert found(vectors, '"und herr"') == ["m5"]
    assert found(vectors, '"herr und"') == []


def test_results_carry_where_and_a_snippet(vectors: SearchIndex) -> None:
    [result] = vectors.search("北京").results
    assert (result.conversation_id, result.seq, result.sender_account_id) == ("c1", 0, "alice")
    assert result.sent_at.timestamp() == BASE
    assert result.text == VECTORS[0]
    assert result.snippet == "我明天去[北京]出差"
    assert result.highlights == ((4, 6),)
    [result] = vectors.search("mueller morgen", marks=("<b>", "</b>")).results[-1:]
    assert result.snippet == "Herr <b>Müller</b> kommt <b>morgen</b>"


def test_pages_are_newest_first_with_opaque_tokens(index: SearchIndex) -> None:
    for number in range(1, 26):
        index.index(message(number, f"ping number {number}"))
    first = index.search("ping", page_size=10)
    assert [r.seq for r in first.results] == list(range(25, 15, -1))
    second = index.search("ping", page_size=10, page_token=first.next_page_token)
    assert [r.seq for r in second.results] == list(range(15, 5, -1))
    third = index.search("ping", page_size=10, page_token=second.next_page_token)
    assert [r.seq for r in third.results] == [5, 4, 3, 2, 1]
    assert third.next_page_token == ""
    # A page that ends exactly at the last match has no token.
    assert index.search("ping", page_size=25).next_page_token == ""
    # Defaults and caps (AIP-158): 0 means 20, above 100 means 100.
    assert len(index.search("ping", page_size=0).results) == 20
    assert len(index.search("ping", page_size=1000).results) == 25


def test_page_tokens_belong_to_their_query(index: SearchIndex) -> None:
    for number in range(1, 4):
        index.index(message(number, "ping pong"))
    token = index.search("ping", page_size=1).next_page_token
    with pytest.raises(QueryError) as caught:
        index.search("pong", page_token=token)
    assert caught.value.field == "page_token"
    with pytest.raises(QueryError):
        index.search("ping", conversation_id="c2", page_token=token)
    for garbage in ("x", "!!!", "eyJrIjoxfQ"):
        with pytest.raises(QueryError):
            index.search("ping", page_token=garbage)
    with pytest.raises(QueryError) as caught:
        index.search("ping", page_size=-1)
    assert caught.value.field == "page_size"


def test_one_conversation(index: SearchIndex) -> None:
    for number in range(1, 41):
        conversation = "quiet" if number % 10 == 0 else "busy"
        index.index(message(number, f"lunch plans {number}", conversation=conversation))
    assert found(index, "lunch", conversation_id="quiet") == ["m40", "m30", "m20", "m10"]
    page = index.search("lunch", conversation_id="quiet", page_size=3)
    rest = index.search("lunch", conversation_id="quiet", page_token=page.next_page_token)
    assert [r.message_id for r in rest.results] == ["m10"]
    assert found(index, "lunch", conversation_id="nowhere") == []


def test_messages_sent_in_the_same_instant_all_keep_a_place(index: SearchIndex) -> None:
    for number in range(1, 1100):
        index.index(message(number, "same time", sent_at=BASE))
    index.index(message(2000, "same time", sent_at=BASE + 0.000001))
    assert index.count() == 1100
    seen = []
    token = ""
    for _ in range(20):
        page = index.search("same", page_size=100, page_token=token)
        seen += [r.message_id for r in page.results]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 1100


def test_an_edit_reindexes_in_place(index: SearchIndex) -> None:
    index.index(message(1, "see you at noon"))
    index.index(message(2, "later message"))
    assert index.index(message(1, "see you at noon")) is False  # same text: no write
    edited = message(1, "see you at seven", sent_at=BASE + 999)
    assert index.index(edited) is True
    assert found(index, "noon") == []
    assert found(index, "seven") == ["m1"]
    # The edit keeps the message's place (its send time), not the edit's.
    assert found(index, "se*") == ["m1"]
    index.index(message(3, "see the newest"))
    assert found(index, "see") == ["m3", "m1"]


def test_deletes_and_erasure_remove(index: SearchIndex) -> None:
    for number in range(1, 7):
        conversation = "gone" if number > 3 else "kept"
        index.index(message(number, f"secret plan {number}", conversation=conversation))
    assert index.remove(["m1", "missing"]) == 1
    assert found(index, "secret") == ["m6", "m5", "m4", "m3", "m2"]
    assert index.erase_conversation("gone") == 3
    assert found(index, "secret") == ["m3", "m2"]
    assert found(index, "plan", conversation_id="gone") == []
    assert index.count() == 2


def test_a_backfill_step_commits_with_its_checkpoint(index: SearchIndex) -> None:
    index.index(message(2, "deleted for me since"))
    index.index(message(3, "still there"))
    written = index.record_backfill(
        "c1",
        [message(1, "first"), message(3, "still there")],
        listed={"m1", "m3"},
        after_seq=0,
        through_seq=5,
    )
    assert written == 1  # m3 was already indexed with that text
    assert index.backfilled_through("c1") == 5
    assert found(index, "deleted") == []
    assert sorted(r.message_id for r in index.search("first").results) == ["m1"]
    assert index.backfilled_through("other") == 0


def test_the_index_lives_in_the_store_file(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    store = DeviceStore.open(path)
    SearchIndex(store).index(message(1, "persisted words"))
    store.close()
    store = DeviceStore.open(path)
    assert found(SearchIndex(store), "persisted") == ["m1"]
    store.close()


def test_a_new_normaliser_rebuilds_the_index(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    store = DeviceStore.open(path)
    index = SearchIndex(store)
    index.index(message(1, "Café Müller"))
    # Built by an older normaliser: its terms are not today's.
    store.set_setting("search.normaliser", "0/old")
    store.connection.execute("INSERT INTO search_fts (search_fts) VALUES ('delete-all')")
    store.connection.execute(
        "INSERT INTO search_fts (rowid, terms, scope) SELECT doc_id, 'CAFÉ', 'x' FROM search_docs"
    )
    store.close()
    store = DeviceStore.open(path)
    rebuilt = SearchIndex(store)
    assert found(rebuilt, "cafe") == ["m1"]
    assert found(rebuilt, "mueller") == ["m1"]
    rebuilt.remove(["m1"])
    assert found(rebuilt, "cafe") == []
    store.close()


class _NoFts5:
    """A connection whose SQLite was built without FTS5."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> Any:
        if "USING fts5" in sql:
            raise sqlite3.OperationalError("no such module: fts5")
        return self.real.execute(sql, *args)


def test_without_fts5_indexing_is_off_and_search_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = DeviceStore.open(":memory:")
    monkeypatch.setattr(DeviceStore, "connection", property(lambda s: _NoFts5(s._db)))
    index = SearchIndex(store)
    assert not index.available
    assert index.index(message(1, "words")) is False
    assert index.remove(["m1"]) == 0
    with pytest.raises(SearchUnavailableError, match="without FTS5"):
        index.search("words")
    store.close()


def test_ids_come_back_as_they_were_given(index: SearchIndex) -> None:
    canonical, upper, other = str(uuid.uuid4()), str(uuid.uuid4()).upper(), "msg-7"
    conversation, account = str(uuid.uuid4()), str(uuid.uuid4())
    for number, message_id in enumerate((canonical, upper, other), start=1):
        index.index(
            IndexedMessage(conversation, message_id, number, account, "d1", BASE + number, "hi")
        )
    results = index.search("hi", conversation_id=conversation).results
    assert [r.message_id for r in results] == [other, upper, canonical]
    assert {(r.conversation_id, r.sender_account_id) for r in results} == {(conversation, account)}
    # A canonical UUID takes 16 bytes; other spellings stay text (and never collide).
    kinds = index._db.execute("SELECT typeof(message_key) FROM search_docs ORDER BY seq")
    assert [row[0] for row in kinds] == ["blob", "text", "text"]
    assert index.remove([canonical.upper()]) == 0
    assert index.remove([canonical]) == 1


def test_a_failed_write_leaves_no_half_message(
    index: SearchIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SearchIndex._fts

    def failing(self: SearchIndex, command: str, *args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SearchIndex, "_fts", failing)
    with pytest.raises(sqlite3.OperationalError):
        index.index(message(1, "lost", conversation="new-conversation"))
    monkeypatch.setattr(SearchIndex, "_fts", real)
    assert index.count() == 0
    index.index(message(2, "kept", conversation="new-conversation"))
    [result] = index.search("kept").results
    assert result.conversation_id == "new-conversation"
