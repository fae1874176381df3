"""svc_search's query logic with its store and svc_message played in memory
(pure logic: the real stack's behaviour is tests/integration/test_search.py).

Pages walk back through hour buckets in growing stretches over months of postings
and return every AND hit once, newest first, whatever the page size; page
boundaries between groups hold; padding lands exactly on a size bucket."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from parley.search.v1 import search_pb2 as spb
from parley_core.limits import InProcessBuckets, Limiter, LimitName, Rate
from svc_search.domain.pages import padding_length
from svc_search.domain.queries import SearchHandler
from svc_search.domain.sweeper import Sweeper
from svc_search.model import (
    Carried,
    Check,
    ConversationState,
    Group,
    MessageState,
    Position,
    Posting,
    SearchStats,
    TokenStats,
)
from svc_search.storage.postings import hour_of

NOW_MS = 1_800_000_000_000
DAY_MS = 86_400_000
KEY = b"k" * 16


class Store:
    """Postings as (conversation, key, token) -> [Posting], read as the real
    store's hour buckets are."""

    def __init__(self) -> None:
        self.postings: dict[tuple[str, bytes, bytes], list[Posting]] = {}
        self.reads = 0
        self.record_reads = 0
        # Postings (entries of buckets) the handler was given, all reads together.
        self.returned = 0

    def add(self, conversation: str, message_id: str, at_ms: int, tokens: Sequence[bytes]) -> None:
        for token in tokens:
            self.postings.setdefault((conversation, KEY, token), []).append(
                Posting(message_id=message_id, at_ms=at_ms, seq=at_ms // 1000)
            )

    async def token_stats(
        self, conversation_id: str, key_id: bytes, tokens: Sequence[bytes]
    ) -> dict[bytes, TokenStats]:
        self.reads += 1
        found = {}
        for t in tokens:
            postings = self.postings.get((conversation_id, key_id, t))
            if postings:
                hours = [hour_of(p.at_ms) for p in postings]
                found[t] = TokenStats(len(postings), min(hours), max(hours))
        return found

    async def hours(
        self, conversation_id: str, key_id: bytes, token: bytes, *, lo: int, hi: int
    ) -> list[Posting]:
        self.reads += 1
        found = [
            p
            for p in self.postings.get((conversation_id, key_id, token), [])
            if lo <= hour_of(p.at_ms) <= hi
        ]
        self.returned += len(found)
        return found

    async def carried(self, message_ids: Sequence[str]) -> dict[str, Carried]:
        self.reads += 1
        self.record_reads += 1
        wanted = set(message_ids)
        tokens: dict[str, set[bytes]] = {}
        where: dict[str, tuple[str, bytes]] = {}
        for (c, k, t), postings in self.postings.items():
            for p in postings:
                if p.message_id in wanted:
                    tokens.setdefault(p.message_id, set()).add(t)
                    where[p.message_id] = (c, k)
        self.returned += len(tokens)
        return {m: Carried(*where[m], frozenset(ts)) for m, ts in tokens.items()}

    async def carriers(
        self, conversation_id: str, key_id: bytes, tokens: Sequence[bytes], hours: Sequence[int]
    ) -> dict[bytes, set[str]]:
        self.reads += 1
        wanted = set(hours)
        found = {
            t: {
                p.message_id
                for p in self.postings.get((conversation_id, key_id, t), [])
                if hour_of(p.at_ms) in wanted
            }
            for t in tokens
        }
        self.returned += sum(len(m) for m in found.values())
        return found

    async def drop_conversation(self, conversation_id: str) -> int:
        return 0

    async def remove_messages(self, message_ids: Sequence[str]) -> int:
        return 0


class Messages:
    """Every message readable, every conversation searchable but ``hidden``."""

    def __init__(self, store: Store, hidden: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self._store = store
        self.hidden = hidden
        self.calls = 0

    async def check(
        self, account_id: str, conversation_ids: Sequence[str], message_ids: Sequence[str]
    ) -> Check:
        self.calls += 1
        where = {
            p.message_id: (c, p)
            for (c, _, _), postings in self._store.postings.items()
            for p in postings
        }
        return Check(
            conversations={
                c: ConversationState(c, server_search=True, searchable=c not in self.hidden)
                for c in conversation_ids
            },
            messages={
                m: MessageState(
                    m, where[m][0], "alice", where[m][1].seq, where[m][1].at_ms, False, True
                )
                for m in message_ids
            },
        )


def handler(store: Store, messages: Messages) -> SearchHandler:
    limiter = Limiter(
        InProcessBuckets(), {n: Rate(10**9, 10**9) for n in LimitName}, names=list(LimitName)
    )
    return SearchHandler(store, messages, limiter, SearchStats())  # type: ignore[arg-type]


async def every_hit(
    search: SearchHandler, groups: list[Group], page_size: int
) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    start: Position | None = None
    for _ in range(10_000):
        page = await search.search(
            account_id="alice", groups=groups, start=start, page_size=page_size, now=NOW_MS / 1000
        )
        found += [(h.group_index, h.message_id) for h in page.hits]
        if page.next_position is None:
            return found
        start = page.next_position
    raise AssertionError("no end")


@pytest.fixture
def months() -> tuple[Store, dict[str, set[bytes]], dict[str, int]]:
    """300 messages over a year in two conversations, with bursts."""
    rng = random.Random(5)
    store = Store()
    words = [bytes([i]) * 8 for i in range(12)]
    tokens: dict[str, set[bytes]] = {}
    times: dict[str, int] = {}
    for i in range(300):
        at = NOW_MS - rng.choice([rng.randrange(60_000), rng.randrange(365 * DAY_MS)])
        conversation = "c1" if i % 3 else "c2"
        message_id = f"m{i:04d}"
        chosen = set(rng.sample(words, 3)) | ({words[0]} if i % 2 else set())
        store.add(conversation, message_id, at, sorted(chosen))
        tokens[message_id], times[message_id] = chosen, at
    return store, tokens, times


@pytest.mark.parametrize("page_size", [1, 3, 20, 100])
async def test_pages_give_every_and_hit_once_newest_first(
    months: tuple[Store, dict[str, set[bytes]], dict[str, int]], page_size: int
) -> None:
    store, tokens, times = months
    w0, w1, w2 = bytes([0]) * 8, bytes([1]) * 8, bytes([2]) * 8
    groups = [
        Group("c1", KEY, (w0, w1)),
        Group("c2", KEY, (w2,)),
        Group("c1", KEY, (b"decoy123",)),
        Group("c9", KEY, (w0,)),
    ]
    messages = Messages(store)
    found = await every_hit(handler(store, messages), groups, page_size)

    def expected_for(index: int, conversation: str, wanted: set[bytes]) -> list[tuple[int, str]]:
        in_conversation = {
            p.message_id
            for (c, _, _), ps in store.postings.items()
            if c == conversation
            for p in ps
        }
        return [(index, m) for m in in_conversation if wanted <= tokens[m]]

    expected = expected_for(0, "c1", {w0, w1}) + expected_for(1, "c2", {w2})
    expected.sort(key=lambda hit: (times[hit[1]], hit[1], -hit[0]), reverse=True)
    assert len(expected) > 40
    assert found == expected
    # One svc_message call per page.
    assert (
        messages.calls == -(-len(expected) // page_size)
        or messages.calls >= len(expected) // page_size
    )


async def test_a_group_the_caller_may_not_search_finds_nothing_and_shapes_no_page(
    months: tuple[Store, dict[str, set[bytes]], dict[str, int]],
) -> None:
    store, _, _ = months
    w0 = bytes([0]) * 8
    open_groups = [Group("c1", KEY, (w0,))] + [Group("c9", KEY, (b"x" * 8,))] * 3
    hidden_groups = [Group("c1", KEY, (w0,)), Group("c2", KEY, (w0,))] + [
        Group("c9", KEY, (b"x" * 8,))
    ] * 2
    visible = await every_hit(handler(store, Messages(store)), open_groups, 7)
    shaped = await every_hit(handler(store, Messages(store, hidden={"c2"})), hidden_groups, 7)
    assert visible == shaped


@pytest.mark.parametrize("size", [0, 1, 100, 1000, 1021, 1022, 1023, 1024, 1500, 5000, 16381])
def test_padding_reaches_a_power_of_two_exactly(size: int) -> None:
    reply = spb.SearchResponse(next_page_token="x" * max(0, size - 2) if size else "")
    base = reply.ByteSize()
    reply.padding = b"\x00" * padding_length(base, smallest=1024)
    total = reply.ByteSize()
    assert total >= 1024 and total & (total - 1) == 0, (base, total)
    assert total < max(2048, 2 * (base + 8))


class SweptStore:
    def __init__(self, conversations: list[str]) -> None:
        self.conversations = sorted(conversations)
        self.dropped: list[str] = []

    async def conversations_after(self, after: str, *, limit: int) -> list[str]:
        return [c for c in self.conversations if c > after][:limit]

    async def drop_conversation(self, conversation_id: str) -> int:
        self.dropped.append(conversation_id)
        return 1


class Settings:
    """svc_message's answer about conversations: on, off, or gone."""

    def __init__(self, on: set[str], off: set[str]) -> None:
        self.on, self.off = on, off
        self.asked: list[list[str]] = []

    async def check(
        self, account_id: str, conversation_ids: Sequence[str], message_ids: Sequence[str]
    ) -> Check:
        assert account_id == "" and not message_ids
        self.asked.append(list(conversation_ids))
        return Check(
            conversations={
                c: ConversationState(c, server_search=c in self.on, searchable=False)
                for c in conversation_ids
                if c in self.on | self.off
            }
        )


async def test_the_sweeper_drops_conversations_turned_off_or_gone() -> None:
    names = [f"c{i:02d}" for i in range(10)]
    on, off = set(names[::2]), {"c01", "c03"}
    store = SweptStore(names)
    settings = Settings(on, off)
    sweeper = Sweeper(store, settings, SearchStats(), interval_seconds=1, batch=3)  # type: ignore[arg-type]
    assert await sweeper.sweep() == 5
    assert store.dropped == sorted(set(names) - on)
    assert [len(batch) for batch in settings.asked] == [3, 3, 3, 1]


async def test_a_burst_in_one_hour_pages_through_every_message() -> None:
    store = Store()
    word = b"burst123"
    # 5,000 messages in the last five seconds: one bucket holds them all.
    for i in range(5000):
        store.add("c1", f"b{i:05d}", NOW_MS - 5000 + i, [word])
    groups = [Group("c1", KEY, (word,))] + [Group("c9", KEY, (b"x" * 8,))] * 3
    found = await every_hit(handler(store, Messages(store)), groups, 100)
    assert [m for _, m in found] == [f"b{i:05d}" for i in reversed(range(5000))]


async def test_a_filler_on_every_message_costs_a_page_of_postings_not_its_list() -> None:
    store = Store()
    word, filler = b"rare1234", b"filler12"
    # 6,000 messages over a year all carry the filler; one in 200 the word.
    every = 365 * DAY_MS // 6000
    for i in range(6000):
        store.add(
            "c1", f"f{i:05d}", NOW_MS - i * every, [filler] + ([word] if i % 200 == 0 else [])
        )
    groups = [Group("c1", KEY, (filler, word))] + [Group("c9", KEY, (b"x" * 8,))] * 3
    search = handler(store, Messages(store))
    page = await search.search(
        account_id="alice", groups=groups, start=None, page_size=5, now=NOW_MS / 1000
    )
    assert [h.message_id for h in page.hits] == [f"f{i:05d}" for i in range(0, 1000, 200)]
    # The whole filler list is 6,000 postings; the walk reads its buckets
    # only at the hours of the word's candidates.
    assert store.returned < 600
    assert store.reads <= 4 + 3
    # Every page after it is as cheap, and together they give each hit once.
    store.returned = store.reads = 0
    found = await every_hit(search, groups, 5)
    assert [m for _, m in found] == [f"f{i:05d}" for i in range(0, 6000, 200)]
    assert store.returned < 6 * 600
    # Decoys (a token never posted) cost one read of counts a page each.
    assert store.reads < 6 * 8


async def test_a_group_with_a_token_never_posted_reads_its_counts_only() -> None:
    store = Store()
    store.add("c1", "m1", NOW_MS - 1000, [b"word1234"])
    groups = [Group("c1", KEY, (b"word1234", b"absent12"))] * 4
    page = await handler(store, Messages(store)).search(
        account_id="alice", groups=groups, start=None, page_size=5, now=NOW_MS / 1000
    )
    assert page.hits == () and page.next_position is None
    # One read of counts for the four groups under one (conversation, key).
    assert (store.reads, store.returned) == (1, 0)


async def test_candidates_of_one_hour_are_checked_in_the_other_tokens_buckets() -> None:
    store = Store()
    a, b = b"aaaa1234", b"bbbb1234"
    # 500 messages in one hour: one bucket of each token holds every candidate.
    for i in range(500):
        store.add("c1", f"h{i:03d}", NOW_MS - 10 * i, [a] + ([b] if i % 2 == 0 else []))
    groups = [Group("c1", KEY, (a, b))] + [Group("c9", KEY, (b"x" * 8,))] * 3
    found = await every_hit(handler(store, Messages(store)), groups, 30)
    assert [m for _, m in found] == [f"h{i:03d}" for i in range(0, 500, 2)]
    assert store.record_reads == 0
