"""The ``regions`` scenario: cross-region send -> delivery and replication lag
at an injected RTT, beside a bare gRPC ping through the same proxy.

Only with ``--start``: the run starts two regions (eu, us; parley_dev.regions)
in its own event loop, since the fault proxies between them live there and
are set from here: ``proxy(eu, us)`` and ``proxy(us, eu)`` each get the RTT
(half of it each way of each link).

Setup (not measured, CPU recorded): alice and dave homed in eu (signed up at
eu), bob and carol homed in us (signed up at us). alice creates a group of
the four: it is owned by eu. alice holds a Connect stream at eu, carol one at
us (her region holds a replica of the group).

Phases, each bounded in count and time:

- ping: health Check of eu's svc_message, one caller, N calls straight to it
  and N through the us->eu proxy that forwarded writes cross: the bare RTT.
- local: dave sends at eu (the owner region, no forward), M messages at a
  fixed rate; each arrival at alice's eu stream is timed from the send call.
  The in-region baseline of the same run.
- cross: bob sends at us, M messages at the same rate. us forwards each send
  to eu (one proxy round trip); alice's arrival at eu is the forwarded
  send -> delivery; carol's arrival at us (eu replicates the message to us
  through the eu->us proxy, us wakes her stream) the replicated one.
- load: G more eu-owned groups, each of an eu owner and one us member (all G
  us members are one account with one stream at us): the owners send at eu
  at a paced rate for D seconds. Each arrival at us is timed from the send's
  ack at eu: the replication lag as a device sees it. eu's svc_message
  metrics (``parley_replication_lag_seconds`` and ``parley_replication_backlog``
  for peer us) are sampled every 0.1 s meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.common.v1 import common_pb2 as cpb
from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.bench import procstat
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.load import (
    CALL_TIMEOUT_SECONDS,
    NS,
    Hook,
    LoadResult,
    OpenLoopResult,
    Window,
    open_loop,
)
from parley_dev.bench.population import BodyCodec, User, bounded_gather, request_id
from parley_dev.bench.regions_report import (
    PHASE_CROSS,
    PHASE_LOAD,
    PHASE_LOCAL,
    RegionsMeasurements,
    build_regions_report,
)
from parley_dev.bench.regions_watch import (
    ArrivalBook,
    MetricSampler,
    ReplicatedWakes,
    ReplicationCounters,
    replication_between,
    wake_split,
)
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import STACK_SHUTDOWN_GRACE_SECONDS, progress
from parley_dev.bench.streams import DeviceStream, close_streams, stream_errors
from parley_dev.limits import unreached_limits
from parley_dev.regions import RegionsStack
from svc_message.domain.replicator import ReplicatorSettings

EU, US = "eu", "us"
MAX_IN_FLIGHT = 64
# After the last send of a phase: how long to wait for arrivals still under way
# (the load phase's replication may be far behind when its sends stop).
DRAIN_SECONDS = 20.0
LOAD_DRAIN_SECONDS = 60.0
DRAIN_POLL_SECONDS = 0.05
METRICS_INTERVAL_SECONDS = 0.1
CREATE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RegionsParams:
    rtt_ms: float
    pings: int
    messages: int
    rate: float
    load_groups: int
    load_rate: float
    load_seconds: float

    @classmethod
    def of(cls, config: BenchConfig) -> RegionsParams:
        return cls(
            rtt_ms=config.regions_rtt_ms,
            pings=config.regions_pings,
            messages=config.regions_messages,
            rate=config.regions_rate,
            load_groups=config.regions_load_groups,
            load_rate=config.regions_load_rate,
            load_seconds=config.regions_load_seconds,
        )


@dataclass(frozen=True)
class Region:
    name: str
    keys: kgrpc.AccountServiceAsyncStub
    message: mgrpc.MessageServiceAsyncStub


# -- setup ------------------------------------------------------------------------------


async def sign_up(region: Region, handle: str, index: int) -> User:
    """An account homed in ``region`` (the region the sign-up reaches)."""
    reply = await region.keys.SignUp(
        kpb.SignUpRequest(
            request_id=request_id(),
            handle=handle,
            display_name=handle,
            device=kpb.NewDevice(name="bench", platform=cpb.PLATFORM_CLI),
        ),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    if reply.account.home_region != region.name:
        raise RuntimeError(f"{handle} was homed in {reply.account.home_region!r}, not {region}")
    return User(
        index=index,
        handle=handle,
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        metadata=(("authorization", f"Bearer {reply.credentials.access_token}"),),
        target=0,
    )


async def create_group(region: Region, owner: User, members: Sequence[User]) -> str:
    view = await region.message.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=request_id(),
            title="bench regions",
            member_account_ids=[m.account_id for m in members],
        ),
        metadata=owner.metadata,
        timeout=CREATE_TIMEOUT_SECONDS,
    )
    conversation_id: str = view.conversation.conversation_id
    return conversation_id


# -- phases -----------------------------------------------------------------------------


async def ping_phase(channel: grpc.aio.Channel, count: int) -> LoadResult:
    """``count`` health Checks one after another; every one is timed."""
    stub = health_pb2_grpc.HealthStub(channel)
    started = time.perf_counter_ns()
    result = LoadResult(0.0)
    for _ in range(count):
        began = time.perf_counter_ns()
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
            continue
        result.completed += 1
        result.latencies_ns.append(time.perf_counter_ns() - began)
    result.window_s = max((time.perf_counter_ns() - started) / NS, 1e-9)
    return result


@dataclass(frozen=True)
class Sender:
    """Who sends a phase's messages, where, to which groups (round robin)."""

    region: Region
    users: Sequence[User]
    conversations: Sequence[str]


