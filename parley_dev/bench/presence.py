"""The ``presence`` scenario: what a heartbeat costs, and where a presence change goes.

Setup (not measured, CPU recorded): N users sign up, one device each. User 0
is the watched user W: its online and last-seen visibility is CONTACTS and
its contact list holds a known share of S subscribers (users 1..S, allowed
and hidden interleaved); every subscriber shows its own presence to everyone,
so reciprocity admits W and W's contact list alone decides. Every other user
heartbeats once (it comes online: the later heartbeats are renewals, the
steady state). The S subscribers each open SubscribePresence([W]), spread
over a few gRPC channels, and wait for the snapshot: W is offline then,
which allowed subscribers may see and hidden ones get as UNSPECIFIED.

heartbeat (closed loop): C callers over the channels, each call a Heartbeat
of the next user in rotation (W excluded), a warm-up then the window: the
heartbeats/s svc_presence sustains, their latency, and the CPU of every
process. Beside it the bare gRPC unary baseline of the same run, with as many
callers over as many connections.

Redis cost: ``INFO commandstats`` of the stack's Redis around exactly K more
heartbeats (nothing else running), less the background counted over an idle
stretch right after (the sweeper, the other services): script calls and
commands per heartbeat.

fanout: W comes online (a warm-up change); W then renews its heartbeat R
times while every subscriber watches (it must cost what anyone's renewal
costs and notify no one); W goes offline. Then W toggles K times: Heartbeat (W comes
online), GoOffline (the sweeper takes W offline), each change timed from the
call to its arrival at every allowed subscriber, the next change only after
the last arrival (or a timeout, which ends the phase). Hidden subscribers
must get nothing. Around the measured changes: Redis PUBLISHes and commands
per change, PresenceEvents per change, svc_presence's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_core.config import PresenceServiceSettings
from parley_core.storage.liveness import PresenceKeys
from parley_dev.bench import procstat
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.db_writes import documents_written
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS, Hook, LoadResult, Window, closed_loop
from parley_dev.bench.population import User, bounded_gather, sign_up_users
from parley_dev.bench.presence_report import (
    WATCHED_CHANNEL,
    ChangeKind,
    ChangeTiming,
    PresenceMeasurements,
    RedisCost,
    build_presence_report,
)
from parley_dev.bench.presence_watch import (
    ChangeRecorder,
    RedisStats,
    Watcher,
    allowed_mask,
    channel_kinds,
    close_watchers,
    counted,
    offline_delays,
    open_watchers,
)
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import (
    StackTargets,
    own_connection,
    progress,
    run_unary_baseline,
    stack_targets,
)

# An offline change waits for the sweeper; far more than its interval means lost.
CHANGE_TIMEOUT_SECONDS = 10.0
# AddContacts takes at most this many accounts per call.
CONTACTS_PER_CALL = 256
# Heartbeats counted exactly for the Redis cost, quick and full.
QUICK_PROBE_HEARTBEATS = 2000
FULL_PROBE_HEARTBEATS = 5000
# The idle stretch that measures the background is at most this long.
IDLE_MAX_SECONDS = 3.0
# Renewals of the watched user while all subscribers watch it, one at a time.
WATCHED_RENEWALS = 200
# After those renewals: time for any (wrong) event they caused to arrive.
RENEWAL_SETTLE_SECONDS = 0.5
PUBLISH_SETTLE_SECONDS = 0.2
_ONLINE = ppb.AVAILABILITY_ONLINE
_OFFLINE = ppb.AVAILABILITY_OFFLINE
_KINDS: tuple[ChangeKind, ...] = ("online", "offline")


@dataclass(frozen=True)
class PresenceParams:
    users: int
    subscribers: int
    allowed: int
    toggles: int
    channels: int
    concurrency: int
    probe_heartbeats: int

    @classmethod
    def of(cls, config: BenchConfig) -> PresenceParams:
        subscribers = min(config.presence_subscribers, config.presence_users - 1)
        allowed = max(1, round(subscribers * config.presence_allowed_fraction))
        return cls(
            users=config.presence_users,
            subscribers=subscribers,
            allowed=min(allowed, subscribers),
            toggles=config.presence_toggles,
            channels=config.presence_channels,
            concurrency=config.concurrency,
            probe_heartbeats=QUICK_PROBE_HEARTBEATS if config.quick else FULL_PROBE_HEARTBEATS,
        )

    @property
    def hidden(self) -> int:
        return self.subscribers - self.allowed


async def heartbeat(stub: pgrpc.PresenceServiceAsyncStub, user: User) -> None:
    await stub.Heartbeat(
        ppb.HeartbeatRequest(), metadata=user.metadata, timeout=CALL_TIMEOUT_SECONDS
    )


# -- phases ---------------------------------------------------------------------------


async def prepare_watched(
    stubs: Sequence[pgrpc.PresenceServiceAsyncStub],
    watched: User,
    subscribers: Sequence[User],
    mask: Sequence[bool],
) -> None:
    """W shows its presence to its contacts only; the allowed subscribers are
    its contacts; every subscriber shows its own to everyone (reciprocity)."""
    await stubs[0].UpdatePresenceSettings(
        ppb.UpdatePresenceSettingsRequest(
            online=ppb.VISIBILITY_CONTACTS, last_seen=ppb.VISIBILITY_CONTACTS
        ),
        metadata=watched.metadata,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    contacts = [s.account_id for s, allowed in zip(subscribers, mask, strict=True) if allowed]
    for start in range(0, len(contacts), CONTACTS_PER_CALL):
        await stubs[0].AddContacts(
            ppb.AddContactsRequest(account_ids=contacts[start : start + CONTACTS_PER_CALL]),
            metadata=watched.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def show_to_everyone(index: int) -> None:
        await stubs[index % len(stubs)].UpdatePresenceSettings(
            ppb.UpdatePresenceSettingsRequest(
                online=ppb.VISIBILITY_EVERYONE, last_seen=ppb.VISIBILITY_EVERYONE
            ),
            metadata=subscribers[index].metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )

    await bounded_gather(len(subscribers), show_to_everyone)


async def heartbeat_phase(
    stubs: Sequence[pgrpc.PresenceServiceAsyncStub],
    users: Sequence[User],
    *,
    concurrency: int,
    window: Window,
    on_start: Sequence[Hook],
    on_end: Sequence[Hook],
) -> LoadResult:
    turn = itertools.count()

    async def call(worker: int) -> None:
        await heartbeat(stubs[worker % len(stubs)], users[next(turn) % len(users)])

    return await closed_loop(concurrency, call, window=window, on_start=on_start, on_end=on_end)


async def heartbeats(
    stubs: Sequence[pgrpc.PresenceServiceAsyncStub], users: Sequence[User], count: int, limit: int
) -> int:
    """Exactly ``count`` heartbeats over the users in rotation, ``limit`` at a time."""

    async def one(index: int) -> None:
        await heartbeat(stubs[index % len(stubs)], users[index % len(users)])

    await bounded_gather(count, one, limit=limit)
    return count


async def change(
    stub: pgrpc.PresenceServiceAsyncStub, watched: User, recorder: ChangeRecorder, kind: ChangeKind
) -> ChangeTiming:
    """Make one change of W and wait until every allowed subscriber has it (bounded)."""
    started = recorder.begin(_ONLINE if kind == "online" else _OFFLINE)
    if kind == "online":
        await heartbeat(stub, watched)
    else:
        await stub.GoOffline(
            ppb.GoOfflineRequest(), metadata=watched.metadata, timeout=CALL_TIMEOUT_SECONDS
        )
    call_ns = time.perf_counter_ns() - started
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CHANGE_TIMEOUT_SECONDS):
            await recorder.done.wait()
    arrivals = recorder.end()
    return ChangeTiming(kind, call_ns, arrivals, recorder.allowed - len(arrivals))


@dataclass
class Fanout:
    changes: list[ChangeTiming]
    events: int
    cost: RedisCost | None
    renewal_cost: RedisCost | None
    renewal_events: int
    # Messages published during the renewals on the watched user's channel,
    # and during the measured changes by kind of channel (None: Redis unknown).
    renewal_publishes: int | None
    publishes: dict[str, int] | None
    db_documents: dict[str, int] | None
    aborted: str | None


class _Published:
    """Messages published on the stack's Redis between two moments, by channel kind."""

    def __init__(self, stats: RedisStats | None, watched: User) -> None:
        self._stats = stats
        # The benchmarks run on a single Redis: one presence shard.
        self._channel = PresenceKeys(1).channel(watched.account_id)
        self._before: Counter[str] = Counter()

    def mark(self) -> None:
        if self._stats is not None:
            self._before = self._stats.published.copy()

    async def since_mark(self) -> dict[str, int] | None:
        if self._stats is None:
            return None
        # A publish reaches this counter and svc_presence at about the same
        # time; the subscribers heard it through svc_presence, so it is here.
        await asyncio.sleep(PUBLISH_SETTLE_SECONDS)
        return channel_kinds(self._stats.published - self._before, self._channel)


