"""The ``history`` scenario: pages of 50 from the hot and the cold tier through
ListMessages, and the archiver's rate beside a bare pyarrow write of the same
rows to the same S3, all in one run.

1. **Baseline**: the bare gRPC unary echo (its own server process, before the
   stack), with as many callers as the read phases have readers and a page's
   worth of payload.
2. **Dataset** (fixed by ``--history-seed``): 2C users in C direct
   conversations, M messages each sent through SendMessage (the members
   alternate; body sizes and bytes from the seed), then the log's creation
   times rewritten to ages spread over eight weeks (from the seed too), so
   that about half of each conversation is older than the hot window.
3. **Archive**: the rows the archiver will move (the same pure functions pick
   them), written bare with pyarrow to the same bucket, once before and once
   after the archiver; between the two, one pass of the real archiver
   (``svc_message.app.build_archive``, unlimited rate) with its clock set
   past the window, its steps timed through its step hook.
4. **Reads**: R closed-loop readers, each page 50 messages of one tier
   (start positions from the seed, conversations in turn), backward and
   forward, hot and cold; a page that is not 50 messages of its tier is an
   error.

A stack this run starts has the recent cache off (the pages are the tiers'
own, not Redis's) and its own archiver off (the bench runs it, with its clock).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pymongo import AsyncMongoClient, UpdateOne

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.config import Settings
from parley_dev.bench import procstat
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.history_report import (
    ArchivePass,
    BareWrite,
    HistoryMeasurements,
    build_history_report,
)
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS, LoadResult, Window, closed_loop
from parley_dev.bench.population import Pair, bounded_gather, pair_up, request_id, sign_up_users
from parley_dev.bench.profile import Profiler, find_py_spy
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import StackTargets, progress, run_unary_baseline, stack_targets
from svc_message.archive_wiring import build_archive
from svc_message.domain.archiver import PREPARED, STEPS, bundles, chunks_of, movable_prefix
from svc_message.storage.archive import ArchiveLedger
from svc_message.storage.archive_format import SCHEMA, Chunk, table_of

DAY = 86400.0
PAGE = 50
# Ages of the log's entries: from a day to eight weeks and a day old.
NEWEST_AGE_DAYS = 1.0
SPAN_DAYS = 56.0
BODY_BYTES = (64, 1024)
# Where the bare writes go, apart from the archive's prefix.
BARE_PREFIX = "bench-bare-history"
# The read phases, in the order they run: hot and cold alternate.
READS = ("hot_backward", "cold_backward", "hot_forward", "cold_forward")
# Tries of one dataset send that is answered UNAVAILABLE, 0.5 s apart.
SEND_ATTEMPTS = 20
# The phase py-spy samples svc_message in with --profile.
PROFILED_READ = "cold_backward"


class ShortPage(Exception):
    """A page that is not PAGE messages of the tier it was asked from."""


@dataclass(frozen=True, slots=True)
class Dataset:
    conversations: int
    messages: int
    seed: int

    def bodies(self, conversation: int) -> list[bytes]:
        rng = random.Random(f"{self.seed}/bodies/{conversation}")
        return [rng.randbytes(rng.randint(*BODY_BYTES)) for _ in range(self.messages)]

    def ages_days(self, conversation: int, count: int) -> list[float]:
        """The age of each of ``count`` log entries, oldest first."""
        rng = random.Random(f"{self.seed}/ages/{conversation}")
        ages = (NEWEST_AGE_DAYS + rng.random() * SPAN_DAYS for _ in range(count))
        return sorted(ages, reverse=True)

    @property
    def mean_body_bytes(self) -> int:
        return sum(BODY_BYTES) // 2


@dataclass(frozen=True, slots=True)
class Tiers:
    """One conversation's seqs: cold 1..cold_seq, hot cold_seq+1..last_seq."""

    pair: Pair
    cold_seq: int
    last_seq: int

    def span(self, tier: str) -> tuple[int, int]:
        return (1, self.cold_seq) if tier == "cold" else (self.cold_seq + 1, self.last_seq)


def page_starts(lo: int, hi: int, *, forward: bool) -> range:
    """Start seqs of full pages inside [lo, hi]."""
    return range(lo, hi - PAGE + 2) if forward else range(lo + PAGE - 1, hi + 1)


# -- the dataset ----------------------------------------------------------------------------