async def paced_sends(
    sender: Sender,
    codec: BodyCodec,
    book: ArrivalBook,
    *,
    phase: int,
    rate: float,
    messages: int,
    warmup_s: float,
    cpu_hooks: tuple[Hook, Hook],
    expected: Callable[[], bool],
    drain_s: float = DRAIN_SECONDS,
) -> OpenLoopResult:
    """Open loop at ``rate``: a warm-up, then exactly ``messages`` measured
    sends; then wait (bounded) until ``expected()`` says every arrival came."""

    async def call(serial: int, measured: bool) -> None:
        turn = serial % len(sender.conversations)
        user = sender.users[turn % len(sender.users)]
        sent_ns = time.perf_counter_ns()
        body = codec.encode(phase=phase, measured=measured, sent_ns=sent_ns, serial=serial)
        await sender.region.message.SendMessage(
            mpb.SendMessageRequest(
                request_id=request_id(),
                conversation_id=sender.conversations[turn],
                type=mpb.MESSAGE_TYPE_TEXT,
                body=body,
            ),
            metadata=user.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        if measured:
            book.acked(phase, serial, sent_ns, time.perf_counter_ns())

    interval_ns = NS / rate
    began = time.perf_counter_ns()
    start = began + int(math.ceil(warmup_s * rate) * interval_ns)
    window = Window(start, start + int((messages - 0.5) * interval_ns))
    begin, end = cpu_hooks
    result = await open_loop(
        rate,
        call,
        window=window,
        warmup_start_ns=began,
        max_in_flight=MAX_IN_FLIGHT,
        on_start=[begin],
        on_end=[end],
    )
    deadline = time.monotonic() + drain_s
    # Polled: arrivals are counted by the stream readers, which know nothing of this wait.
    while not expected() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    return result


# -- the run ----------------------------------------------------------------------------


def _stack_config(config: BenchConfig) -> dict[str, Any]:
    loop = {"server": {"event_loop": config.loop}}
    return {
        "keys": loop,
        "message": loop,
        "presence": loop,
        "media": loop,
        "search": loop,
        # The bench's own load is no abuse (bench/README.md).
        "limits": unreached_limits(),
    }


async def regions_bench(config: BenchConfig) -> dict[str, Any]:
    """Two regions at the injected RTT, the ping, local, cross and load phases; the report."""
    if not config.start:
        raise RuntimeError(
            "--scenario regions needs --start: it sets the fault proxies between the "
            "regions it starts (a `parley up --regions` keeps its proxies in its own process)"
        )
    params = RegionsParams.of(config)
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-regions-"))
    machine = machine_info()
    ok = False
    harness = RegionsStack(
        root=work_dir / "regions",
        regions=[EU, US],
        shutdown_grace_seconds=STACK_SHUTDOWN_GRACE_SECONDS,
        extra_config=_stack_config(config),
    )
    try:
        progress(f"starting regions eu and us in {harness.root}")
        async with harness:
            for source, target in ((EU, US), (US, EU)):
                harness.proxy(source, target).set_rtt(params.rtt_ms)
            measurements = await _measure(config, params, harness)
        ok = True
        return build_regions_report(
            measurements, machine=machine, parameters=_parameters(config, params)
        )
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


def _pids(harness: RegionsStack) -> dict[str, int]:
    pids = {"bench_client": os.getpid()}
    for name in harness.names:
        stack = harness.region(name)
        for component in stack.component_names:
            if component.startswith(("svc_message", "svc_keys", "secantusdb", "redis")):
                pids[f"{name}/{component}"] = stack.process(component).pid or 0
    return pids


async def _measure(
    config: BenchConfig, params: RegionsParams, harness: RegionsStack
) -> RegionsMeasurements:
    cpu = procstat.CpuBook()
    pids = _pids(harness)
    eu_stack, us_stack = harness.region(EU), harness.region(US)
    channels = {
        "eu_keys": grpc.aio.insecure_channel(eu_stack.keys_target),
        "us_keys": grpc.aio.insecure_channel(us_stack.keys_target),
        "eu": grpc.aio.insecure_channel(eu_stack.message_targets[0]),
        "us": grpc.aio.insecure_channel(us_stack.message_targets[0]),
        "via_proxy": grpc.aio.insecure_channel(harness.peer_endpoint(US, EU)),
    }
    eu = Region(
        EU, kgrpc.AccountServiceStub(channels["eu_keys"]), mgrpc.MessageServiceStub(channels["eu"])
    )
    us = Region(
        US, kgrpc.AccountServiceStub(channels["us_keys"]), mgrpc.MessageServiceStub(channels["us"])
    )
    codec = BodyCodec(run=secrets.token_bytes(4), size=config.body_bytes)
    book = ArrivalBook(codec)
    streams: list[DeviceStream] = []
    sampler = MetricSampler(eu_stack.message_metrics_urls[0], peer=US)
    wakes = ReplicatedWakes(us_stack.redis_url)
    counters = ReplicationCounters(
        us_stack.message_metrics_urls[0], eu_stack.message_metrics_urls[0], peer=US
    )
    replication: dict[str, dict[str, float | None]] = {}
    try:
        await wakes.start()
        begin, end = cpu.hooks("setup", pids)
        await begin()
        tag = secrets.token_hex(3)
        progress("setup: 4 users in two regions, one eu-owned group, streams at eu and us")
        alice, dave = [
            await sign_up(eu, f"bench_{tag}_{n}", i) for i, n in enumerate(("alice", "dave"))
        ]
        bob, carol = [
            await sign_up(us, f"bench_{tag}_{n}", i) for i, n in enumerate(("bob", "carol"))
        ]
        group = await create_group(eu, alice, [bob, carol, dave])
        owners = await bounded_gather(
            params.load_groups, lambda i: sign_up(eu, f"bench_{tag}_owner{i}", i)
        )
        watcher = await sign_up(us, f"bench_{tag}_watcher", 0)
        load_groups = await bounded_gather(
            params.load_groups, lambda i: create_group(eu, owners[i], [watcher])
        )
        receivers = {alice.account_id: EU, carol.account_id: US, watcher.account_id: US}
        book.receivers.update(receivers)
        for user, stub in ((alice, eu.message), (carol, us.message), (watcher, us.message)):
            stream = DeviceStream(user, stub, book)
            streams.append(stream)
            stream.open()
        await asyncio.gather(*(s.wait_synced() for s in streams))
        await end()

        progress(f"ping: {params.pings} health Checks straight to eu, then through us->eu")
        ping_direct = await ping_phase(channels["eu"], params.pings)
        ping_proxy = await ping_phase(channels["via_proxy"], params.pings)

        warmup = config.warmup_s
        progress(f"local: dave sends {params.messages} at eu, {params.rate:g}/s")
        local = await paced_sends(
            Sender(eu, [dave], [group]),
            codec,
            book,
            phase=PHASE_LOCAL,
            rate=params.rate,
            messages=params.messages,
            warmup_s=warmup,
            cpu_hooks=cpu.hooks("local", pids),
            expected=lambda: book.complete(PHASE_LOCAL, [alice.account_id]),
        )
        before = await counters.read()
        progress(f"cross: bob sends {params.messages} at us (forwarded to eu), {params.rate:g}/s")
        cross = await paced_sends(
            Sender(us, [bob], [group]),
            codec,
            book,
            phase=PHASE_CROSS,
            rate=params.rate,
            messages=params.messages,
            warmup_s=warmup,
            cpu_hooks=cpu.hooks("cross", pids),
            expected=lambda: book.complete(PHASE_CROSS, [alice.account_id, carol.account_id]),
        )
        after = await counters.read()
        replication["cross"] = replication_between(before, after)
        load_messages = max(1, round(params.load_rate * params.load_seconds))
        progress(
            f"load: {load_messages} sends at eu, {params.load_rate:g}/s over "
            f"{params.load_groups} groups with a member in us"
        )
        sampler.start(METRICS_INTERVAL_SECONDS)
        load = await paced_sends(
            Sender(eu, owners, load_groups),
            codec,
            book,
            phase=PHASE_LOAD,
            rate=params.load_rate,
            messages=load_messages,
            warmup_s=min(warmup, 1.0),
            cpu_hooks=cpu.hooks("load", pids),
            expected=lambda: book.complete(PHASE_LOAD, [watcher.account_id]),
            drain_s=LOAD_DRAIN_SECONDS,
        )
        samples = await sampler.stop()
        replication["load"] = replication_between(after, await counters.read())
        to_wake, wake_to_stream = wake_split(
            book,
            wakes.last_before,
            phase=PHASE_CROSS,
            conversation_id=group,
            account=carol.account_id,
        )
        return RegionsMeasurements(
            ping_direct=ping_direct,
            ping_proxy=ping_proxy,
            local=local,
            cross=cross,
            load=load,
            book=book,
            eu_receiver=alice.account_id,
            us_receiver=carol.account_id,
            load_receiver=watcher.account_id,
            metric_samples=samples,
            replication=replication,
            send_to_replica_wake_ns=to_wake,
            replica_wake_to_stream_ns=wake_to_stream,
            proxy_bytes=_proxy_bytes(harness),
            cpu_seconds=cpu.phases,
            batch_seconds=ReplicatorSettings().batch_seconds,
            stream_errors=stream_errors(streams),
        )
    finally:
        await sampler.stop()
        await wakes.close()
        await close_streams(streams)
        for channel in channels.values():
            await channel.close(None)


def _proxy_bytes(harness: RegionsStack) -> dict[str, Mapping[str, int]]:
    """Bytes each pair's svc_message proxy relayed, each way."""
    return {
        f"{a}->{b}": {
            "bytes_up": link.stats.bytes_up,
            "bytes_down": link.stats.bytes_down,
            "connections": link.stats.connections,
        }
        for (a, b), link in harness.links.items()
    }


def _parameters(config: BenchConfig, params: RegionsParams) -> dict[str, Any]:
    return {
        "scenario": "regions",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "regions": [EU, US],
        "rtt_ms": params.rtt_ms,
        "pings": params.pings,
        "messages": params.messages,
        "send_rate": params.rate,
        "warmup_s": config.warmup_s,
        "load_groups": params.load_groups,
        "load_rate": params.load_rate,
        "load_seconds": params.load_seconds,
        "body_bytes": config.body_bytes,
        "replication_batch_seconds": ReplicatorSettings().batch_seconds,
        "metrics_interval_s": METRICS_INTERVAL_SECONDS,
        "drain_s_max": DRAIN_SECONDS,
        "load_drain_s_max": LOAD_DRAIN_SECONDS,
    }