async def fanout_phase(
    stub: pgrpc.PresenceServiceAsyncStub,
    watched: User,
    recorder: ChangeRecorder,
    *,
    toggles: int,
    sweep_interval_s: float,
    stats: RedisStats | None,
    background: dict[str, float],
    cpu_hooks: tuple[Hook, Hook],
    metrics_urls: Sequence[str],
) -> Fanout:
    published = _Published(stats, watched)
    warm = await change(stub, watched, recorder, "online")
    if warm.missing:
        return Fanout([], 0, None, None, 0, None, None, None, "the warm-up change missed")

    events_before = recorder.events
    published.mark()
    renewal_cost, _ = await counted(
        stats, lambda: _renew(stub, watched, WATCHED_RENEWALS), background
    )
    await asyncio.sleep(RENEWAL_SETTLE_SECONDS)
    renewal_events = recorder.events - events_before
    during_renewals = await published.since_mark()
    renewal_publishes = None if during_renewals is None else during_renewals.get(WATCHED_CHANNEL, 0)
    warm = await change(stub, watched, recorder, "offline")
    if warm.missing:
        return Fanout(
            [],
            0,
            None,
            renewal_cost,
            renewal_events,
            renewal_publishes,
            None,
            None,
            "the warm-up offline change missed",
        )

    changes: list[ChangeTiming] = []
    aborted: list[str] = []
    delays = offline_delays(toggles, sweep_interval_s)

    async def toggle() -> int:
        for k in range(toggles):
            for kind in _KINDS:
                if kind == "offline":
                    await asyncio.sleep(delays[k])
                timing = await change(stub, watched, recorder, kind)
                changes.append(timing)
                if timing.missing:
                    aborted.append(f"a change missed {timing.missing} allowed subscribers")
                    return len(changes)
        return len(changes)

    begin, end = cpu_hooks
    written_before = await documents_written(metrics_urls) if metrics_urls else None
    events_before = recorder.events
    published.mark()
    await begin()
    cost, _ = await counted(stats, toggle, background)
    await end()
    events = recorder.events - events_before
    publishes = await published.since_mark()
    written = None
    if written_before is not None:
        written = _delta(written_before, await documents_written(metrics_urls))
    return Fanout(
        changes,
        events,
        cost,
        renewal_cost,
        renewal_events,
        renewal_publishes,
        publishes,
        written,
        aborted[0] if aborted else None,
    )