async def populate(
    stubs: Sequence[mgrpc.MessageServiceAsyncStub], pairs: Sequence[Pair], dataset: Dataset
) -> dict[str, int]:
    """Send every conversation's messages, in order; the newest seq of each."""

    async def fill(index: int) -> int:
        pair = pairs[index]
        seq = 0
        for turn, body in enumerate(dataset.bodies(pair.index)):
            sender, _ = pair.sender(turn)
            request = mpb.SendMessageRequest(
                request_id=request_id(),
                conversation_id=pair.conversation_id,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=body,
            )
            for attempt in range(SEND_ATTEMPTS):
                try:
                    reply = await stubs[sender.target].SendMessage(
                        request, metadata=sender.metadata, timeout=CALL_TIMEOUT_SECONDS
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    # UNAVAILABLE asks for a retry with the same request id (a
                    # shard lease renewed late on a loaded machine), as the SDK does.
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == SEND_ATTEMPTS:
                        raise
                    await asyncio.sleep(0.5)
            seq = max(seq, reply.message.seq)
        return seq

    seqs = await bounded_gather(len(pairs), fill)
    return {pair.conversation_id: seq for pair, seq in zip(pairs, seqs, strict=True)}


async def backdate(db: Any, pairs: Sequence[Pair], dataset: Dataset, *, now: float) -> int:
    """Give every log entry of the conversations its age from the seed; entries changed."""
    changed = 0
    for pair in pairs:
        cursor = db["messages"].find({"conversation_id": pair.conversation_id}, {"_id": 1})
        ids = [doc["_id"] async for doc in cursor.sort("version", 1)]
        ages = dataset.ages_days(pair.index, len(ids))
        updates = [
            UpdateOne(
                {"_id": entry_id},
                {"$set": {"created_at": datetime.fromtimestamp(now - age * DAY, UTC)}},
            )
            for entry_id, age in zip(ids, ages, strict=True)
        ]
        if updates:
            changed += (await db["messages"].bulk_write(updates, ordered=False)).modified_count
    return changed


async def planned_moves(
    db: Any, pairs: Sequence[Pair], *, cutoff: datetime, target_bytes: int
) -> list[list[Chunk]]:
    """The objects the archiver's pass will write, from the same pure functions."""
    pending: list[Chunk] = []
    for conversation_id in sorted(p.conversation_id for p in pairs):
        cursor = db["messages"].find({"conversation_id": conversation_id}).sort("version", 1)
        docs = [doc async for doc in cursor]
        if not docs:
            continue
        newest = docs[-1]["created_at"]
        moved = movable_prefix(docs, cutoff=cutoff, newest_at=_aware(newest))
        pending += chunks_of(conversation_id, moved)
    return bundles(pending, target_bytes=target_bytes)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# -- the bare write and the archiver ------------------------------------------------------------


def _s3_filesystem(settings: Settings) -> pafs.S3FileSystem:
    s3 = settings.s3
    if s3.access_key_id_file is None or s3.secret_access_key_file is None:
        raise RuntimeError("the stack's S3 keys are not in its config: cannot write bare")
    endpoint = urlsplit(s3.endpoint_url)
    return pafs.S3FileSystem(
        access_key=s3.access_key_id_file.read_text().strip(),
        secret_key=s3.secret_access_key_file.read_text().strip(),
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme or "http",
        region=s3.region,
    )


def bare_write(fs: pafs.S3FileSystem, root: str, plan: Sequence[Sequence[Chunk]]) -> BareWrite:
    """Each planned object written with pyarrow straight to S3, one row group a
    chunk, pyarrow's default options; nothing read back, nothing recorded."""
    began = time.perf_counter()
    rows = size = 0
    for index, bundle in enumerate(plan):
        path = f"{root}/{index}.parquet"
        with pq.ParquetWriter(path, SCHEMA, filesystem=fs) as writer:
            for chunk in bundle:
                writer.write_table(table_of(chunk), row_group_size=max(len(chunk.docs), 1))
                rows += len(chunk.docs)
        size += fs.get_file_info(path).size
    return BareWrite(rows, len(plan), size, time.perf_counter() - began)


@dataclass
class StepClock:
    """Seconds between the archiver's steps, summed per step: each interval is
    named by the step that ends it (``prepared``: the pass's reads of the log;
    ``written``: encoding and PUT of each object)."""

    last: float = 0.0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys((PREPARED, *STEPS), 0.0)
    )

    def start(self) -> None:
        self.last = time.perf_counter()

    async def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self.last
        self.last = now


