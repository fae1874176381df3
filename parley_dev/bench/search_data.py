"""The search scenario's dataset and queries, made with the SDK's own code,
and how they are loaded: SendMessage, IndexMessage, and the bulk write into
svc_search's collections in the shape IndexMessage writes."""

from __future__ import annotations

import collections
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc as sgrpc
from parley_dev.bench import search_local
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS
from parley_dev.bench.population import User, bounded_gather, request_id
from parley_sdk._blind_query import build_requests, pad_request, plan_query, real_group
from parley_sdk._blind_tokens import (
    BlindSettings,
    EpochKey,
    message_tokens,
    term_token,
    token_bytes_for,
)
from parley_sdk.search_text import parse_query
from svc_search.storage.postings import BUCKET_MS, bucket_id

SEED = 18
PAGE_SIZE = 20
SEND_CONCURRENCY = 16
INDEX_CONCURRENCY = 8
# Documents per insert_many or bulk_write of the bulk load.
BULK_DOCS = 500
# The messages' send times are spread evenly over this span before they are
# indexed, ending now: a year of one busy conversation, not a burst of minutes
# (svc_search keeps postings in hour buckets and walks them back from now).
SPAN_DAYS = 365
DAY_MS = 86_400_000
# Send times rewritten per bulk_write.
BACKDATE_BATCH = 500
# Different requests (decoys and order drawn anew, as the SDK does) per query.
REQUESTS_PER_QUERY = 16
QUERIES: dict[str, tuple[str, ...]] = {
    "common_word": ("the", "lunch", "tomorrow", "merci", "danke", "gracias"),
    "rare_word": (),  # words of the corpus' long tail the loaded messages hold
    "two_words": ("see you", "dinner tonight", "coffee morning", "merci demain"),
    "cjk_word": ("北京", "出差", "会议", "서울에서"),
    "no_match": ("xylophonic", "quetzalcoatl", "zzyzx"),
}
BUCKET_KEYS = {"_id", "c", "k", "b", "e"}
TOKEN_KEYS = {"_id", "c", "k", "t", "n", "lo", "hi"}
RECORD_KEYS = {"_id", "c", "sender", "k", "n", "t", "at", "s", "requests"}


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    sender: int
    at_ms: int
    seq: int
    tokens: tuple[bytes, ...]


@dataclass
class Dataset:
    key: EpochKey
    texts: list[str]
    tokens: list[list[bytes]]
    # Postings per token, to pick a query's rarest real token for the bare read.
    counts: collections.Counter[bytes] = field(default_factory=collections.Counter)
    rare_words: list[str] = field(default_factory=list)


def make_dataset(postings: int, conversation_id: str, settings: BlindSettings) -> Dataset:
    """Seeded texts and their tokens (the SDK's) until they hold ``postings`` postings."""
    corpus = search_local.Corpus.seeded(SEED)
    rng = random.Random(SEED)
    rare = set(corpus.rare)
    # Sized as the SDK sizes an epoch: by the messages it expects.
    expected = max(1, postings // 16)
    key = EpochKey(conversation_id, 1, rng.randbytes(32), token_bytes_for(expected, settings))
    data = Dataset(key=key, texts=[], tokens=[])
    total = 0
    seen_rare: dict[str, None] = {}
    for message in corpus.messages(10 * postings):
        if total >= postings:
            break
        tokens = message_tokens(key, message.text, settings, rng)[: postings - total]
        data.texts.append(message.text)
        data.tokens.append(tokens)
        data.counts.update(tokens)
        total += len(tokens)
        for word in message.text.lower().split():
            if word in rare:
                seen_rare.setdefault(word, None)
    data.rare_words = random.Random(SEED).sample(list(seen_rare), min(8, len(seen_rare)))
    return data


@dataclass(frozen=True, slots=True)
class Query:
    kind: str
    request: spb.SearchRequest
    # The token the bare read pages through: the query's rarest real token.
    token: bytes
    # A one-word query whose word the dataset holds: its page cannot be empty.
    must_hit: bool = False


def make_queries(data: Dataset, settings: BlindSettings) -> list[Query]:
    """Every query kind's requests as the SDK builds them, interleaved by kind."""
    rng = random.Random(SEED + 1)
    by_kind: dict[str, list[Query]] = {}
    for kind, texts in QUERIES.items():
        for text in texts or tuple(data.rare_words):
            plan = plan_query(parse_query(text), settings.tokens_per_group)
            tokens = [term_token(data.key, t) for t in plan[0]]
            rarest = min(tokens, key=lambda t: data.counts.get(t, 0))
            must_hit = len(plan) == 1 and len(tokens) == 1 and data.counts.get(rarest, 0) > 0
            for _ in range(REQUESTS_PER_QUERY):
                real = [real_group(data.key, terms, settings, rng) for terms in plan]
                # A plan of more than groups_per_query sets would need more requests: the first.
                request = build_requests(real, [data.key], settings, rng)[0]
                request.page_size = PAGE_SIZE
                by_kind.setdefault(kind, []).append(
                    Query(kind, pad_request(request), rarest, must_hit)
                )
    return [q for group in itertools.zip_longest(*by_kind.values()) for q in group if q]


# -- loading ------------------------------------------------------------------------------


async def send_all(
    messages: mgrpc.MessageServiceAsyncStub,
    users: Sequence[User],
    conversation_id: str,
    data: Dataset,
) -> list[Sent]:
    """Every text through SendMessage (the members alternate)."""

    async def one(index: int) -> Sent:
        sender = index % 2
        reply = await messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=request_id(),
                conversation_id=conversation_id,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=data.texts[index].encode(),
            ),
            metadata=users[sender].metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        m = reply.message
        at_ms = m.create_time.seconds * 1000 + m.create_time.nanos // 1_000_000
        return Sent(m.message_id, sender, at_ms, m.seq, tuple(data.tokens[index]))

    return await bounded_gather(len(data.texts), one, limit=SEND_CONCURRENCY)


