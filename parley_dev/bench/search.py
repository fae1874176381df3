"""The ``search`` scenario: blind-index queries through svc_search beside a
bare indexed MongoDB read of the same postings, in one run; then the SDK's
on-device index.

1. **Baseline**: the bare gRPC unary echo (its own server process, before
   the stack), with the query callers and a padded response's size.
2. **Dataset** (seeded): two users share a direct conversation with server
   search on; the SDK's corpus (parley_dev.bench.search_local) gives its
   texts and the SDK's own code (``message_tokens``) their tokens under one
   epoch key, until they hold ``--search-postings`` postings. Every message
   is sent through SendMessage, so the hits a page names exist in
   svc_message and its page filter does its real work. The first
   ``search_indexed_by_rpc`` messages are indexed through IndexMessage (its
   rate and latency are figures); the rest are written in bulk straight into
   svc_search's collections, in the shape IndexMessage wrote (checked against
   those documents: a changed shape stops the run).
3. **Queries**, in turns (bare read, then svc_search, each after a warm-up,
   so a burst of other work on a shared machine falls on both alike), Q
   closed-loop callers:
   - search_query: Search with requests the SDK's code builds (the real
     group, decoys from the device's keys, padding), a page of 20;
   - bare_read: the postings of the same query's rarest real token, newest
     first, a page of 20, through pymongo on the index svc_search scans.
4. **Where the time goes**: svc_search's own handler time (its metrics)
   against what the client saw, and, one caller, the database steps a query
   takes: a page of one token, a capped count of a token every message
   carries (the fillers: every group counts its tokens first).
5. **On-device index** (after the stack stopped):
   :func:`parley_dev.bench.search_local.run` over the SDK's SQLite FTS5 index.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from pymongo import DESCENDING, AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc as sgrpc
from parley_dev.bench import procstat, search_local
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.load import (
    CALL_TIMEOUT_SECONDS,
    ERROR_PAUSE_SECONDS,
    NS,
    Hook,
    LoadResult,
    Window,
    error_name,
    sleep_until,
)
from parley_dev.bench.media import Steps, merged, merged_cpu
from parley_dev.bench.population import User, bounded_gather, pair_up, request_id, sign_up_users
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import (
    StackTargets,
    progress,
    run_unary_baseline,
    stack_targets,
)
from parley_dev.bench.search_report import (
    Components,
    Loaded,
    SearchMeasurements,
    build_search_report,
)
from parley_sdk._blind_query import build_requests, pad_request, plan_query, real_group
from parley_sdk._blind_tokens import (
    BlindSettings,
    EpochKey,
    filler_tokens,
    message_tokens,
    term_token,
    token_bytes_for,
)
from parley_sdk.search_text import parse_query

SEED = 18
PAGE_SIZE = 20
# The SDK's Search page: a padded response is at least this (svc_search's default bucket).
RESPONSE_BYTES = 1024
SEND_CONCURRENCY = 16
INDEX_CONCURRENCY = 8
# Messages per insert_many of the bulk load (about 20 postings each).
BULK_MESSAGES = 100
# Different requests (decoys and order drawn anew, as the SDK does) per query.
REQUESTS_PER_QUERY = 16
# One-caller samples of each database step in "where the time goes": up to
# COMPONENT_SAMPLES within COMPONENT_SECONDS, at least MIN_COMPONENT_SAMPLES.
COMPONENT_SAMPLES = 40
COMPONENT_SECONDS = 5.0
MIN_COMPONENT_SAMPLES = 3
# svc_search counts at most this many postings of a token (domain/queries.py).
COUNT_CAP = 10_000
ROUND_MARK = "#"
# Queries each side completes at least (over all turns), however slow the
# database, and how far past its share of the duration a turn may run for them.
MIN_SAMPLES = 100
MAX_STRETCH = 20.0
# A query over a slow database may take seconds: longer than the bench's usual call timeout.
QUERY_TIMEOUT_SECONDS = 60.0
QUERIES: dict[str, tuple[str, ...]] = {
    "common_word": ("the", "lunch", "tomorrow", "merci", "danke", "gracias"),
    "rare_word": (),  # words of the corpus' long tail the loaded messages hold
    "two_words": ("see you", "dinner tonight", "coffee morning", "merci demain"),
    "cjk_word": ("北京", "出差", "会议", "서울에서"),
    "no_match": ("xylophonic", "quetzalcoatl", "zzyzx"),
}
POSTING_KEYS = {"_id", "c", "k", "t", "at", "m", "s"}
RECORD_KEYS = {"_id", "c", "sender", "k", "n", "at", "s", "requests"}


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


def make_queries(data: Dataset, settings: BlindSettings) -> list[Query]:
    """Every query kind's requests as the SDK builds them, interleaved by kind."""
    rng = random.Random(SEED + 1)
    by_kind: dict[str, list[Query]] = {}
    for kind, texts in QUERIES.items():
        for text in texts or tuple(data.rare_words):
            plan = plan_query(parse_query(text), settings.tokens_per_group)
            tokens = [term_token(data.key, t) for t in plan[0]]
            rarest = min(tokens, key=lambda t: data.counts.get(t, 0))
            for _ in range(REQUESTS_PER_QUERY):
                real = [real_group(data.key, terms, settings, rng) for terms in plan]
                # A plan of more than groups_per_query sets would need more requests: the first.
                request = build_requests(real, [data.key], settings, rng)[0]
                request.page_size = PAGE_SIZE
                by_kind.setdefault(kind, []).append(Query(kind, pad_request(request), rarest))
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


