"""The whole stack on a Redis Cluster (3 masters, 3 replicas, node timeout
2 s), then SIGKILL of the master that serves a conversation's channel and a
watched user's presence.

Before the kill everything Redis does works on the cluster: live delivery
across two svc_message processes, presence online and offline, rate limits
of svc_message and svc_presence. After it, without restarting any service,
live delivery and presence come back less than a second after the replica
has taken over, so within 5 s when the cluster's own failover takes its
usual 3-4 s; sends made meanwhile are retried with their request_id like a
real client does, and no acknowledged message is lost or delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.presence.v1 import presence_pb2 as pb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_core.storage.liveness import PresenceKeys
from parley_dev.stack import LocalStack
from tests.chaos.clients import (
    Channels,
    ResilientStream,
    SendLog,
    assert_exactly_once_in_order,
    assert_history_exactly_once,
    metric,
    send_until_acked,
)
from tests.helpers import TEST_LIMITS
from tests.integration.test_presence import OFFLINE, ONLINE, Sub, settings
from tests.users import Device, all_messages, direct, error_reason, sign_up

pytestmark = pytest.mark.chaos

# What the issue asks: delivery and presence back within this after the kill.
RECOVERY_BUDGET_SECONDS = 5.0
# Parley's own share of it: from the cluster serving every slot again to
# delivery and presence being back. Redis' failover itself (node timeout 2 s)
# takes 3-4 s on an idle machine; on a loaded one it was seen at 4.8 s.
OWN_SHARE_SECONDS = 1.0
# Test limits low enough to be reached on purpose, on accounts of their own.
LIMITS = {
    "limits": {
        **TEST_LIMITS["limits"],
        "direct_create_per_account": {"burst": 2, "per_minute": 1},
        "contact_add_per_account": {"burst": 1, "per_minute": 1},
    }
}
SEND_EVERY_SECONDS = 0.2
HEARTBEAT_EVERY_SECONDS = 0.2


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    """A stack of its own: this test kills one of its Redis masters."""
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("failover_stack"),
        message_instances=2,
        shutdown_grace_seconds=2.0,
        extra_config=LIMITS,
        redis_cluster=True,
    ) as local:
        yield local


async def outcome(call: object) -> str:
    """ "" when the call went through, else its ErrorInfo reason (it must be a refusal)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        return error_reason(exc)
    return ""


async def limits_refuse(
    keys: kgrpc.AccountServiceStub, channels: Channels, presence: pgrpc.PresenceServiceStub
) -> bool:
    """Whether a limit of svc_message and one of svc_presence refuse a new
    account past their burst."""
    eve, peers = await sign_up(keys), [await sign_up(keys) for _ in range(3)]
    messages = channels.stub(channels.targets[0])
    for peer in peers[:2]:
        await direct(messages, eve, peer)
    third = await outcome(direct(messages, eve, peers[2]))
    await presence.AddContacts(
        pb.AddContactsRequest(account_ids=[peers[0].account_id]), metadata=eve.md
    )
    second = await outcome(
        presence.AddContacts(
            pb.AddContactsRequest(account_ids=[peers[1].account_id]), metadata=eve.md
        )
    )
    return third == second == "ERROR_REASON_RATE_LIMITED"


async def check_rate_limits(
    stack: LocalStack,
    keys: kgrpc.AccountServiceStub,
    channels: Channels,
    presence: pgrpc.PresenceServiceStub,
) -> int:
    """The limits refuse past their burst, with Redis' buckets; the attempts
    it took.

    A limiter that fell back to its own buckets during a failover asks Redis
    again at its first take after limits.fallback_seconds, so one account's
    takes may be split between the two (the limits loosen for a moment, by
    design) and a refusal may still come from the process's own bucket: the
    check is repeated with new accounts until Redis is in use again."""
    urls = (stack.message_metrics_urls[0], stack.presence_metrics_url)
    for attempt in range(1, 11):
        refused = await limits_refuse(keys, channels, presence)
        local = [await metric(url, "parley_rate_limit_local") for url in urls]
        if refused and local == [0, 0]:
            return attempt
        await asyncio.sleep(1.0)
    raise AssertionError(f"limits not enforced on Redis: refused {refused}, local {local}")