async def archive_pass(settings: Settings, db: Any, *, now: float) -> ArchivePass:
    """One pass of the real archiver with its clock at ``now``, rate limit off."""
    unlimited = settings.model_copy(
        update={"archive": settings.archive.model_copy(update={"messages_per_second": 0.0})}
    )
    steps = StepClock()
    _, archiver, objects = await build_archive(unlimited, db, clock=lambda: now, on_step=steps.mark)
    try:
        steps.start()
        began = time.perf_counter()
        report = await archiver.tick()
        ended = time.perf_counter()
        if report is None:
            raise RuntimeError(
                "the archiver did not run: it is paused, or a svc_message process holds its "
                "lease (use --start, or `python -m svc_message archive pause` is not enough: "
                "stop the stack's archiver with archive.enabled=false)"
            )
        await archiver.release()
    finally:
        await objects.close()
    return ArchivePass(
        moved=report.moved,
        objects=report.objects,
        bytes=report.bytes,
        seconds=ended - began,
        steps={k: round(v, 3) for k, v in steps.seconds.items()},
        finish_seconds=round(ended - steps.last, 3),
    )


# -- the reads ------------------------------------------------------------------------------------


@dataclass
class Reader:
    stubs: Sequence[mgrpc.MessageServiceAsyncStub]
    tiers: Sequence[Tiers]
    seed: int
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def call(self, phase: str) -> Callable[[int], Awaitable[None]]:
        tier, direction = phase.split("_")
        forward = direction == "forward"
        rng = random.Random(f"{self.seed}/reads/{phase}")

        async def read(worker: int) -> None:
            conversation = self.tiers[next(self.counter) % len(self.tiers)]
            lo, hi = conversation.span(tier)
            start = rng.choice(page_starts(lo, hi, forward=forward))
            user = conversation.pair.a
            reply = await self.stubs[user.target].ListMessages(
                mpb.ListMessagesRequest(
                    conversation_id=conversation.pair.conversation_id,
                    page_size=PAGE,
                    direction=mpb.DIRECTION_FORWARD if forward else mpb.DIRECTION_BACKWARD,
                    start_seq=start,
                ),
                metadata=user.metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            seqs = [m.seq for m in reply.messages]
            if len(seqs) != PAGE or not all(lo <= s <= hi for s in seqs):
                raise ShortPage(f"{phase}: {len(seqs)} messages from {start}")

        return read


# -- the run --------------------------------------------------------------------------------------


def dataset_of(config: BenchConfig) -> Dataset:
    return Dataset(config.history_conversations, config.history_messages, config.history_seed)


async def history_bench(config: BenchConfig) -> dict[str, Any]:
    """Baseline, dataset, archive, reads; the JSON-ready report."""
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-history-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    dataset = dataset_of(config)
    ok = False
    try:
        baseline = await run_unary_baseline(
            config,
            work_dir,
            cpu,
            callers=config.history_readers,
            channels=1,
            payload_bytes=PAGE * dataset.mean_body_bytes,
        )
        async with stack_targets(config, work_dir) as targets:
            measurements = await _measure(config, cpu, targets, dataset, baseline)
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = True
        return build_history_report(
            measurements, machine=machine, parameters=_parameters(config, dataset, targets)
        )
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


async def _measure(
    config: BenchConfig,
    cpu: procstat.CpuBook,
    targets: StackTargets,
    dataset: Dataset,
    baseline: LoadResult,
) -> HistoryMeasurements:
    settings = targets.settings
    if settings is None or targets.mongo_uri is None:
        raise RuntimeError(
            "the stack's config is not known: use --start, or --data-dir of a running `parley up`"
        )
    pids = {**targets.pids, "bench_client": os.getpid()}
    channels = [
        grpc.aio.insecure_channel(t) for t in [targets.keys_target, *targets.message_targets]
    ]
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(
        targets.mongo_uri, retryWrites=False, tz_aware=True
    )
    db = mongo[settings.mongo.database]
    profiler: Profiler | None = None
    try:
        stubs = [mgrpc.MessageServiceStub(c) for c in channels[1:]]
        begin, end = cpu.hooks("setup", pids)
        await begin()
        progress(
            f"setup: {dataset.conversations} conversations of {dataset.messages} messages "
            f"(seed {dataset.seed})"
        )
        users = await sign_up_users(
            kgrpc.AccountServiceStub(channels[0]),
            count=2 * dataset.conversations,
            run_tag=secrets.token_hex(3),
            targets=len(stubs),
        )
        pairs = await pair_up(stubs, users)
        last_seqs = await populate(stubs, pairs, dataset)
        # Every id (a UUIDv7 of the send) must be older than the cutoff the
        # archiver finds candidates by: its clock runs a window and a day ahead.
        clock = time.time() + settings.archive.hot_window_seconds + DAY
        await backdate(db, pairs, dataset, now=clock)
        await end()

        cutoff = datetime.fromtimestamp(clock - settings.archive.hot_window_seconds, UTC)
        plan = await planned_moves(
            db, pairs, cutoff=cutoff, target_bytes=settings.archive.target_object_bytes
        )
        fs = _s3_filesystem(settings)
        root = f"{settings.s3.bucket}/{BARE_PREFIX}/{secrets.token_hex(4)}"
        bare: list[BareWrite] = []
        try:
            for turn, name in enumerate(("bare_write", "archive", "bare_write_after")):
                begin, end = cpu.hooks(name, pids)
                await begin()
                progress(f"{name}: {sum(len(c.docs) for b in plan for c in b)} rows")
                if name == "archive":
                    archived = await archive_pass(settings, db, now=clock)
                else:
                    bare.append(await asyncio.to_thread(bare_write, fs, f"{root}/{turn}", plan))
                await end()
        finally:
            await asyncio.to_thread(fs.delete_dir, root)

        ledger = ArchiveLedger(db)
        tiers = [
            Tiers(
                pair=pair,
                cold_seq=(await ledger.head(pair.conversation_id)).seq,
                last_seq=last_seqs[pair.conversation_id],
            )
            for pair in pairs
        ]
        reader = Reader(stubs, tiers, dataset.seed)
        reads: dict[str, LoadResult] = {}
        for phase in READS:
            begin, end = cpu.hooks(phase, pids)
            on_start = [begin]
            if config.profile and phase == PROFILED_READ:
                profiler = _profiler(config)
                if profiler is not None:
                    on_start.append(_profile_hook(profiler, targets.pids, config.duration_s))
            progress(f"{phase}: {config.history_readers} readers, pages of {PAGE}")
            reads[phase] = await closed_loop(
                config.history_readers,
                reader.call(phase),
                window=Window.after(config.warmup_s, config.duration_s),
                on_start=on_start,
                on_end=[end],
            )
            if profiler is not None and phase == PROFILED_READ:
                await profiler.finish(config.duration_s)
        return HistoryMeasurements(
            baseline=baseline,
            reads=reads,
            archive=archived,
            bare=bare,
            planned_rows=sum(len(c.docs) for b in plan for c in b),
            planned_objects=len(plan),
            cold_seqs=[t.cold_seq for t in tiers],
            last_seqs=[t.last_seq for t in tiers],
            cpu_seconds=cpu.phases,
            profile_files=profiler.files if profiler else [],
            profile_notes=profiler.problems if profiler else [],
        )
    finally:
        if profiler is not None:
            await profiler.abort()
        await mongo.close()
        for channel in channels:
            await channel.close(None)


def _profiler(config: BenchConfig) -> Profiler | None:
    executable = find_py_spy()
    if executable is None:
        progress("--profile: py-spy is not installed (uv pip install py-spy); not profiling")
        return None
    out_dir = config.json_path.parent if config.json_path else Path.cwd()
    prefix = f"{config.json_path.stem}-profile" if config.json_path else "parley-bench-profile"
    return Profiler(executable=executable, out_dir=out_dir, prefix=prefix)


def _profile_hook(
    profiler: Profiler, stack_pids: Mapping[str, int], duration_s: float
) -> Callable[[], Awaitable[None]]:
    targets = {n: p for n, p in stack_pids.items() if n.startswith("svc_message") and p > 0}

    async def start() -> None:
        await profiler.start(targets, duration_s)

    return start


def _parameters(config: BenchConfig, dataset: Dataset, targets: StackTargets) -> dict[str, Any]:
    settings = targets.settings
    return {
        "scenario": "history",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "conversations": dataset.conversations,
        "messages_per_conversation": dataset.messages,
        "seed": dataset.seed,
        "body_bytes_range": list(BODY_BYTES),
        "ages_days": [NEWEST_AGE_DAYS, NEWEST_AGE_DAYS + SPAN_DAYS],
        "hot_window_days": settings.archive.hot_window_days if settings else None,
        "target_object_bytes": settings.archive.target_object_bytes if settings else None,
        "recent_cache_messages": settings.message.recent_cache_messages if settings else None,
        "readers": config.history_readers,
        "baseline_unary_callers": config.history_readers,
        "baseline_unary_payload_bytes": PAGE * dataset.mean_body_bytes,
        "page_size": PAGE,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "archiver_rate_limit": "off (messages_per_second 0)",
        "bare_write": "pyarrow ParquetWriter on S3FileSystem, default options, same objects "
        "and row groups",
        "profile": config.profile,
    }