def posting_docs(conversation_id: str, key_id: bytes, message: Sent) -> list[dict[str, Any]]:
    return [
        {
            "c": conversation_id,
            "k": key_id,
            "t": t,
            "at": message.at_ms,
            "m": message.message_id,
            "s": message.seq,
        }
        for t in message.tokens
    ]


def record_doc(
    conversation_id: str, key_id: bytes, message: Sent, sender_account_id: str
) -> dict[str, Any]:
    return {
        "_id": message.message_id,
        "c": conversation_id,
        "sender": sender_account_id,
        "k": key_id,
        "n": len(message.tokens),
        "at": message.at_ms,
        "s": message.seq,
        "requests": [request_id()],
    }


async def check_shape(db: Any, conversation_id: str, key_id: bytes, message: Sent) -> None:
    """The bulk writes what IndexMessage wrote for ``message``, or the run stops."""
    posting = await db["search_postings"].find_one({"m": message.message_id})
    record = await db["search_messages"].find_one({"_id": message.message_id})
    if posting is None or record is None:
        raise RuntimeError(f"IndexMessage left no postings for {message.message_id}")
    mine = posting_docs(conversation_id, key_id, message)[0]
    if set(posting) != POSTING_KEYS or set(record) != RECORD_KEYS:
        raise RuntimeError(
            f"svc_search's documents changed shape ({sorted(posting)}, {sorted(record)}): "
            "update the search bench's bulk load"
        )
    for name in ("c", "k", "at", "m", "s"):
        if posting[name] != mine[name]:
            raise RuntimeError(
                f"bulk posting field {name!r}: {mine[name]!r}, svc_search wrote {posting[name]!r}"
            )


async def bulk_load(
    db: Any, users: Sequence[User], data: Dataset, sent: Sequence[Sent]
) -> tuple[int, float]:
    """Postings and records of ``sent`` straight into svc_search's collections."""
    c, k = data.key.conversation_id, data.key.key_id
    written = 0
    began = time.perf_counter()
    for start in range(0, len(sent), BULK_MESSAGES):
        chunk = sent[start : start + BULK_MESSAGES]
        docs = [d for m in chunk for d in posting_docs(c, k, m)]
        await db["search_postings"].insert_many(docs, ordered=False)
        await db["search_messages"].insert_many(
            [record_doc(c, k, m, users[m.sender].account_id) for m in chunk], ordered=False
        )
        written += len(docs)
    return written, time.perf_counter() - began


# -- the run ------------------------------------------------------------------------------


async def search_bench(config: BenchConfig) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-search-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    ok = False
    try:
        baseline = await run_unary_baseline(
            config,
            work_dir,
            cpu,
            callers=config.search_callers,
            channels=1,
            payload_bytes=RESPONSE_BYTES,
        )
        async with stack_targets(config, work_dir) as targets:
            measurements = await _measure(config, cpu, targets, baseline)
        progress(f"on-device index: {config.search_local_messages:,} messages")
        measurements.local = search_local.run(
            messages=config.search_local_messages,
            queries=200 if config.quick else 600,
            directory=work_dir,
        )
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = True
        return build_search_report(measurements, machine=machine, parameters=_parameters(config))
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


