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
   svc_message and its page filter does its real work; their send times are
   then spread over a year in svc_message's log. The first
   ``search_indexed_by_rpc`` messages are indexed through IndexMessage (its
   rate and latency are figures); the rest are written in bulk straight into
   svc_search's collections, in the shape IndexMessage wrote (checked against
   those documents: a changed shape stops the run).
3. **Queries**, in turns (bare read, then svc_search, each after a warm-up,
   so a burst of other work on a shared machine falls on both alike), Q
   closed-loop callers:
   - search_query: Search with requests the SDK's code builds (the real
     group, decoys from the device's keys, padding), a page of 20;
   - bare_read: the same query's rarest real token's 20 newest hour
     buckets, through pymongo on the index svc_search reads.
4. **Where the time goes**: svc_search's own handler time (its metrics)
   against what the client saw, and, one caller, the database steps a query
   takes: a group's token counts, the bare sorted page of one token, the
   hour ranges of its walk (of a common token, and of a filler every
   message carries), the other tokens' buckets at a page's hours.
5. **On-device index** (after the stack stopped):
   :func:`parley_dev.bench.search_local.run` over the SDK's SQLite FTS5 index.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from parley_dev.bench.population import User, pair_up, request_id, sign_up_users
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import (
    StackTargets,
    progress,
    run_unary_baseline,
    stack_targets,
)
from parley_dev.bench.search_data import (
    BULK_DOCS,
    INDEX_CONCURRENCY,
    PAGE_SIZE,
    QUERIES,
    REQUESTS_PER_QUERY,
    SEED,
    SEND_CONCURRENCY,
    SPAN_DAYS,
    Dataset,
    Query,
    backdate,
    bulk_load,
    check_shape,
    index_by_rpc,
    make_dataset,
    make_queries,
    send_all,
)
from parley_dev.bench.search_report import (
    Components,
    Loaded,
    SearchMeasurements,
    build_search_report,
)
from parley_sdk._blind_tokens import BlindSettings, filler_tokens
from svc_search.storage.postings import BUCKET_MS, bucket_id


def of_token(token: bytes, lo: int = 0, hi: int = 2**32 - 1) -> dict[str, bytes]:
    """svc_search's bucket range of a token's hours ``lo`` to ``hi``."""
    return {"$gte": bucket_id(token, lo), "$lte": bucket_id(token, hi)}