def spread_times(count: int, *, now_ms: int) -> list[int]:
    """Send times (ms) of ``count`` messages in seq order, evenly over SPAN_DAYS to ``now_ms``."""
    step = SPAN_DAYS * DAY_MS // max(1, count)
    return [now_ms - (count - 1 - i) * step for i in range(count)]


async def backdate(db: Any, sent: Sequence[Sent], *, now_ms: int) -> list[Sent]:
    """Rewrite the messages' send times in svc_message's log (as
    parley_dev's history bench does) to a year's spread; ``sent`` with them."""
    ordered = sorted(sent, key=lambda m: m.seq)
    times = spread_times(len(ordered), now_ms=now_ms)
    moved = [replace(m, at_ms=at) for m, at in zip(ordered, times, strict=True)]
    for start in range(0, len(moved), BACKDATE_BATCH):
        batch = moved[start : start + BACKDATE_BATCH]
        await db["messages"].bulk_write(
            [
                UpdateOne(
                    {"_id": m.message_id},
                    {"$set": {"created_at": datetime.fromtimestamp(m.at_ms / 1000, UTC)}},
                )
                for m in batch
            ],
            ordered=False,
        )
    return moved


async def index_by_rpc(
    search: sgrpc.SearchServiceAsyncStub,
    users: Sequence[User],
    data: Dataset,
    sent: Sequence[Sent],
) -> tuple[list[int], float]:
    """IndexMessage for each of ``sent``, as its sender's SDK does; latencies (ns), seconds."""
    latencies: list[int] = []

    async def one(index: int) -> None:
        message = sent[index]
        began = time.perf_counter_ns()
        await search.IndexMessage(
            spb.IndexMessageRequest(
                request_id=request_id(),
                conversation_id=data.key.conversation_id,
                message_id=message.message_id,
                key_id=data.key.key_id,
                tokens=list(message.tokens),
            ),
            metadata=users[message.sender].metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        latencies.append(time.perf_counter_ns() - began)

    began = time.perf_counter()
    await bounded_gather(len(sent), one, limit=INDEX_CONCURRENCY)
    return latencies, time.perf_counter() - began


def bucket_key(conversation_id: str, key_id: bytes, token: bytes, at_ms: int) -> dict[str, Any]:
    return {"c": conversation_id, "k": key_id, "b": bucket_id(token, at_ms // BUCKET_MS)}


def entry(message: Sent) -> dict[str, Any]:
    return {"m": message.message_id, "a": message.at_ms, "s": message.seq}


def record_doc(
    conversation_id: str, key_id: bytes, message: Sent, sender_account_id: str
) -> dict[str, Any]:
    return {
        "_id": message.message_id,
        "c": conversation_id,
        "sender": sender_account_id,
        "k": key_id,
        "n": len(message.tokens),
        "t": list(message.tokens),
        "at": message.at_ms,
        "s": message.seq,
        "requests": [request_id()],
    }


async def check_shape(db: Any, conversation_id: str, key_id: bytes, message: Sent) -> None:
    """The bulk writes what IndexMessage wrote for ``message``, or the run stops."""
    token = message.tokens[0]
    bucket = await db["search_buckets"].find_one(
        bucket_key(conversation_id, key_id, token, message.at_ms)
    )
    stats = await db["search_tokens"].find_one({"c": conversation_id, "k": key_id, "t": token})
    record = await db["search_messages"].find_one({"_id": message.message_id})
    if bucket is None or stats is None or record is None:
        raise RuntimeError(f"IndexMessage left no postings for {message.message_id}")
    if set(bucket) != BUCKET_KEYS or set(stats) != TOKEN_KEYS or set(record) != RECORD_KEYS:
        raise RuntimeError(
            f"svc_search's documents changed shape ({sorted(bucket)}, {sorted(stats)}, "
            f"{sorted(record)}): update the search bench's bulk load"
        )
    mine = entry(message)
    if mine not in bucket["e"]:
        raise RuntimeError(f"bulk entry {mine!r} is not among svc_search's {bucket['e'][:3]!r}")


async def bulk_load(
    db: Any, users: Sequence[User], data: Dataset, by_rpc: Sequence[Sent], sent: Sequence[Sent]
) -> tuple[int, float]:
    """Postings and records of ``sent`` straight into svc_search's
    collections, gathered into their hour buckets first: new buckets and
    token counts are inserted, those ``by_rpc`` (indexed through
    IndexMessage) already made are updated as IndexMessage would."""
    c, k = data.key.conversation_id, data.key.key_id
    began = time.perf_counter()
    buckets: dict[tuple[bytes, int], list[dict[str, Any]]] = collections.defaultdict(list)
    counts: dict[bytes, list[int]] = {}
    for message in sent:
        w = message.at_ms // BUCKET_MS
        for t in message.tokens:
            buckets[(t, w)].append(entry(message))
            n_lo_hi = counts.setdefault(t, [0, w, w])
            n_lo_hi[0] += 1
            n_lo_hi[1], n_lo_hi[2] = min(n_lo_hi[1], w), max(n_lo_hi[2], w)
    made = {(t, m.at_ms // BUCKET_MS) for m in by_rpc for t in m.tokens}
    counted = {t for m in by_rpc for t in m.tokens}
    fresh = [
        {"c": c, "k": k, "b": bucket_id(t, w), "e": e}
        for (t, w), e in buckets.items()
        if (t, w) not in made
    ]
    for start in range(0, len(fresh), BULK_DOCS):
        await db["search_buckets"].insert_many(fresh[start : start + BULK_DOCS], ordered=False)
    grown = [
        UpdateOne(
            {"c": c, "k": k, "b": bucket_id(t, w)}, {"$push": {"e": {"$each": e}}}, upsert=True
        )
        for (t, w), e in buckets.items()
        if (t, w) in made
    ]
    tokens = [
        {"c": c, "k": k, "t": t, "n": n, "lo": lo, "hi": hi}
        for t, (n, lo, hi) in counts.items()
        if t not in counted
    ]
    for start in range(0, len(tokens), BULK_DOCS):
        await db["search_tokens"].insert_many(tokens[start : start + BULK_DOCS], ordered=False)
    grown_tokens = [
        UpdateOne(
            {"c": c, "k": k, "t": t},
            {"$inc": {"n": n}, "$min": {"lo": lo}, "$max": {"hi": hi}},
            upsert=True,
        )
        for t, (n, lo, hi) in counts.items()
        if t in counted
    ]
    for collection, updates in (("search_buckets", grown), ("search_tokens", grown_tokens)):
        for start in range(0, len(updates), BULK_DOCS):
            await db[collection].bulk_write(updates[start : start + BULK_DOCS], ordered=False)
    for start in range(0, len(sent), BULK_DOCS):
        await db["search_messages"].insert_many(
            [
                record_doc(c, k, m, users[m.sender].account_id)
                for m in sent[start : start + BULK_DOCS]
            ],
            ordered=False,
        )
    return sum(len(m.tokens) for m in sent), time.perf_counter() - began