async def watched_on(stack: LocalStack, keys: kgrpc.AccountServiceStub, master: int) -> Device:
    """A new user whose presence lives on the cluster node ``master``."""
    shards = PresenceKeys(stack.settings.redis.cluster_presence_shards)
    assert stack.redis_cluster is not None
    for _ in range(60):
        user = await sign_up(keys)
        if await stack.redis_cluster.master_of(shards.account(user.account_id)) == master:
            return user
    raise AssertionError("no user's presence landed on the chosen master in 60 sign-ups")


class Arrivals:
    """When each body first reached a stream (polled: the stream keeps no times)."""

    def __init__(self, stream: ResilientStream) -> None:
        self.stream = stream
        self.at: dict[bytes, float] = {}
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        seen = 0
        while True:
            now = time.monotonic()
            for message in self.stream.messages[seen:]:
                self.at.setdefault(message.body, now)
            seen = len(self.stream.messages)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def watch_until(
    presence: pgrpc.PresenceServiceStub,
    viewer: Device,
    watched: Device,
    availability: int,
    *,
    deadline: float,
) -> float:
    """Subscribe (again after every UNAVAILABLE, as a client would) until the
    watched user shows ``availability``; when that was seen."""
    while True:
        sub = Sub(presence, viewer, [watched.account_id])
        try:
            await sub.wait_for(lambda s: bool(s.events) or s.error is not None, timeout=5)
            while sub.error is None:
                states = [p[1] for p in sub.snapshot] + [p[1] for p in sub.changes()]
                if states and states[-1] == availability:
                    return time.monotonic()
                count = len(sub.events)
                with contextlib.suppress(AssertionError):
                    await sub.wait_for(
                        lambda s, count=count: len(s.events) > count or s.error is not None,
                        timeout=0.5,
                    )
                assert time.monotonic() < deadline, "presence did not come back"
            assert sub.error.code() == grpc.StatusCode.UNAVAILABLE, sub.error
        finally:
            await sub.close()
        assert time.monotonic() < deadline, "presence did not come back"
        await asyncio.sleep(0.1)


async def heartbeat_until_online(
    presence: pgrpc.PresenceServiceStub, device: Device, stop: asyncio.Event
) -> list[str]:
    """Heartbeats like a client: every interval, retrying UNAVAILABLE."""
    failures = []
    while not stop.is_set():
        try:
            await presence.Heartbeat(pb.HeartbeatRequest(), metadata=device.md, timeout=2)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            failures.append(exc.code().name)
        await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)
    return failures