async def _measure(
    config: BenchConfig, cpu: procstat.CpuBook, targets: StackTargets, baseline: LoadResult
) -> SearchMeasurements:
    if targets.search_target is None or targets.mongo_uri is None:
        raise RuntimeError(
            "the stack's svc_search or database is not known: use --start, or --data-dir of "
            "a running `parley up`"
        )
    pids = {**targets.pids, "bench_client": os.getpid()}
    channels = [
        grpc.aio.insecure_channel(t)
        for t in (targets.keys_target, targets.message_targets[0], targets.search_target)
    ]
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(targets.mongo_uri)
    db = mongo[targets.mongo_database or "parley"]
    try:
        messages = mgrpc.MessageServiceStub(channels[1])
        search = sgrpc.SearchServiceStub(channels[2])
        begin, end = cpu.hooks("setup", pids)
        await begin()
        progress("setup: 2 users, a direct conversation with server search on")
        users = await sign_up_users(
            kgrpc.AccountServiceStub(channels[0]),
            count=2,
            run_tag=secrets.token_hex(3),
            targets=1,
        )
        (pair,) = await pair_up([messages], users)
        conversation_id = pair.conversation_id
        await messages.SetServerSearch(
            mpb.SetServerSearchRequest(
                request_id=request_id(), conversation_id=conversation_id, enabled=True
            ),
            metadata=users[0].metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        settings = BlindSettings.from_proto(
            await search.GetSearchSettings(
                spb.GetSearchSettingsRequest(),
                metadata=users[0].metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        )
        data = make_dataset(config.search_postings, conversation_id, settings)
        await end()

        loaded = Loaded(messages=len(data.texts), token_bytes=data.key.token_bytes)
        begin, end = cpu.hooks("send", pids)
        progress(f"send: {len(data.texts):,} messages through SendMessage")
        await begin()
        began = time.perf_counter()
        sent = await send_all(messages, users, conversation_id, data)
        loaded.send_seconds = time.perf_counter() - began
        await end()

        by_rpc = sent[: config.search_indexed_by_rpc]
        begin, end = cpu.hooks("index_message", pids)
        progress(f"index: {len(by_rpc):,} messages through IndexMessage")
        await begin()
        loaded.index_latencies_ns, loaded.index_seconds = await index_by_rpc(
            search, users, data, by_rpc
        )
        await end()
        loaded.postings_by_rpc = sum(len(m.tokens) for m in by_rpc)
        await check_shape(db, conversation_id, data.key.key_id, by_rpc[0])

        begin, end = cpu.hooks("bulk", pids)
        progress(
            f"bulk: {len(sent) - len(by_rpc):,} messages' postings into svc_search's collections"
        )
        await begin()
        loaded.postings_bulk, loaded.bulk_seconds = await bulk_load(
            db, users, data, sent[len(by_rpc) :]
        )
        await end()
        loaded.postings_stored = await db["search_postings"].count_documents({"c": conversation_id})

        queries = make_queries(data, settings)
        measurements = SearchMeasurements(baseline_unary=baseline, loaded=loaded)
        await _query_rounds(
            config, cpu, pids, targets, db, search, users[0], data, queries, measurements
        )
        measurements.components = await _components(db, data, settings, queries)
        measurements.cpu_seconds = merged_cpu(cpu.phases)
        return measurements
    finally:
        await mongo.close()
        for channel in channels:
            await channel.close(None)


async def _query_rounds(
    config: BenchConfig,
    cpu: procstat.CpuBook,
    pids: Mapping[str, int],
    targets: StackTargets,
    db: Any,
    search: sgrpc.SearchServiceAsyncStub,
    user: User,
    data: Dataset,
    queries: Sequence[Query],
    into: SearchMeasurements,
) -> None:
    postings = db["search_postings"]
    c, k = data.key.conversation_id, data.key.key_id
    turn = itertools.count()
    server_steps, bare_steps = Steps(), Steps()
    empty: collections.Counter[str] = collections.Counter()

    async def server(worker: int) -> None:
        query = queries[next(turn) % len(queries)]
        page = await server_steps.timed(
            query.kind,
            search.Search(query.request, metadata=user.metadata, timeout=QUERY_TIMEOUT_SECONDS),
        )
        if not page.hits:
            empty[query.kind] += 1

    async def bare(worker: int) -> None:
        query = queries[next(turn) % len(queries)]
        cursor = (
            postings.find({"c": c, "k": k, "t": query.token}, {"_id": 0, "m": 1, "at": 1, "s": 1})
            .sort([("at", DESCENDING), ("m", DESCENDING)])
            .limit(PAGE_SIZE)
        )
        await bare_steps.timed(query.kind, cursor.to_list())

    rounds: dict[str, list[LoadResult]] = {}
    handler = HandlerTime(targets.search_metrics_url)
    sides = (("bare_read", bare, bare_steps), ("search_query", server, server_steps))
    for round_ in range(config.search_rounds):
        for kind, call, steps in sides:
            begin, end = cpu.hooks(f"{kind}{ROUND_MARK}{round_}", pids)
            hooks: tuple[list[Hook], list[Hook]] = ([begin], [end])
            if kind == "search_query":
                hooks[0].append(handler.mark)
                hooks[1].append(handler.mark)
            progress(
                f"{kind} ({round_ + 1}/{config.search_rounds}): "
                f"{config.search_callers} closed-loop callers"
            )
            share = config.duration_s / config.search_rounds
            result, window = await sampled_loop(
                config.search_callers,
                call,
                warmup_s=config.warmup_s,
                duration_s=share,
                min_samples=MIN_SAMPLES // config.search_rounds,
                max_s=share * MAX_STRETCH,
                on_start=hooks[0],
                on_end=hooks[1],
            )
            rounds.setdefault(kind, []).append(result)
            for name, samples in steps.within(window).items():
                into.by_kind.setdefault(kind, {}).setdefault(name, []).extend(samples)
    into.search_query = merged(rounds["search_query"])
    into.bare_read = merged(rounds["bare_read"])
    into.empty_pages = dict(empty)
    into.handler_seconds, into.handler_queries = handler.totals()


async def sampled_loop(
    workers: int,
    call: Callable[[int], Awaitable[None]],
    *,
    warmup_s: float,
    duration_s: float,
    min_samples: int,
    max_s: float,
    on_start: Sequence[Hook],
    on_end: Sequence[Hook],
) -> tuple[LoadResult, Window]:
    """``workers`` closed-loop callers; the calls begun after the warm-up count.
    The measured part lasts ``duration_s`` and until ``min_samples`` calls
    completed, at most ``max_s``: a database that takes seconds per query
    still gives enough samples for a p99 (or says how few it got)."""
    start = time.perf_counter_ns() + int(warmup_s * NS)
    soonest, latest = start + int(duration_s * NS), start + int(max_s * NS)
    result = LoadResult(0.0)

    async def worker(index: int) -> None:
        while True:
            began = time.perf_counter_ns()
            if began >= latest or (began >= soonest and result.completed >= min_samples):
                return
            try:
                await call(index)
            except Exception as exc:
                if began >= start:
                    result.errors[error_name(exc)] += 1
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if began >= start:
                result.completed += 1
                result.latencies_ns.append(time.perf_counter_ns() - began)

    async def edges() -> None:
        await sleep_until(start)
        for hook in on_start:
            await hook()

    await asyncio.gather(edges(), *(worker(i) for i in range(workers)))
    finished = time.perf_counter_ns()
    for hook in on_end:
        await hook()
    result.window_s = (finished - start) / NS
    # Steps.within keeps the calls that ended in it: those begun after the warm-up.
    return result, Window(start, finished)


class HandlerTime:
    """svc_search's own query time (parley_search_query_seconds) between marks."""

    def __init__(self, url: str | None) -> None:
        self._url = url
        self._marks: list[tuple[float, float] | None] = []

    async def mark(self) -> None:
        if self._url is None:
            self._marks.append(None)
            return
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                text = (await http.get(self._url)).text
        except httpx.HTTPError:
            self._marks.append(None)
            return
        self._marks.append(parse_histogram(text, "parley_search_query_seconds"))

    def totals(self) -> tuple[float | None, int | None]:
        """Seconds and queries inside the marked windows (None: not known)."""
        seconds, count = 0.0, 0
        for start, end in zip(self._marks[::2], self._marks[1::2], strict=False):
            if start is None or end is None:
                return None, None
            seconds += end[0] - start[0]
            count += int(end[1] - start[1])
        return (seconds, count) if self._marks else (None, None)


def parse_histogram(text: str, name: str) -> tuple[float, float] | None:
    """(sum, count) of a Prometheus histogram in exposition text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        for part in ("_sum", "_count"):
            if line.startswith(name + part + " ") or line.startswith(name + part + "{"):
                found[part] = found.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
    if "_sum" not in found or "_count" not in found:
        return None
    return found["_sum"], found["_count"]


async def _components(
    db: Any, data: Dataset, settings: BlindSettings, queries: Sequence[Query]
) -> Components:
    """One caller: each database step a query makes, timed on its own."""
    postings = db["search_postings"]
    c, k = data.key.conversation_id, data.key.key_id
    filler = filler_tokens(data.key, settings.fillers)[0] if settings.fillers else None
    common = next(q.token for q in queries if q.kind == "common_word")
    ids = [
        doc["m"]
        async for doc in postings.find({"c": c, "k": k, "t": common}, {"m": 1})
        .sort([("at", DESCENDING), ("m", DESCENDING)])
        .limit(256)
    ]

    async def timed(make: Callable[[], Awaitable[Any]]) -> list[int]:
        samples: list[int] = []
        until = time.perf_counter_ns() + int(COMPONENT_SECONDS * NS)
        while len(samples) < COMPONENT_SAMPLES and (
            len(samples) < MIN_COMPONENT_SAMPLES or time.perf_counter_ns() < until
        ):
            began = time.perf_counter_ns()
            await make()
            samples.append(time.perf_counter_ns() - began)
        return samples

    progress("where the time goes: database steps of a query, one caller")
    found = Components()
    found.bare_plan = plan_of(
        await postings.find({"c": c, "k": k, "t": common})
        .sort([("at", DESCENDING), ("m", DESCENDING)])
        .limit(PAGE_SIZE)
        .explain()
    )
    found.samples["page_of_one_token"] = await timed(
        lambda: (
            postings.find({"c": c, "k": k, "t": common}, {"_id": 0, "m": 1, "at": 1, "s": 1})
            .sort([("at", DESCENDING), ("m", DESCENDING)])
            .limit(PAGE_SIZE + 2)
            .to_list()
        )
    )
    found.samples["count_common_token_capped"] = await timed(
        lambda: postings.count_documents({"c": c, "k": k, "t": common}, limit=COUNT_CAP)
    )
    if filler is not None:
        found.samples["count_filler_token_capped"] = await timed(
            lambda: postings.count_documents({"c": c, "k": k, "t": filler}, limit=COUNT_CAP)
        )
        found.filler_postings = data.counts.get(filler, 0)
    found.samples["carrying_all_256"] = await timed(
        lambda: postings.find(
            {"c": c, "k": k, "t": {"$in": [common]}, "m": {"$in": ids}}, {"_id": 0, "m": 1, "t": 1}
        ).to_list()
    )
    found.common_postings = data.counts.get(common, 0)
    found.counts_per_query = settings.groups_per_query * settings.tokens_per_group
    return found


def plan_of(explained: Mapping[str, Any]) -> dict[str, Any]:
    """The database's plan for a page of one token: its stages outermost first
    (with the index an IXSCAN used) and what it examined."""
    stages: list[str] = []
    stage = (explained.get("queryPlanner") or {}).get("winningPlan") or {}
    while stage:
        name = str(stage.get("stage", "?"))
        if stage.get("indexName"):
            name += f"({stage['indexName']})"
        stages.append(name)
        stage = stage.get("inputStage") or {}
    stats = explained.get("executionStats") or {}
    return {
        "stages": stages,
        "keys_examined": stats.get("totalKeysExamined"),
        "docs_examined": stats.get("totalDocsExamined"),
        "returned": stats.get("nReturned"),
    }


def _parameters(config: BenchConfig) -> dict[str, Any]:
    return {
        "scenario": "search",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "postings": config.search_postings,
        "indexed_by_rpc": config.search_indexed_by_rpc,
        "callers": config.search_callers,
        "baseline_unary_callers": config.search_callers,
        "baseline_unary_payload_bytes": RESPONSE_BYTES,
        "page_size": PAGE_SIZE,
        "query_kinds": list(QUERIES),
        "requests_per_query": REQUESTS_PER_QUERY,
        "decoy_pool": "the searched conversation's key only (every decoy group counts its fillers)",
        "send_concurrency": SEND_CONCURRENCY,
        "index_concurrency": INDEX_CONCURRENCY,
        "bulk_messages_per_insert": BULK_MESSAGES,
        "local_messages": config.search_local_messages,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "rounds": config.search_rounds,
        "seed": SEED,
    }
