"""The ``group`` scenario: time from send to delivery on every live stream of one big group.

Setup (not measured, CPU recorded): N users sign up, one device each; user 0
creates a group with all the others; the first S users (the owner included:
its own device gets the copy that multi-device sync sends) open a Connect
stream each, spread over a few gRPC channels (each its own HTTP/2 connection)
per svc_message target, and wait for SyncComplete. Streams ack as the SDK
does (``parley_sdk.AckPolicy``: at most one ack a second), so the
delivered watermarks move as they would (``--group-no-ack``: never, to
isolate the send and the push from those writes).

Measured: the owner sends at a fixed rate (open loop, as the deliver phase of
the messaging scenario): a warm-up, then M measured messages. Each body
carries the client's perf_counter_ns at the send call; each stream that
receives the message records its arrival. For every (message, stream): the
send-to-arrival time. Per message: the time until the last stream had it.
Beside them: the sends' ack latency, the arrivals per second on all streams,
and the bare gRPC baselines of the same run (push over as many streams, unary
with one caller, as the sends are one at a time).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.bench import procstat
from parley_dev.bench.config import BenchConfig
from parley_dev.bench.db_writes import documents_written
from parley_dev.bench.fanout import PHASE_GROUP, FanoutRecorder
from parley_dev.bench.group_report import GroupMeasurements, build_group_report
from parley_dev.bench.limits import MAX_GROUP_MEMBERS
from parley_dev.bench.load import (
    CALL_TIMEOUT_SECONDS,
    NS,
    LoadResult,
    OpenLoopResult,
    Window,
    open_loop,
)
from parley_dev.bench.population import BodyCodec, User, request_id, sign_up_users, wire_sizes
from parley_dev.bench.report import machine_info
from parley_dev.bench.runner import (
    StackTargets,
    progress,
    run_baselines,
    stack_targets,
)
from parley_dev.bench.streams import DeviceStream, close_streams, stream_errors

# Streams are opened this many at a time, each batch synced before the next,
# so setup does not flood the service with replays.
OPEN_BATCH = 64
# Creating a 1024-member group is one large write; give it time.
CREATE_TIMEOUT_SECONDS = 60.0
MAX_IN_FLIGHT = 64
# After the last send: how long to wait for deliveries still in flight.
DRAIN_SECONDS = 15.0
DRAIN_POLL_SECONDS = 0.05
BASELINE_UNARY_CALLERS = 1


@dataclass(frozen=True)
class GroupParams:
    members: int
    streams: int
    messages: int
    rate: float
    channels: int
    ack: bool

    @classmethod
    def of(cls, config: BenchConfig) -> GroupParams:
        members = min(config.group_members, MAX_GROUP_MEMBERS)
        return cls(
            members=members,
            streams=min(config.group_streams, members),
            messages=config.group_messages,
            rate=config.group_rate,
            channels=config.group_channels,
            ack=config.group_ack,
        )


def _own_connection(target: str, index: int) -> grpc.aio.Channel:
    # Channels with the same target and arguments share one connection (the
    # global subchannel pool): a local pool and a distinct argument keep them apart.
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), ("parley.bench.channel", index)]
    )


async def create_group(
    stub: mgrpc.MessageServiceAsyncStub, owner: User, members: Sequence[User]
) -> str:
    view = await stub.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=request_id(),
            title="bench group",
            member_account_ids=[m.account_id for m in members],
        ),
        metadata=owner.metadata,
        timeout=CREATE_TIMEOUT_SECONDS,
    )
    conversation_id: str = view.conversation.conversation_id
    return conversation_id


async def open_group_streams(
    users: Sequence[User],
    stubs: Sequence[Sequence[mgrpc.MessageServiceAsyncStub]],
    recorder: FanoutRecorder,
    *,
    ack: bool = True,
) -> list[DeviceStream]:
    """One stream per user, round-robin over the channels of its target, all synced."""
    streams: list[DeviceStream] = []
    try:
        for start in range(0, len(users), OPEN_BATCH):
            batch = []
            for index in range(start, min(start + OPEN_BATCH, len(users))):
                user = users[index]
                channels = stubs[user.target]
                stub = channels[index % len(channels)]
                batch.append(DeviceStream(user, stub, recorder, ack=ack))
            streams.extend(batch)
            for stream in batch:
                stream.open()
            await asyncio.gather(*(s.wait_synced() for s in batch))
    except BaseException:
        await close_streams(streams)
        raise
    return streams


@dataclass
class GroupSend:
    load: OpenLoopResult
    # Group message events that arrived on all streams inside the window.
    window_events: int
    drain_s: float
    # Documents svc_message wrote in the window, by "collection/op" (None: not
    # known, the stack was not started by this run).
    documents_written: dict[str, int] | None


async def send_to_group(
    stub: mgrpc.MessageServiceAsyncStub,
    owner: User,
    conversation_id: str,
    recorder: FanoutRecorder,
    *,
    params: GroupParams,
    warmup_s: float,
    cpu: procstat.CpuBook,
    pids: dict[str, int],
    metrics_urls: Sequence[str],
) -> GroupSend:
    codec = recorder.codec

    async def call(serial: int, measured: bool) -> None:
        body = codec.encode(
            phase=PHASE_GROUP, measured=measured, sent_ns=time.perf_counter_ns(), serial=serial
        )
        await stub.SendMessage(
            mpb.SendMessageRequest(
                request_id=request_id(),
                conversation_id=conversation_id,
                type=mpb.MESSAGE_TYPE_TEXT,
                body=body,
            ),
            metadata=owner.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        if measured:
            recorder.acked.add(serial)

    events_at: list[int] = []
    written_at: list[dict[str, int]] = []

    async def mark() -> None:
        events_at.append(recorder.message_events)
        if metrics_urls:
            written_at.append(await documents_written(metrics_urls))

    begin, end = cpu.hooks("group_send", pids)
    # Sends are due every 1/rate from `began` (as open_loop computes it); the
    # window starts on a due time and holds exactly `messages` of them.
    interval_ns = NS / params.rate
    began = time.perf_counter_ns()
    start = began + int(math.ceil(warmup_s * params.rate) * interval_ns)
    window = Window(start, start + int((params.messages - 0.5) * interval_ns))
    load = await open_loop(
        params.rate,
        call,
        window=window,
        warmup_start_ns=began,
        max_in_flight=MAX_IN_FLIGHT,
        on_start=[begin, mark],
        on_end=[end, mark],
    )
    drain_started = time.monotonic()
    deadline = drain_started + DRAIN_SECONDS
    # Polled: arrivals are counted by the stream readers, which know nothing of this wait.
    while recorder.missing(params.streams) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    written: dict[str, int] | None = None
    if len(written_at) == 2:
        before, after = written_at
        written = {
            key: count - before.get(key, 0)
            for key, count in sorted(after.items())
            if count > before.get(key, 0)
        }
    return GroupSend(
        load=load,
        window_events=events_at[1] - events_at[0] if len(events_at) == 2 else 0,
        drain_s=time.monotonic() - drain_started,
        documents_written=written,
    )


async def group_bench(config: BenchConfig) -> dict[str, Any]:
    """The baselines, then the group on the stack; the JSON-ready report."""
    params = GroupParams.of(config)
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-group-"))
    machine = machine_info()
    cpu = procstat.CpuBook()
    ok = False
    try:
        unary, push = await run_baselines(
            config, work_dir, cpu, callers=BASELINE_UNARY_CALLERS, streams=params.streams
        )
        async with stack_targets(config, work_dir) as targets:
            measurements = await _measure_group(config, params, cpu, targets, unary, push)
        ok = True
        return build_group_report(
            measurements, machine=machine, parameters=_parameters(config, params)
        )
    finally:
        if ok and not config.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            progress(f"logs and data kept in {work_dir}")


async def _measure_group(
    config: BenchConfig,
    params: GroupParams,
    cpu: procstat.CpuBook,
    targets: StackTargets,
    unary: LoadResult,
    push: LoadResult,
) -> GroupMeasurements:
    pids = {**targets.pids, "bench_client": os.getpid()}
    keys_channel = grpc.aio.insecure_channel(targets.keys_target)
    channels = [
        [_own_connection(target, i) for i in range(params.channels)]
        for target in targets.message_targets
    ]
    recorder = FanoutRecorder(BodyCodec(run=secrets.token_bytes(4), size=config.body_bytes))
    streams: list[DeviceStream] = []
    try:
        keys = kgrpc.AccountServiceStub(keys_channel)
        stubs = [[mgrpc.MessageServiceStub(c) for c in per_target] for per_target in channels]
        setup_begin, setup_end = cpu.hooks("setup", pids)
        await setup_begin()
        progress(f"setup: {params.members} users sign up")
        users = await sign_up_users(
            keys, count=params.members, run_tag=secrets.token_hex(3), targets=len(stubs)
        )
        owner = users[0]
        progress(f"setup: a group of {params.members}")
        conversation_id = await create_group(stubs[owner.target][0], owner, users[1:])
        progress(
            f"setup: {params.streams} streams over {params.channels} channels "
            f"x {len(channels)} targets"
        )
        streams = await open_group_streams(users[: params.streams], stubs, recorder, ack=params.ack)
        await setup_end()
        progress(
            f"send: {params.messages} messages at {params.rate:g}/s "
            f"after {config.warmup_s:g} s warm-up"
        )
        sent = await send_to_group(
            stubs[owner.target][0],
            owner,
            conversation_id,
            recorder,
            params=params,
            warmup_s=config.warmup_s,
            cpu=cpu,
            pids=pids,
            metrics_urls=targets.message_metrics_urls,
        )
        return GroupMeasurements(
            baseline_unary=unary,
            baseline_push=push,
            send=sent.load,
            window_events=sent.window_events,
            drain_s=sent.drain_s,
            documents_written=sent.documents_written,
            recorder=recorder,
            streams=params.streams,
            cpu_seconds=cpu.phases,
            stream_errors=stream_errors(streams),
        )
    finally:
        await close_streams(streams)
        await keys_channel.close(None)
        for per_target in channels:
            for channel in per_target:
                await channel.close(None)


def _parameters(config: BenchConfig, params: GroupParams) -> dict[str, Any]:
    send_bytes, event_bytes = wire_sizes(config.body_bytes)
    return {
        "scenario": "group",
        "quick": config.quick,
        "loop": config.loop,
        "started_stack": config.start,
        "message_instances": config.message_instances
        if config.start
        else len(config.message_targets),
        "group_members": params.members,
        "streams": params.streams,
        "channels_per_target": params.channels,
        "messages": params.messages,
        "send_rate": params.rate,
        "max_in_flight": MAX_IN_FLIGHT,
        "warmup_s": config.warmup_s,
        "baseline_duration_s": config.duration_s,
        "body_bytes": config.body_bytes,
        "baseline_unary_callers": BASELINE_UNARY_CALLERS,
        "baseline_unary_payload_bytes": send_bytes,
        "baseline_push_streams": params.streams,
        "baseline_push_payload_bytes": event_bytes,
        "streams_ack": params.ack,
    }
