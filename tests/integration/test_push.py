"""Push notifications end to end: tokens and settings over gRPC, the outbox
planned behind sends, and two svc_message workers delivering through a local
signed-webhook receiver (tests/pushservers.py) that checks every request.

Negative cases ("no notification") are made deterministic with a control
recipient in the same message: the planner decides for every recipient of a
message at once, so once the control's notification arrives, the suppressed
device's job would exist already if there were one.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.helpers import TEST_LIMITS, http_get, wait_until
from tests.pushservers import Received, WebhookServer
from tests.users import (
    Device,
    direct,
    error_fields,
    open_stream,
    rid,
    send,
    sign_up,
    sign_up_many,
    synced,
)

pytestmark = pytest.mark.slow

COLLAPSE_SECONDS = 0.5
MAX_ATTEMPTS = 4
BACKOFF_MAX_SECONDS = 0.6
# Long enough for a notification that was going to be sent to have been sent.
QUIET_SECONDS = 2.0
PUSH_CONFIG: dict[str, Any] = {
    "collapse_seconds": COLLAPSE_SECONDS,
    "lease_seconds": 2,
    "poll_seconds": 0.2,
    "concurrency": 4,
    "max_attempts": MAX_ATTEMPTS,
    "backoff_base_seconds": 0.2,
    "backoff_max_seconds": BACKOFF_MAX_SECONDS,
}


class Webhook(WebhookServer):
    """The strict receiver, optionally slow (to make two workers compete)."""

    def __init__(self, directory: Path, **options: Any) -> None:
        super().__init__(directory, **options)
        self.delay = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.delay:
            await asyncio.sleep(self.delay)
        await super().__call__(scope, receive, send)

    def to(self, token: str, *, delivered_only: bool = True) -> list[Received]:
        requests = self.delivered if delivered_only else self.received
        return [r for r in requests if r.token == token]

    async def wait_to(self, token: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        async def arrived() -> bool:
            return len(self.to(token)) >= count

        await wait_until(arrived, timeout=timeout, what=f"{count} pushes to {token}")
        return self.to(token)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def webhook(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Webhook]:
    async with Webhook.start(tmp_path_factory.mktemp("webhook")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def push_stack(
    tmp_path_factory: pytest.TempPathFactory, webhook: Webhook
) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("push_stack"),
        message_instances=2,
        shutdown_grace_seconds=2.0,
        extra_config={
            **TEST_LIMITS,
            "message": {"push": {**PUSH_CONFIG, "webhook": webhook.config()}},
        },
    ) as local:
        yield local


class Clients:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self._channels = [
            grpc.aio.insecure_channel(t) for t in [stack.keys_target, *stack.message_targets]
        ]
        self.keys = kgrpc.AccountServiceStub(self._channels[0])
        self.messages = [mgrpc.MessageServiceStub(c) for c in self._channels[1:]]
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            stack.mongo_uri, retryWrites=False, tz_aware=True
        )
        self.db = self.mongo[stack.settings.mongo.database]
        self.redis = aioredis.Redis.from_url(stack.redis_url)

    @property
    def m(self) -> mgrpc.MessageServiceStub:
        return self.messages[0]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.mongo.close()
        await self.redis.aclose()

    async def register(self, device: Device, *, locale: str = "") -> str:
        token = f"tok-{uuid.uuid4().hex}"
        await self.m.RegisterPushToken(
            mpb.RegisterPushTokenRequest(
                provider=mpb.PUSH_PROVIDER_WEBHOOK, token=token, locale=locale
            ),
            metadata=device.md,
        )
        return token

    async def jobs(self, device: Device) -> list[dict[str, Any]]:
        return await self.db["push_outbox"].find({"device_id": device.device_id}).to_list()

    async def group(self, owner: Device, members: Sequence[Device]) -> str:
        view = await self.m.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title="push", member_account_ids=[d.account_id for d in members]
            ),
            metadata=owner.md,
        )
        conversation_id: str = view.conversation.conversation_id
        return conversation_id

    async def streaming(self, device: Device) -> bool:
        lease = await self.redis.hget(f"parley:p:{device.account_id}", f"s:{device.device_id}")
        return lease is not None and int(lease) > time.time() * 1000


@pytest_asyncio.fixture(loop_scope="session")
async def clients(push_stack: LocalStack) -> AsyncIterator[Clients]:
    opened = Clients(push_stack)
    try:
        yield opened
    finally:
        await opened.close()


async def expect_error(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


# -- the RPCs -------------------------------------------------------------------------


async def test_register_replace_and_remove_a_token(clients: Clients) -> None:
    bob = await sign_up(clients.keys)
    first = await clients.m.RegisterPushToken(
        mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_WEBHOOK, token="first"),
        metadata=bob.md,
    )
    assert first.device_id == bob.device_id
    assert (first.provider, first.locale) == (mpb.PUSH_PROVIDER_WEBHOOK, "en")
    assert first.update_time.seconds > 0
    again = await clients.messages[1].RegisterPushToken(
        mpb.RegisterPushTokenRequest(
            provider=mpb.PUSH_PROVIDER_APNS, token="ab" * 32, locale="de-AT"
        ),
        metadata=bob.md,
    )
    assert (again.provider, again.locale) == (mpb.PUSH_PROVIDER_APNS, "de-AT")
    stored = await clients.db["push_tokens"].find({"account_id": bob.account_id}).to_list()
    assert [(d["_id"], d["token"], d["provider"]) for d in stored] == [
        (bob.device_id, "ab" * 32, mpb.PUSH_PROVIDER_APNS)
    ]
    # The same app install signed in as someone else: the token moves.
    carol = await sign_up(clients.keys)
    await clients.m.RegisterPushToken(
        mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_APNS, token="ab" * 32),
        metadata=carol.md,
    )
    holders = await clients.db["push_tokens"].find({"token": "ab" * 32}).to_list()
    assert [d["_id"] for d in holders] == [carol.device_id]
    for _ in range(2):  # idempotent
        await clients.m.RemovePushToken(mpb.RemovePushTokenRequest(), metadata=carol.md)
        assert await clients.db["push_tokens"].count_documents({"_id": carol.device_id}) == 0


async def test_bad_registrations_name_their_fields(clients: Clients) -> None:
    bob = await sign_up(clients.keys)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"token": "t"}, ["provider"]),
        ({"provider": 99, "token": "t"}, ["provider"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM}, ["token"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "x" * 4097}, ["token"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "has space"}, ["token"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "caf\u00e9"}, ["token"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "t", "locale": "en_GB"}, ["locale"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "t", "locale": "e"}, ["locale"]),
        ({"provider": mpb.PUSH_PROVIDER_FCM, "token": "t", "locale": "en-" + "a" * 40}, ["locale"]),
        ({"token": "", "locale": "??"}, ["provider", "token", "locale"]),
    ]
    for fields, expected in cases:
        error = await expect_error(
            clients.m.RegisterPushToken(mpb.RegisterPushTokenRequest(**fields), metadata=bob.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_fields(error) == expected, fields
    # The longest token and a full tag are fine.
    await clients.m.RegisterPushToken(
        mpb.RegisterPushTokenRequest(
            provider=mpb.PUSH_PROVIDER_FCM, token="x" * 4096, locale="zh-Hant-TW"
        ),
        metadata=bob.md,
    )
    assert await clients.db["push_tokens"].count_documents({"_id": bob.device_id}) == 1


async def test_push_rpcs_need_a_token(clients: Clients) -> None:
    calls = [
        clients.m.RegisterPushToken(
            mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_WEBHOOK, token="t")
        ),
        clients.m.RemovePushToken(mpb.RemovePushTokenRequest()),
        clients.m.GetPushSettings(mpb.GetPushSettingsRequest()),
        clients.m.UpdatePushSettings(mpb.UpdatePushSettingsRequest()),
    ]
    for call in calls:
        await expect_error(call, grpc.StatusCode.UNAUTHENTICATED)


async def test_do_not_disturb_settings(clients: Clients) -> None:
    bob = await sign_up(clients.keys)
    empty = await clients.m.GetPushSettings(mpb.GetPushSettingsRequest(), metadata=bob.md)
    assert not empty.do_not_disturb.enabled
    assert not empty.HasField("update_time")
    window = mpb.DoNotDisturb(
        enabled=True, start_minute=22 * 60, end_minute=7 * 60, time_zone="Europe/Berlin"
    )
    updated = await clients.m.UpdatePushSettings(
        mpb.UpdatePushSettingsRequest(do_not_disturb=window), metadata=bob.md
    )
    assert updated.do_not_disturb == window
    read = await clients.messages[1].GetPushSettings(mpb.GetPushSettingsRequest(), metadata=bob.md)
    assert read.do_not_disturb == window
    assert read.update_time == updated.update_time
    bad: list[tuple[mpb.UpdatePushSettingsRequest, list[str]]] = [
        (mpb.UpdatePushSettingsRequest(), ["do_not_disturb"]),
        (
            mpb.UpdatePushSettingsRequest(
                do_not_disturb=mpb.DoNotDisturb(start_minute=1440, end_minute=-1)
            ),
            ["do_not_disturb.start_minute", "do_not_disturb.end_minute"],
        ),
        (
            mpb.UpdatePushSettingsRequest(
                do_not_disturb=mpb.DoNotDisturb(enabled=True, time_zone="Mars/Olympus_Mons")
            ),
            ["do_not_disturb.time_zone"],
        ),
        (
            mpb.UpdatePushSettingsRequest(
                do_not_disturb=mpb.DoNotDisturb(time_zone="../../etc/passwd")
            ),
            ["do_not_disturb.time_zone"],
        ),
    ]
    for request, fields in bad:
        error = await expect_error(
            clients.m.UpdatePushSettings(request, metadata=bob.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error_fields(error) == fields
    still = await clients.m.GetPushSettings(mpb.GetPushSettingsRequest(), metadata=bob.md)
    assert still.do_not_disturb == window


# -- what gets pushed -----------------------------------------------------------------------


async def test_an_offline_recipient_gets_one_notification_without_the_body(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob, locale="de-AT")
    conversation = await direct(clients.m, alice, bob)
    body = b"secret-ciphertext-" + uuid.uuid4().hex.encode()
    sent = await send(clients.m, alice, conversation, body)

    (push,) = await webhook.wait_to(token)
    payload = push.json
    assert payload["message_id"] == sent.message_id
    assert payload["conversation_id"] == conversation
    assert payload["conversation_ids"] == [conversation]
    assert payload["seq"] == sent.seq
    assert payload["sender_account_id"] == alice.account_id
    assert payload["count"] == 1
    assert payload["locale"] == "de-AT"
    assert payload["recipient"]["device_id"] == bob.device_id
    assert push.headers["idempotency-key"] == payload["job_id"]
    # Not the body, in any encoding, anywhere in the request.
    everything = push.body + repr(push.headers).encode()
    for encoded in (body, base64.b64encode(body), base64.urlsafe_b64encode(body), body.hex()):
        needle = encoded if isinstance(encoded, bytes) else encoded.encode()
        assert needle not in everything
    (job,) = await clients.jobs(bob)
    assert job["_id"] == payload["job_id"]
    assert job["state"] == "delivered"
    assert job["delivered_at"] is not None and job["expire_at"] > job["delivered_at"]
    # The sender is not notified of its own message.
    assert await clients.db["push_outbox"].count_documents({"account_id": alice.account_id}) == 0
    await asyncio.sleep(QUIET_SECONDS)
    assert len(webhook.to(token, delivered_only=False)) == 1


async def test_a_device_with_a_live_stream_is_not_notified(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob, carol = await sign_up_many(clients.keys, 3)
    bob_token, carol_token = await clients.register(bob), await clients.register(carol)
    group = await clients.group(alice, [bob, carol])
    stream = await open_stream(clients.messages[1], bob)
    try:
        await stream.wait_for(synced)

        async def leased() -> bool:
            return await clients.streaming(bob)

        await wait_until(leased, timeout=10, what="bob's stream lease")
        await send(clients.m, alice, group, b"live")
        await webhook.wait_to(carol_token)
        await stream.wait_for(lambda s: len(s.messages(group)) >= 1)
        assert await clients.jobs(bob) == []
        assert webhook.to(bob_token, delivered_only=False) == []
    finally:
        await stream.close()

    # Its stream gone, bob is notified again.
    async def released() -> bool:
        return not await clients.streaming(bob)

    await wait_until(released, timeout=10, what="bob's lease dropped")
    await send(clients.m, alice, group, b"offline now")
    (push,) = await webhook.wait_to(bob_token)
    assert push.json["count"] == 1


async def test_a_muted_conversation_is_not_pushed(clients: Clients, webhook: Webhook) -> None:
    alice, bob, carol = await sign_up_many(clients.keys, 3)
    bob_token, carol_token = await clients.register(bob), await clients.register(carol)
    group = await clients.group(alice, [bob, carol])
    await clients.m.SetMuted(
        mpb.SetMutedRequest(request_id=rid(), conversation_id=group, forever=True),
        metadata=bob.md,
    )
    await send(clients.m, alice, group, b"muted")
    await webhook.wait_to(carol_token)
    assert await clients.jobs(bob) == []
    # Bob still hears of the conversations he did not mute.
    other = await direct(clients.m, carol, bob)
    await send(clients.m, carol, other, b"not muted")
    (push,) = await webhook.wait_to(bob_token)
    assert (push.json["conversation_ids"], push.json["count"]) == ([other], 1)


async def test_do_not_disturb_covering_now_suppresses(clients: Clients, webhook: Webhook) -> None:
    alice, bob, carol = await sign_up_many(clients.keys, 3)
    bob_token, carol_token = await clients.register(bob), await clients.register(carol)
    # A two-hour window around now in Tokyo (UTC+9, no daylight saving).
    now = datetime.now(UTC)
    minute = ((now.hour + 9) % 24) * 60 + now.minute
    await clients.m.UpdatePushSettings(
        mpb.UpdatePushSettingsRequest(
            do_not_disturb=mpb.DoNotDisturb(
                enabled=True,
                start_minute=(minute - 60) % 1440,
                end_minute=(minute + 60) % 1440,
                time_zone="Asia/Tokyo",
            )
        ),
        metadata=bob.md,
    )
    group = await clients.group(alice, [bob, carol])
    await send(clients.m, alice, group, b"at night")
    await webhook.wait_to(carol_token)
    assert await clients.jobs(bob) == []
    assert webhook.to(bob_token, delivered_only=False) == []
    # The same window elsewhere on the globe (12 hours off) lets it through.
    await clients.m.UpdatePushSettings(
        mpb.UpdatePushSettingsRequest(
            do_not_disturb=mpb.DoNotDisturb(
                enabled=True,
                start_minute=(minute - 60) % 1440,
                end_minute=(minute + 60) % 1440,
                time_zone="Etc/GMT+3",  # UTC-3: twelve hours from Tokyo
            )
        ),
        metadata=bob.md,
    )
    await send(clients.m, alice, group, b"daytime")
    await webhook.wait_to(bob_token)


async def test_quick_messages_collapse_into_one_notification(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    conversation = await direct(clients.m, alice, bob)
    sent = [await send(clients.m, alice, conversation, f"{i}".encode()) for i in range(5)]
    (push,) = await webhook.wait_to(token)
    assert push.json["count"] == 5
    assert push.json["message_id"] == sent[-1].message_id
    assert push.json["seq"] == sent[-1].seq
    (job,) = await clients.jobs(bob)
    assert sorted(job["messages"]) == sorted(f"{conversation}:{m.seq}" for m in sent)
    await asyncio.sleep(QUIET_SECONDS)
    assert len(webhook.to(token, delivered_only=False)) == 1


# -- the workers --------------------------------------------------------------------------------


async def pushes_sent(stack: LocalStack) -> list[int]:
    counts = []
    for url in stack.message_metrics_urls:
        _status, text = await http_get(url)
        match = re.search(r"^parley_push_sent_total (\S+)$", text, re.MULTILINE)
        counts.append(int(float(match.group(1))) if match else 0)
    return counts


async def test_two_workers_deliver_every_job_exactly_once(
    clients: Clients, webhook: Webhook, push_stack: LocalStack
) -> None:
    alice = await sign_up(clients.keys)
    members = await sign_up_many(clients.keys, 40)
    tokens = {m.device_id: await clients.register(m) for m in members}
    group = await clients.group(alice, members)
    before = await pushes_sent(push_stack)
    rounds = 3
    started = time.monotonic()
    seqs = []
    webhook.delay = 0.03  # each send takes a moment: the workers overlap
    try:
        for i in range(rounds):
            # Alternate the processes: each plans what it committed.
            sent = await send(clients.messages[i % 2], alice, group, f"round {i}".encode())
            seqs.append(sent.seq)
            for token in tokens.values():
                await webhook.wait_to(token, i + 1, timeout=30)
    finally:
        webhook.delay = 0.0
    elapsed = time.monotonic() - started
    await asyncio.sleep(QUIET_SECONDS)
    requests = [r for t in tokens.values() for r in webhook.to(t, delivered_only=False)]
    keys = Counter(r.headers["idempotency-key"] for r in requests)
    assert len(requests) == len(members) * rounds
    assert all(n == 1 for n in keys.values()), keys.most_common(3)
    for token in tokens.values():
        assert sorted(r.json["seq"] for r in webhook.to(token)) == seqs
    after = await pushes_sent(push_stack)
    per_worker = [a - b for a, b in zip(after, before, strict=True)]
    print(f"\n{len(requests)} pushes in {elapsed:.2f}s, per worker {per_worker}")
    assert sum(per_worker) == len(members) * rounds
    assert all(n > 0 for n in per_worker), per_worker


async def test_a_failing_receiver_is_retried_with_backoff(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    webhook.script(503, {"error": "busy"}, token=token, times=1)
    webhook.script(503, {"error": "busy"}, headers={"Retry-After": "1"}, token=token, times=1)
    conversation = await direct(clients.m, alice, bob)
    await send(clients.m, alice, conversation, b"retry me")
    await webhook.wait_to(token)
    tries = webhook.to(token, delivered_only=False)
    assert [r.status for r in tries] == [503, 503, 200]
    assert len({r.headers["idempotency-key"] for r in tries}) == 1
    assert [r.json["attempt"] for r in tries] == [1, 2, 3]
    stamps = [int(r.headers["x-parley-timestamp"]) for r in tries]
    # Retry-After: 1 is a floor under the jittered backoff (whole seconds).
    assert stamps[2] - stamps[1] >= 1
    (job,) = await clients.jobs(bob)
    assert (job["state"], job["attempts"]) == ("delivered", 3)


async def test_out_of_attempts_is_dead_lettered(clients: Clients, webhook: Webhook) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    webhook.script(503, {"error": "down"}, token=token, times=None)
    conversation = await direct(clients.m, alice, bob)
    await send(clients.m, alice, conversation, b"never")

    async def dead() -> bool:
        jobs = await clients.jobs(bob)
        return bool(jobs) and jobs[0]["state"] == "dead"

    await wait_until(dead, timeout=20, what="the job dead-lettered")
    (job,) = await clients.jobs(bob)
    assert job["attempts"] == MAX_ATTEMPTS
    assert "503" in job["last_error"]
    await asyncio.sleep(BACKOFF_MAX_SECONDS + QUIET_SECONDS)
    assert len(webhook.to(token, delivered_only=False)) == MAX_ATTEMPTS


async def test_rejections_dead_letter_at_once_and_gone_tokens_are_forgotten(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob, carol = await sign_up_many(clients.keys, 3)
    bob_token, carol_token = await clients.register(bob), await clients.register(carol)
    webhook.script(400, {"error": "bad"}, token=bob_token, times=None)
    webhook.gone(carol_token)
    group = await clients.group(alice, [bob, carol])
    await send(clients.m, alice, group, b"x")

    async def both_dead() -> bool:
        jobs = await clients.jobs(bob) + await clients.jobs(carol)
        return len(jobs) == 2 and all(j["state"] == "dead" for j in jobs)

    await wait_until(both_dead, timeout=15, what="both jobs dead")
    assert len(webhook.to(bob_token, delivered_only=False)) == 1
    assert len(webhook.to(carol_token, delivered_only=False)) == 1
    assert await clients.db["push_tokens"].count_documents({"_id": bob.device_id}) == 1
    assert await clients.db["push_tokens"].count_documents({"_id": carol.device_id}) == 0


async def test_removing_the_token_drops_pending_notifications(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    # The first attempt fails and asks for a long wait: the job stays pending.
    webhook.script(503, {"error": "later"}, headers={"Retry-After": "30"}, token=token, times=1)
    conversation = await direct(clients.m, alice, bob)
    await send(clients.m, alice, conversation, b"pending")

    async def rescheduled() -> bool:
        jobs = await clients.jobs(bob)
        return bool(jobs) and jobs[0]["state"] == "pending" and jobs[0]["attempts"] == 1

    await wait_until(rescheduled, timeout=10, what="the job rescheduled")
    await clients.messages[1].RemovePushToken(mpb.RemovePushTokenRequest(), metadata=bob.md)
    assert await clients.jobs(bob) == []


async def test_messages_read_on_another_device_are_not_pushed_any_more(
    clients: Clients, webhook: Webhook
) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    # The first attempt fails and asks for a wait: the job stays pending.
    webhook.script(503, {"error": "later"}, headers={"Retry-After": "2"}, token=token, times=1)
    conversation = await direct(clients.m, alice, bob)
    await send(clients.m, alice, conversation, b"one")
    second = await send(clients.m, alice, conversation, b"two")

    async def rescheduled() -> bool:
        jobs = await clients.jobs(bob)
        return bool(jobs) and jobs[0]["state"] == "pending" and jobs[0]["attempts"] == 1

    await wait_until(rescheduled, timeout=10, what="the job rescheduled")
    # Bob reads both on another device (through the other process).
    await clients.messages[1].MarkRead(
        mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=second.seq),
        metadata=bob.md,
    )

    async def dropped() -> bool:
        jobs = await clients.jobs(bob)
        return bool(jobs) and jobs[0]["state"] == "dropped"

    await wait_until(dropped, timeout=15, what="the job dropped")
    (job,) = await clients.jobs(bob)
    assert job["reason"] == "read"
    assert [r.status for r in webhook.to(token, delivered_only=False)] == [503]


async def test_a_revoked_device_loses_its_token(clients: Clients, webhook: Webhook) -> None:
    alice, bob = await sign_up(clients.keys), await sign_up(clients.keys)
    token = await clients.register(bob)
    await clients.keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=bob.device_id), metadata=bob.md
    )

    async def forgotten() -> bool:
        return await clients.db["push_tokens"].count_documents({"_id": bob.device_id}) == 0

    await wait_until(forgotten, timeout=10, what="the revoked device's token deleted")
    conversation = await direct(clients.m, alice, bob)
    await send(clients.m, alice, conversation, b"to a revoked device")
    await asyncio.sleep(QUIET_SECONDS)
    assert webhook.to(token, delivered_only=False) == []