async def _renew(stub: pgrpc.PresenceServiceAsyncStub, watched: User, count: int) -> int:
    for _ in range(count):
        await heartbeat(stub, watched)
    return count


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


# -- the run --------------------------------------------------------------------------


def heartbeat_response_bytes() -> int:
    """The serialized size of a HeartbeatResponse: the baseline echoes that much."""
    reply = ppb.HeartbeatResponse(
        ttl=duration_pb2.Duration(seconds=45), interval=duration_pb2.Duration(seconds=15)
    )
    return reply.ByteSize()


async def presence_bench(config: BenchConfig) -> dict[str, Any]:
    """The unary baseline, then heartbeats and fan-out on the stack; the JSON-ready report."""
    params = PresenceParams.of(config)
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-presence-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    ok = False
    try:
        unary = await run_unary_baseline(
            config,
            work_dir,
            cpu,
            callers=params.concurrency,
            channels=params.channels,
            payload_bytes=heartbeat_response_bytes(),
        )
        async with stack_targets(config, work_dir) as targets:
            measurements = await _measure(config, params, cpu, targets, unary)
        ok = True
        return build_presence_report(
            measurements, machine=machine, parameters=_parameters(config, params, targets)
        )
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


async def _measure(
    config: BenchConfig,
    params: PresenceParams,
    cpu: procstat.CpuBook,
    targets: StackTargets,
    unary: LoadResult,
) -> PresenceMeasurements:
    if targets.presence_target is None:
        raise RuntimeError("this stack has no svc_presence")
    pids = {**targets.pids, "bench_client": os.getpid()}
    metrics_urls = [targets.presence_metrics_url] if targets.presence_metrics_url else []
    keys_channel = grpc.aio.insecure_channel(targets.keys_target)
    channels = [own_connection(targets.presence_target, i) for i in range(params.channels)]
    stats = RedisStats(targets.redis_url) if targets.redis_url else None
    watchers: list[Watcher] = []
    try:
        if stats is not None:
            await stats.start()
        keys = kgrpc.AccountServiceStub(keys_channel)
        stubs = [pgrpc.PresenceServiceStub(c) for c in channels]
        setup_begin, setup_end = cpu.hooks("setup", pids)
        await setup_begin()
        progress(f"setup: {params.users} users sign up")
        users = await sign_up_users(
            keys, count=params.users, run_tag=secrets.token_hex(3), targets=1
        )
        watched, others = users[0], users[1:]
        subscribers = others[: params.subscribers]
        mask = allowed_mask(params.subscribers, params.allowed)
        progress(f"setup: {len(others)} users come online")
        await heartbeats(stubs, others, len(others), params.concurrency)
        progress(
            f"setup: {params.allowed} of {params.subscribers} subscribers on the watched "
            "user's contact list"
        )
        await prepare_watched(stubs, watched, subscribers, mask)
        recorder = ChangeRecorder(watched=watched.account_id, allowed=params.allowed)
        progress(f"setup: {params.subscribers} subscriptions over {params.channels} channels")
        watchers = await open_watchers(subscribers, mask, stubs, recorder)
        await setup_end()

        written_at: list[dict[str, int]] = []

        async def mark() -> None:
            if metrics_urls:
                written_at.append(await documents_written(metrics_urls))

        begin, end = cpu.hooks("heartbeat", pids)
        progress(f"heartbeat: {params.concurrency} closed-loop callers")
        load = await heartbeat_phase(
            stubs,
            others,
            concurrency=params.concurrency,
            window=Window.after(config.warmup_s, config.duration_s),
            on_start=[begin, mark],
            on_end=[end, mark],
        )
        progress(f"heartbeat cost: {params.probe_heartbeats} heartbeats, then idle")
        hb_cost, _ = await counted(
            stats,
            lambda: heartbeats(stubs, others, params.probe_heartbeats, params.concurrency),
            {},
        )
        background: dict[str, float] = {}
        if stats is not None and hb_cost is not None:
            background = await stats.idle_rate(min(hb_cost.seconds, IDLE_MAX_SECONDS))
            hb_cost = RedisCost(hb_cost.units, hb_cost.seconds, hb_cost.calls, background)
        progress(f"fanout: {params.toggles} online/offline toggles to {params.subscribers}")
        fanout = await fanout_phase(
            stubs[0],
            watched,
            recorder,
            toggles=params.toggles,
            sweep_interval_s=_sweep_interval(targets),
            stats=stats,
            background=background,
            cpu_hooks=cpu.hooks("fanout", pids),
            metrics_urls=metrics_urls,
        )
        return PresenceMeasurements(
            baseline_unary=unary,
            heartbeat=load,
            heartbeat_cost=hb_cost,
            renewal_cost=fanout.renewal_cost,
            renewal_events=fanout.renewal_events,
            renewal_publishes=fanout.renewal_publishes,
            change_publishes=fanout.publishes,
            change_cost=fanout.cost,
            changes=fanout.changes,
            allowed=params.allowed,
            hidden=params.hidden,
            hidden_deliveries=recorder.hidden_deliveries,
            change_events=fanout.events,
            duplicates=recorder.duplicates,
            unexpected=recorder.unexpected,
            snapshots={k: dict(v) for k, v in recorder.snapshots.items()},
            heartbeat_db_documents=_delta(*written_at) if len(written_at) == 2 else None,
            fanout_db_documents=fanout.db_documents,
            cpu_seconds=cpu.phases,
            stream_errors=[w.error for w in watchers if w.error],
            aborted=fanout.aborted,
        )
    finally:
        await close_watchers(watchers)
        if stats is not None:
            await stats.close()
        await keys_channel.close(None)
        for channel in channels:
            await channel.close(None)


