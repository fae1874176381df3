"""``parley bench``: the baseline, then the stack phases, then the report.

Order: the bare gRPC baseline first (its own server process; the stack, if
this run starts one, is not running yet), then the stack: setup (users,
conversations, streams synced, prefill), the thin durable service (its own
server process writing to the stack's database) right before send, so the
database is as warm and as quiet for both, then send, deliver at half the
measured send rate, fetch. Connect streams stay open through all stack
phases, as the devices of online users would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import yaml

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.config import ConfigError, Settings, load_settings
from parley_dev.bench import procstat
from parley_dev.bench.baseline import BaselineServer, push_phase, unary_phase
from parley_dev.bench.config import BenchConfig, EventLoop
from parley_dev.bench.db_writes import WriteBook
from parley_dev.bench.discovery import discover_stack_pids
from parley_dev.bench.load import Hook, LoadResult, Window
from parley_dev.bench.phases import (
    Messaging,
    deliver_phase,
    fetch_phase,
    prefill,
    send_phase,
)
from parley_dev.bench.population import BodyCodec, pair_up, sign_up_users, wire_sizes
from parley_dev.bench.profile import Profiler, find_py_spy
from parley_dev.bench.report import Measurements, build_report, machine_info
from parley_dev.bench.stats import half_rate
from parley_dev.bench.streams import (
    DeliveryRecorder,
    DeviceStream,
    close_streams,
    open_streams,
    stream_errors,
)
from parley_dev.bench.thin_durable import (
    running_thin_durable,
    thin_durable_phase,
    thin_durable_stats,
)
from parley_dev.layout import deep_merge
from parley_dev.limits import unreached_limits

T = TypeVar("T")
# Streams left open by a crashed bench must not hold up the stack's stop for long.
STACK_SHUTDOWN_GRACE_SECONDS = 2.0


def run_on_loop(main: Callable[[], Awaitable[T]], loop: EventLoop) -> T:
    async def wrapper() -> T:
        return await main()

    if loop == "uvloop":
        import uvloop

        return uvloop.run(wrapper())
    return asyncio.run(wrapper())


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_baselines(
    config: BenchConfig, work_dir: Path, cpu: procstat.CpuBook, *, callers: int, streams: int
) -> tuple[Any, Any]:
    """The bare-gRPC baselines of a run: unary calls, then a push to streams,
    on a server process of their own, with the CPU each phase used."""
    send_bytes, event_bytes = wire_sizes(config.body_bytes)
    async with _baseline_server(config, work_dir) as (baseline, channel):
        pids = {"bench_client": os.getpid(), "baseline_server": baseline.process.pid or 0}
        begin, end = cpu.hooks("baseline_unary", pids)
        progress(f"baseline unary: {callers} callers")
        unary = await unary_phase(
            channel,
            callers=callers,
            payload_bytes=send_bytes,
            window=Window.after(config.warmup_s, config.duration_s),
            on_start=[begin],
            on_end=[end],
        )
        begin, end = cpu.hooks("baseline_push", pids)
        progress(f"baseline push: {streams} streams")
        push = await push_phase(
            channel,
            streams=streams,
            payload_bytes=event_bytes,
            window=Window.after(config.warmup_s, config.duration_s),
            on_start=[begin],
            on_end=[end],
        )
    return unary, push


async def run_unary_baseline(
    config: BenchConfig,
    work_dir: Path,
    cpu: procstat.CpuBook,
    *,
    callers: int,
    channels: int,
    payload_bytes: int,
) -> LoadResult:
    """The bare-gRPC unary baseline alone: ``callers`` closed-loop callers spread
    over ``channels`` connections (as the load it is compared with), echoing
    ``payload_bytes``; CPU recorded as phase ``baseline_unary``."""
    async with _baseline_server(config, work_dir) as (baseline, first):
        extra = [own_connection(baseline.target, i) for i in range(1, channels)]
        try:
            pids = {"bench_client": os.getpid(), "baseline_server": baseline.process.pid or 0}
            begin, end = cpu.hooks("baseline_unary", pids)
            progress(f"baseline unary: {callers} callers over {channels} channels")
            window = Window.after(config.warmup_s, config.duration_s)
            shares = [callers // channels + (i < callers % channels) for i in range(channels)]
            results = await asyncio.gather(
                *(
                    unary_phase(
                        channel,
                        callers=share,
                        payload_bytes=payload_bytes,
                        window=window,
                        # One set of hooks: the window's edges are the same for all.
                        on_start=[begin] if i == 0 else [],
                        on_end=[end] if i == 0 else [],
                    )
                    for i, (channel, share) in enumerate(zip([first, *extra], shares, strict=True))
                    if share > 0
                )
            )
        finally:
            for channel in extra:
                await channel.close(None)
    merged = LoadResult(window.seconds)
    for result in results:
        merged.completed += result.completed
        merged.latencies_ns.extend(result.latencies_ns)
        merged.errors.update(result.errors)
    return merged


def own_connection(target: str, index: int) -> grpc.aio.Channel:
    """A channel on its own HTTP/2 connection.

    Channels with the same target and arguments share one connection (the
    global subchannel pool): a local pool and a distinct argument keep them apart.
    """
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), ("parley.bench.channel", index)]
    )


@contextlib.asynccontextmanager
async def _baseline_server(
    config: BenchConfig, work_dir: Path
) -> AsyncIterator[tuple[BaselineServer, grpc.aio.Channel]]:
    baseline = BaselineServer(work_dir=work_dir, loop=config.loop)
    progress(f"baseline server on {baseline.target} ({config.loop})")
    async with grpc.aio.insecure_channel(baseline.target) as channel:
        await baseline.start(channel)
        try:
            yield baseline, channel
        finally:
            await baseline.stop()


async def bench(config: BenchConfig) -> dict[str, Any]:
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    ok = False
    try:
        unary, push = await run_baselines(
            config, work_dir, cpu, callers=config.concurrency, streams=2 * config.pairs
        )
        measurements = await _stack_phases(config, work_dir, cpu, unary, push)
        ok = True
        return build_report(measurements, machine=machine, parameters=config.parameters())
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


@dataclass(frozen=True)
class StackTargets:
    keys_target: str
    message_targets: list[str]
    # Component name -> PID, for CPU accounting.
    pids: dict[str, int]
    # svc_message's /metrics URLs: known only for a stack this run started.
    message_metrics_urls: list[str] = field(default_factory=list)
    presence_target: str | None = None
    # svc_presence's /metrics URL: known only for a stack this run started.
    presence_metrics_url: str | None = None
    # The stack's Redis (for INFO commandstats); None when not known.
    redis_url: str | None = None
    # The stack's presence settings (TTL, sweep interval) when this run started it.
    presence_settings: dict[str, Any] | None = None
    # The stack's database server (for the thin durable service); None when not known.
    mongo_uri: str | None = None
    media_target: str | None = None
    # svc_media's /metrics URL: known only for a stack this run started.
    media_metrics_url: str | None = None
    # The stack's media section (multipart threshold, ...) when known.
    media_settings: dict[str, Any] | None = None
    # The stack's s3 config section (endpoint, bucket, key files); None when not known.
    s3: dict[str, Any] | None = None
    # The stack's whole config (the history scenario runs the archiver against it).
    settings: Settings | None = None
    search_target: str | None = None
    search_metrics_url: str | None = None
    # The database holding the services' collections (the stack's mongo.database).
    mongo_database: str | None = None


@contextlib.asynccontextmanager
async def stack_targets(config: BenchConfig, work_dir: Path) -> AsyncIterator[StackTargets]:
    """The stack to load: started here (and stopped after) with --start, else found."""
    stack = None
    if config.start:
        from parley_dev.stack import LocalStack

        loop_config = {"server": {"event_loop": config.loop}}
        stack = LocalStack.with_free_ports(
            root=work_dir / "stack",
            message_instances=config.message_instances,
            shutdown_grace_seconds=STACK_SHUTDOWN_GRACE_SECONDS,
            extra_config=deep_merge(
                {
                    "keys": loop_config,
                    "message": loop_config,
                    "presence": loop_config,
                    "media": loop_config,
                    "search": loop_config,
                    # The bench's own load is no abuse: every limit is still taken
                    # (its cost is in the figures), none refuses (bench/README.md).
                    "limits": unreached_limits(),
                },
                _scenario_config(config),
            ),
        )
        progress(f"starting a local stack in {stack.root}")
        await stack.start()
        targets = StackTargets(
            keys_target=stack.keys_target,
            message_targets=list(stack.message_targets),
            pids={name: stack.process(name).pid or 0 for name in stack.component_names},
            message_metrics_urls=list(stack.message_metrics_urls),
            presence_target=stack.presence_target,
            presence_metrics_url=stack.presence_metrics_url,
            redis_url=stack.redis_url,
            mongo_uri=stack.mongo_uri,
            presence_settings=stack.settings.presence.model_dump(mode="json", exclude={"server"}),
            media_target=stack.media_target,
            media_metrics_url=stack.media_metrics_url,
            media_settings=stack.settings.media.model_dump(mode="json", exclude={"server"}),
            s3=stack.settings.s3.model_dump(mode="json"),
            settings=stack.settings,
            search_target=stack.search_target,
            search_metrics_url=stack.search_metrics_url,
            mongo_database=stack.settings.mongo.database,
        )
    else:
        message_targets = list(config.message_targets)
        stack_pids, notes = discover_stack_pids(
            config.keys_target, message_targets, config.data_dir
        )
        s3 = _configured_section(config.data_dir, "s3")
        extra: dict[str, int] = {}
        if config.scenario == "presence":
            extra["svc_presence"] = _port(config.presence_target)
        if config.scenario == "media":
            extra["svc_media"] = _port(config.media_target)
        if config.scenario in ("media", "history"):
            s3_port = urlsplit(str((s3 or {}).get("endpoint_url", ""))).port
            if s3_port is not None:
                extra["seaweedfs"] = s3_port
        if config.scenario == "search":
            extra["svc_search"] = _port(config.search_target)
        found = procstat.pids_listening_on(extra.values())
        for name, port in extra.items():
            if port in found:
                stack_pids[name] = found[port]
            else:
                notes.append(f"no listening process found for {name}: CPU not measured")
        for note in notes:
            progress(note)
        targets = StackTargets(
            keys_target=config.keys_target,
            message_targets=message_targets,
            pids=stack_pids,
            presence_target=config.presence_target,
            redis_url=_configured_url(config.data_dir, "redis", "url"),
            mongo_uri=_configured_url(config.data_dir, "mongo", "uri"),
            media_target=config.media_target,
            media_settings=_configured_section(config.data_dir, "media"),
            s3=s3,
            settings=_configured_settings(config.data_dir),
            search_target=config.search_target,
            mongo_database=(_configured_section(config.data_dir, "mongo") or {}).get(
                "database", "parley"
            ),
        )
    targets.pids.update(config.pids)
    try:
        yield targets
    finally:
        if stack is not None:
            progress("stopping the local stack")
            await stack.stop()


def _scenario_config(config: BenchConfig) -> dict[str, Any]:
    """What a scenario changes in the stack it starts."""
    if config.scenario != "history":
        return {}
    # The history scenario measures the tiers: the recent cache would answer
    # pages from Redis instead, and the bench runs the archiver itself, with
    # its clock, so the services' own archiver stays off.
    return {"message": {"recent_cache_messages": 0}, "archive": {"enabled": False}}


def _configured_settings(data_dir: Path) -> Settings | None:
    """The config of the running `parley up` whose data dir this is."""
    path = data_dir / "parley.yaml"
    if not path.exists():
        return None
    try:
        return load_settings(path, environ={})
    except ConfigError:
        return None


def _configured_section(data_dir: Path, section: str) -> dict[str, Any] | None:
    """A section of the config the running `parley up` whose data dir this is wrote."""
    try:
        tree = yaml.safe_load((data_dir / "parley.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    part = tree.get(section) if isinstance(tree, dict) else None
    return part if isinstance(part, dict) else None


def _configured_url(data_dir: Path, section: str, key: str) -> str | None:
    """Redis's or the database's URL in the running `parley up` whose data dir this is."""
    url = (_configured_section(data_dir, section) or {}).get(key)
    return url if isinstance(url, str) else None


def _port(target: str) -> int:
    return int(target.rsplit(":", 1)[1])


async def _stack_phases(
    config: BenchConfig, work_dir: Path, cpu: procstat.CpuBook, unary: LoadResult, push: LoadResult
) -> Measurements:
    async with stack_targets(config, work_dir) as targets, contextlib.AsyncExitStack() as stack:
        thin: ThinDurable | None = None
        if targets.mongo_uri is None:
            progress("the stack's database is not known: no thin durable baseline (use --data-dir)")
        else:
            # Started before setup, so that its start-up is not in anything measured.
            server, channel = await stack.enter_async_context(
                running_thin_durable(
                    work_dir=work_dir, loop=config.loop, mongo_uri=targets.mongo_uri
                )
            )
            thin = ThinDurable(channel=channel, pid=server.process.pid or 0)
        return await _measure_stack(
            config,
            cpu,
            unary,
            push,
            targets.keys_target,
            targets.message_targets,
            targets.pids,
            thin,
            targets.message_metrics_urls,
        )


@dataclass(frozen=True)
class ThinDurable:
    channel: grpc.aio.Channel
    pid: int


async def _thin_durable(
    config: BenchConfig, cpu: procstat.CpuBook, pids: Mapping[str, int], thin: ThinDurable | None
) -> tuple[LoadResult | None, dict[str, int] | None]:
    """The thin durable phase, with the same callers and payload as send; its batches."""
    if thin is None:
        return None, None
    begin, end = cpu.hooks("thin_durable", {**pids, "thin_durable_server": thin.pid})
    at_edges: list[dict[str, int]] = []

    async def mark() -> None:
        at_edges.append(await thin_durable_stats(thin.channel))

    progress(f"thin durable: {config.concurrency} closed-loop callers")
    result = await thin_durable_phase(
        thin.channel,
        callers=config.concurrency,
        payload_bytes=wire_sizes(config.body_bytes)[0],
        window=Window.after(config.warmup_s, config.duration_s),
        on_start=[begin, mark],
        on_end=[end, mark],
    )
    if len(at_edges) != 2:
        return result, None
    return result, {k: at_edges[1][k] - at_edges[0][k] for k in at_edges[0]}


async def _measure_stack(
    config: BenchConfig,
    cpu: procstat.CpuBook,
    unary: LoadResult,
    push: LoadResult,
    keys_target: str,
    message_targets: list[str],
    stack_pids: dict[str, int],
    thin: ThinDurable | None,
    metrics_urls: Sequence[str],
) -> Measurements:
    pids = {**stack_pids, "bench_client": os.getpid()}
    writes = WriteBook(metrics_urls)
    channels = [grpc.aio.insecure_channel(t) for t in [keys_target, *message_targets]]
    codec = BodyCodec(run=secrets.token_bytes(4), size=config.body_bytes)
    recorder = DeliveryRecorder(codec)
    streams: list[DeviceStream] = []
    profiler: Profiler | None = None
    try:
        keys = kgrpc.AccountServiceStub(channels[0])
        stubs = [mgrpc.MessageServiceStub(c) for c in channels[1:]]
        setup_begin, setup_end = cpu.hooks("setup", pids)
        await setup_begin()
        progress(f"setup: {2 * config.pairs} users, {config.pairs} conversations")
        users = await sign_up_users(
            keys, count=2 * config.pairs, run_tag=secrets.token_hex(3), targets=len(stubs)
        )
        pairs = await pair_up(stubs, users)
        streams = await open_streams(users, stubs, recorder)
        messaging = Messaging(stubs=stubs, pairs=pairs, codec=codec, recorder=recorder)
        fetch_pairs = pairs[: config.fetch_conversations]
        await prefill(messaging, fetch_pairs)
        await setup_end()

        thin_durable, thin_durable_batches = await _thin_durable(config, cpu, pids, thin)

        window = Window.after(config.warmup_s, config.duration_s)
        events_at: list[int] = []

        async def mark_events() -> None:
            events_at.append(recorder.message_events)

        begin, end = cpu.hooks("send", pids)
        on_start, on_end = [begin, mark_events, writes.hook()], [end, mark_events, writes.hook()]
        if config.profile:
            profiler = _profiler(config)
            if profiler is not None:
                on_start.append(_profile_hook(profiler, stack_pids, config.duration_s))
        progress(f"send: {config.concurrency} closed-loop senders")
        send = await send_phase(
            messaging,
            concurrency=config.concurrency,
            window=window,
            on_start=on_start,
            on_end=on_end,
        )
        if profiler is not None:
            await profiler.finish(config.duration_s)

        rate = config.deliver_rate or half_rate(send.rate)
        begin, end = cpu.hooks("deliver", pids)
        progress(f"deliver: open loop at {rate:,.0f} sends/s")
        deliver = await deliver_phase(
            messaging,
            rate=rate,
            warmup_s=config.warmup_s,
            duration_s=config.duration_s,
            max_in_flight=config.max_in_flight,
            on_start=[begin, writes.hook()],
            on_end=[end, writes.hook()],
        )

        await prefill(messaging, fetch_pairs)
        begin, end = cpu.hooks("fetch", pids)
        progress(f"fetch: {config.readers} readers over {len(fetch_pairs)} conversations")
        fetch = await fetch_phase(
            messaging,
            readers=config.readers,
            pairs=fetch_pairs,
            window=Window.after(config.warmup_s, config.duration_s),
            on_start=[begin],
            on_end=[end],
        )
        return Measurements(
            baseline_unary=unary,
            baseline_push=push,
            thin_durable=thin_durable,
            thin_durable_batches=thin_durable_batches,
            send=send,
            send_window_events=events_at[1] - events_at[0] if len(events_at) == 2 else 0,
            deliver=deliver,
            recorder=recorder,
            fetch=fetch,
            cpu_seconds=cpu.phases,
            db_writes_per_send={
                "send": writes.per_operation(0, send.completed),
                "deliver": writes.per_operation(1, deliver.load.completed),
            },
            stream_errors=stream_errors(streams),
            profile_files=profiler.files if profiler else [],
            profile_notes=_profile_notes(config, profiler),
        )
    finally:
        if profiler is not None:
            await profiler.abort()
        await close_streams(streams)
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


def _profile_hook(profiler: Profiler, stack_pids: Mapping[str, int], duration_s: float) -> Hook:
    targets = {n: p for n, p in stack_pids.items() if n.startswith("svc_message") and p > 0}
    if not targets:
        profiler.problems.append("no svc_message PID known (use --pid svc_message-0=PID)")

    async def start() -> None:
        await profiler.start(targets, duration_s)

    return start


def _profile_notes(config: BenchConfig, profiler: Profiler | None) -> list[str]:
    if not config.profile:
        return []
    if profiler is None:
        return ["py-spy is not installed (uv pip install py-spy): the run was not profiled"]
    return [
        "py-spy sampled svc_message during the send phase: figures of this run are perturbed",
        *profiler.problems,
    ]