# The SDK's Search page: a padded response is at least this (svc_search's default bucket).
RESPONSE_BYTES = 1024
# One-caller samples of each database step in "where the time goes": up to
# COMPONENT_SAMPLES within COMPONENT_SECONDS, at least MIN_COMPONENT_SAMPLES.
COMPONENT_SAMPLES = 40
COMPONENT_SECONDS = 5.0
# Postings of a token svc_search samples per window for a page of PAGE_SIZE
# (twice the page and one), and so the candidates it checks in one read.
SAMPLE = 2 * (PAGE_SIZE + 1)
MIN_COMPONENT_SAMPLES = 3
ROUND_MARK = "#"
# Queries each side completes at least (over all turns), however slow the
# database, and how far past its share of the duration a turn may run for them.
MIN_SAMPLES = 100
MAX_STRETCH = 12.0
# A query over a slow database may take seconds: longer than the bench's usual call timeout.
QUERY_TIMEOUT_SECONDS = 120.0


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

        progress(f"backdate: send times spread over {SPAN_DAYS} days")
        sent = await backdate(db, sent, now_ms=int(time.time() * 1000))
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
            db, users, data, by_rpc, sent[len(by_rpc) :]
        )
        await end()
        loaded.postings_stored = await stored_postings(db, conversation_id)

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
    buckets = db["search_buckets"]
    c, k = data.key.conversation_id, data.key.key_id
    turn = itertools.count()
    server_steps, bare_steps = Steps(), Steps()
    empty: collections.Counter[str] = collections.Counter()
    missed: collections.Counter[str] = collections.Counter()

    async def server(worker: int) -> None:
        query = queries[next(turn) % len(queries)]
        page = await server_steps.timed(
            query.kind,
            search.Search(query.request, metadata=user.metadata, timeout=QUERY_TIMEOUT_SECONDS),
        )
        if not page.hits:
            empty[query.kind] += 1
            # A page may stop short (at svc_search's read cap) with a next page token.
            if query.must_hit and not page.next_page_token:
                missed[query.kind] += 1

    async def bare(worker: int) -> None:
        query = queries[next(turn) % len(queries)]
        # The token's newest buckets, as many as a page's postings may need.
        cursor = (
            buckets.find({"c": c, "k": k, "b": of_token(query.token)}, {"_id": 0, "e": 1})
            .sort([("b", DESCENDING)])
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
            for name, ended in steps.ended.items():
                # As the loop counts them: the calls begun after the warm-up.
                into.by_kind.setdefault(kind, {}).setdefault(name, []).extend(
                    ns for done, ns in ended if window.contains(done - ns)
                )
            steps.ended.clear()
    into.search_query = merged(rounds["search_query"])
    into.bare_read = merged(rounds["bare_read"])
    into.empty_pages = dict(empty)
    into.missed_hits = dict(missed)
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


async def stored_postings(db: Any, conversation_id: str) -> int:
    """Postings of the conversation: its indexed messages' token counts."""
    total = 0
    async for doc in db["search_messages"].find({"c": conversation_id}, {"_id": 0, "n": 1}):
        total += int(doc.get("n", 0))
    return total


async def _components(
    db: Any, data: Dataset, settings: BlindSettings, queries: Sequence[Query]
) -> Components:
    """One caller: each database step a query makes, timed on its own."""
    buckets, tokens = db["search_buckets"], db["search_tokens"]
    c, k = data.key.conversation_id, data.key.key_id
    fillers = filler_tokens(data.key, settings.fillers) if settings.fillers else []
    common = next(q.token for q in queries if q.kind == "common_word")
    now_w = int(time.time() * 1000) // BUCKET_MS

    def hours(token: bytes, days: float) -> Callable[[], Awaitable[Any]]:
        # As svc_search's PostingStore.hours: one index range of hour buckets.
        span = of_token(token, now_w - int(days * 24) + 1, now_w)
        return lambda: buckets.find({"c": c, "k": k, "b": span}, {"_id": 0, "e": 1}).to_list()

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
        await buckets.find({"c": c, "k": k, "b": of_token(common)})
        .sort([("b", DESCENDING)])
        .limit(PAGE_SIZE)
        .explain()
    )
    group = [common, *fillers]
    found.samples["token_counts_of_a_group"] = await timed(
        lambda: tokens.find({"c": c, "k": k, "t": {"$in": group}}, {"_id": 0}).to_list()
    )
    found.samples["page_of_one_token"] = await timed(
        lambda: (
            buckets.find({"c": c, "k": k, "b": of_token(common)}, {"_id": 0, "e": 1})
            .sort([("b", DESCENDING)])
            .limit(PAGE_SIZE)
            .to_list()
        )
    )
    found.samples["hours_common_token_7d"] = await timed(hours(common, 7))
    found.samples["hours_common_token_30d"] = await timed(hours(common, 30))
    if fillers:
        found.samples["hours_filler_token_7d"] = await timed(hours(fillers[0], 7))
        found.filler_postings = data.counts.get(fillers[0], 0)
    # How svc_search checks candidates for the group's other tokens: one
    # read of those tokens' buckets at the candidates' hours.
    newest = [
        int.from_bytes(bytes(doc["b"])[-4:], "big")
        async for doc in buckets.find({"c": c, "k": k, "b": of_token(common)}, {"_id": 0, "b": 1})
        .sort([("b", DESCENDING)])
        .limit(SAMPLE)
    ]
    if fillers:
        found.samples[f"fillers_at_{len(newest)}_hours"] = await timed(
            lambda: buckets.find(
                {
                    "c": c,
                    "k": k,
                    "b": {"$in": sorted(bucket_id(f, w) for f in fillers for w in newest)},
                },
                {"_id": 0, "b": 1, "e.m": 1},
            ).to_list()
        )
    found.common_postings = data.counts.get(common, 0)
    found.windows_per_round = settings.groups_per_query
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
        "bulk_docs_per_write": BULK_DOCS,
        "local_messages": config.search_local_messages,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "rounds": config.search_rounds,
        "seed": SEED,
        "send_times_span_days": SPAN_DAYS,
    }