def _sweep_interval(targets: StackTargets) -> float:
    """The stack's sweep interval if this run started it, else the default."""
    known = (targets.presence_settings or {}).get("sweep_interval_seconds")
    if isinstance(known, int | float):
        return float(known)
    return PresenceServiceSettings().sweep_interval_seconds


def _parameters(
    config: BenchConfig, params: PresenceParams, targets: StackTargets
) -> dict[str, Any]:
    return {
        "scenario": "presence",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "users": params.users,
        "heartbeat_users": params.users - 1,
        "concurrency": params.concurrency,
        "channels": params.channels,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "probe_heartbeats": params.probe_heartbeats,
        "watched_renewals": WATCHED_RENEWALS,
        "subscribers": params.subscribers,
        "allowed_subscribers": params.allowed,
        "hidden_subscribers": params.hidden,
        "toggles": params.toggles,
        "offline_spread_s": _sweep_interval(targets),
        "change_timeout_s": CHANGE_TIMEOUT_SECONDS,
        "baseline_unary_callers": params.concurrency,
        "baseline_unary_channels": params.channels,
        "baseline_unary_payload_bytes": heartbeat_response_bytes(),
        "redis_known": targets.redis_url is not None,
        # TTL, sweep interval and the rest, when this run started the stack.
        "presence_settings": targets.presence_settings,
    }