async def test_the_stack_on_a_redis_cluster_rides_out_a_master_failover(
    cluster_stack: LocalStack,
) -> None:
    stack = cluster_stack
    cluster = stack.redis_cluster
    assert cluster is not None
    services = [n for n in stack.component_names if n.startswith("svc_")]
    pids = {name: stack.process(name).pid for name in services}
    channels = Channels(stack.message_targets)
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.presence_target) as presence_channel,
    ):
        keys = kgrpc.AccountServiceStub(keys_channel)
        presence = pgrpc.PresenceServiceStub(presence_channel)
        alice, bob, carol = [await sign_up(keys) for _ in range(3)]
        conversation = await direct(channels.stub(stack.message_targets[1]), alice, bob)
        master = await cluster.master_of(f"parley:c:{conversation}")
        dave = await watched_on(stack, keys, master)
        for user in (carol, dave):
            await settings(presence, user, pb.VISIBILITY_EVERYONE, pb.VISIBILITY_EVERYONE)

        # -- on the cluster, everything works -------------------------------------------
        log = SendLog()
        # Bob reads on instance 0; Alice sends through instance 1: delivery
        # crosses processes by the doorbell.
        phone = ResilientStream(channels, bob, conversations=[conversation], prefer=0)
        arrivals = Arrivals(phone)
        stop_beats = asyncio.Event()
        beats: asyncio.Task[list[str]] | None = None
        try:
            phone.start()
            await phone.wait_for(lambda s: s.sync_completes == 1, timeout=20, what="sync")
            for i in range(3):
                await send_until_acked(
                    channels,
                    alice,
                    conversation,
                    f"before {i}".encode(),
                    log=log,
                    deadline=time.monotonic() + 20,
                    prefer=1,
                )
            await phone.wait_for(lambda s: len(s.messages) == 3, timeout=10, what="live")
            await presence.Heartbeat(pb.HeartbeatRequest(), metadata=dave.md)
            await watch_until(presence, carol, dave, ONLINE, deadline=time.monotonic() + 10)
            watching = await Sub(presence, carol, [dave.account_id]).started()
            await presence.GoOffline(pb.GoOfflineRequest(), metadata=dave.md)
            await watching.wait_for(
                lambda s: bool(s.changes()) and s.changes()[-1][1] == OFFLINE,
                timeout=10,
                what="dave offline, live",
            )
            await watching.close()
            await check_rate_limits(stack, keys, channels, presence)

            # -- SIGKILL of the master of the conversation's channel and dave's presence --
            killed_at = time.monotonic()
            await cluster.kill_node(master)
            cluster_back = asyncio.create_task(cluster.wait_ready(timeout=30))
            beats = asyncio.create_task(heartbeat_until_online(presence, dave, stop_beats))
            online_at = asyncio.create_task(
                watch_until(presence, carol, dave, ONLINE, deadline=killed_at + 30)
            )
            sent_after: list[bytes] = []
            for i in range(1000):
                body = f"after {i}".encode()
                await send_until_acked(
                    channels,
                    alice,
                    conversation,
                    body,
                    log=log,
                    deadline=time.monotonic() + 30,
                    prefer=1,
                    attempt_timeout=3,
                )
                sent_after.append(body)
                arrived = [arrivals.at[b] for b in sent_after if b in arrivals.at]
                if arrived and time.monotonic() - min(arrived) > 0.5:
                    break
                assert time.monotonic() - killed_at < 30, "delivery did not come back"
                await asyncio.sleep(SEND_EVERY_SECONDS)
            failover = await cluster_back
            presence_back = await online_at - killed_at
            stop_beats.set()
            heartbeat_failures = await beats
            beats = None
            delivery_back = min(arrivals.at.get(b, float("inf")) for b in sent_after) - killed_at

            # Live again: a message now arrives at once, and so does presence.
            body = b"live again"
            await send_until_acked(
                channels,
                alice,
                conversation,
                body,
                log=log,
                deadline=time.monotonic() + 10,
                prefer=1,
            )
            acked_at = time.monotonic()
            await phone.wait_for(lambda s: body in s.bodies(conversation), timeout=5, what="live")
            live_latency = arrivals.at.get(body, time.monotonic()) - acked_at
            watching = await Sub(presence, carol, [dave.account_id]).started()
            await presence.GoOffline(pb.GoOfflineRequest(), metadata=dave.md)
            await watching.wait_for(
                lambda s: bool(s.changes()) and s.changes()[-1][1] == OFFLINE,
                timeout=10,
                what="dave offline after the failover",
            )
            await watching.close()
            limit_checks = await check_rate_limits(stack, keys, channels, presence)

            # Nothing acknowledged was lost, nothing came twice.
            total = 3 + len(sent_after) + 1
            await phone.wait_for(lambda s: len(s.messages) >= total, timeout=10, what="all")
            assert_exactly_once_in_order(phone, conversation, total)
            history = await all_messages(channels.stub(stack.message_targets[0]), bob, conversation)
            assert_history_exactly_once(history, log)
            assert {name: stack.process(name).pid for name in services} == pids
            print(
                f"\nRedis Cluster failover (SIGKILL of a master, node timeout 2 s):"
                f" cluster ok again after {failover:.2f} s;"
                f" delivery back after {delivery_back:.2f} s,"
                f" presence after {presence_back:.2f} s; {len(sent_after)} sends,"
                f" {len(log.failures)} failed attempts retried; {len(heartbeat_failures)}"
                f" heartbeats failed; live latency after: {live_latency * 1000:.0f} ms;"
                f" limits enforced on Redis again at check {limit_checks}"
            )
            assert delivery_back - failover < OWN_SHARE_SECONDS, (delivery_back, failover)
            assert presence_back - failover < OWN_SHARE_SECONDS, (presence_back, failover)
            if failover <= RECOVERY_BUDGET_SECONDS - OWN_SHARE_SECONDS:
                # Redis left Parley its share of the budget: the bound holds.
                assert delivery_back < RECOVERY_BUDGET_SECONDS, delivery_back
                assert presence_back < RECOVERY_BUDGET_SECONDS, presence_back
        finally:
            stop_beats.set()
            if beats is not None:
                with contextlib.suppress(Exception):
                    await beats
            await arrivals.stop()
            await phone.stop()
            await channels.close()
