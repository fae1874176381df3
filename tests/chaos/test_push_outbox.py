"""The push outbox survives SIGKILL of svc_message: a job claimed by the killed
worker, a job waiting for its retry, and messages acked but not yet planned
(the projector's replay plans them). Each notification arrives exactly once,
with the same Idempotency-Key on every attempt."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import LocalStack
from tests.helpers import wait_until
from tests.pushservers import Received, WebhookServer
from tests.users import Device, direct, send, sign_up

pytestmark = pytest.mark.chaos

LEASE_SECONDS = 2.0
PUSH_CONFIG: dict[str, Any] = {
    "collapse_seconds": 0.3,
    "lease_seconds": LEASE_SECONDS,
    "poll_seconds": 0.2,
    "backoff_base_seconds": 0.2,
    "backoff_max_seconds": 1.0,
}
QUIET_SECONDS = 2.0


class StallingWebhook(WebhookServer):
    """The strict receiver, which can hold the next requests and then drop
    them unanswered (a worker then sits in its send when it is killed).
    Every arrival's Idempotency-Key is recorded, answered or not."""

    def __init__(self, directory: Path, **options: Any) -> None:
        super().__init__(directory, **options)
        self.stall_next = 0
        self.release = asyncio.Event()
        self.arrivals: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            self.arrivals.append(headers.get("idempotency-key", ""))
            if self.stall_next > 0:
                # Lost in flight: its sender dies before an answer, and the
                # receiver never processes it.
                self.stall_next -= 1
                await self.release.wait()
                return
        await super().__call__(scope, receive, send)

    def to(self, token: str, *, delivered_only: bool = True) -> list[Received]:
        requests = self.delivered if delivered_only else self.received
        return [r for r in requests if r.token == token]

    async def wait_to(self, token: str, count: int = 1, timeout: float = 30.0) -> list[Received]:
        async def arrived() -> bool:
            return len(self.to(token)) >= count

        await wait_until(arrived, timeout=timeout, what=f"{count} pushes to {token}")
        return self.to(token)


class World:
    """One stack (one svc_message instance) and its clients; reopened after restarts."""

    def __init__(self, stack: LocalStack, webhook: StallingWebhook) -> None:
        self.stack = stack
        self.webhook = webhook
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            stack.mongo_uri, retryWrites=False, tz_aware=True
        )
        self.db = self.mongo[stack.settings.mongo.database]
        self._keys = grpc.aio.insecure_channel(stack.keys_target)
        self._message = grpc.aio.insecure_channel(stack.message_targets[0])
        self.keys = kgrpc.AccountServiceStub(self._keys)
        self.m = mgrpc.MessageServiceStub(self._message)

    async def close(self) -> None:
        await self._keys.close()
        await self._message.close()
        await self.mongo.close()

    async def register(self, device: Device) -> str:
        token = f"tok-{uuid.uuid4().hex}"
        await self.m.RegisterPushToken(
            mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_WEBHOOK, token=token),
            metadata=device.md,
        )
        return token

    async def jobs(self, device: Device) -> list[dict[str, Any]]:
        return await self.db["push_outbox"].find({"device_id": device.device_id}).to_list()

    async def crash_and_restart(self) -> None:
        await self.stack.kill_message(0)
        await self.stack.start_message(0)


@pytest_asyncio.fixture(loop_scope="session")
async def webhook(tmp_path: Path) -> AsyncIterator[StallingWebhook]:
    async with StallingWebhook.start(tmp_path / "webhook") as server:
        try:
            yield server
        finally:
            server.release.set()


@contextlib.asynccontextmanager
async def world(
    root: Path, webhook: StallingWebhook, message: dict[str, Any] | None = None
) -> AsyncIterator[World]:
    config = {"push": {**PUSH_CONFIG, "webhook": webhook.config()}, **(message or {})}
    async with LocalStack.with_free_ports(
        root=root, message_instances=1, shutdown_grace_seconds=2.0, extra_config={"message": config}
    ) as stack:
        opened = World(stack, webhook)
        try:
            yield opened
        finally:
            await opened.close()


async def test_outbox_jobs_survive_a_sigkill_of_their_worker(
    tmp_path: Path, webhook: StallingWebhook
) -> None:
    # Fast heartbeats: the restarted process soon replays the dead one's log,
    # which holds every message below; none may be notified twice.
    fast_replay = {"projector_heartbeat_seconds": 0.5}
    async with world(tmp_path / "stack", webhook, fast_replay) as w:
        alice, bob, carol, dave = [await sign_up(w.keys) for _ in range(4)]
        bob_token, carol_token = await w.register(bob), await w.register(carol)
        dave_token = await w.register(dave)

        # 0. Delivered before the crash.
        to_dave = await direct(w.m, alice, dave)
        await send(w.m, alice, to_dave, b"delivered")
        await webhook.wait_to(dave_token)

        # 1. Claimed: the worker is inside its send to Bob's receiver when it dies.
        webhook.stall_next = 1
        seen = len(webhook.arrivals)
        to_bob = await direct(w.m, alice, bob)
        await send(w.m, alice, to_bob, b"claimed")

        async def stalled() -> bool:
            return len(webhook.arrivals) == seen + 1

        await wait_until(stalled, timeout=15, what="the send to bob in flight")
        (job,) = await w.jobs(bob)
        assert (job["state"], job["attempts"]) == ("sending", 1)

        # 2. Pending: Carol's receiver failed once and asked for a wait.
        webhook.script(503, {"error": "later"}, headers={"Retry-After": "3"}, token=carol_token)
        to_carol = await direct(w.m, alice, carol)
        await send(w.m, alice, to_carol, b"pending")

        async def rescheduled() -> bool:
            jobs = await w.jobs(carol)
            return bool(jobs) and jobs[0]["state"] == "pending" and jobs[0]["attempts"] == 1

        await wait_until(rescheduled, timeout=15, what="carol's job rescheduled")

        await w.crash_and_restart()
        webhook.release.set()  # the dead worker's request ends unanswered

        (bob_push,) = await webhook.wait_to(bob_token)
        await webhook.wait_to(carol_token)
        # Bob's job was retried once its lease ran out, under the same key:
        # the receiver saw it twice and can drop the duplicate.
        assert webhook.arrivals.count(job["_id"]) == 2
        assert bob_push.headers["idempotency-key"] == job["_id"]
        assert bob_push.json["attempt"] == 2
        carol_tries = webhook.to(carol_token, delivered_only=False)
        assert [r.status for r in carol_tries] == [503, 200]
        assert len({r.headers["idempotency-key"] for r in carol_tries}) == 1

        async def replayed() -> bool:
            return await w.db["projectors"].count_documents({}) == 1

        await wait_until(replayed, timeout=15, what="the dead process replayed")
        await asyncio.sleep(QUIET_SECONDS)
        for device, token in ((bob, bob_token), (carol, carol_token), (dave, dave_token)):
            assert len(webhook.to(token)) == 1
            (done,) = await w.jobs(device)
            assert done["state"] == "delivered"


async def test_messages_acked_before_a_sigkill_are_still_pushed(
    tmp_path: Path, webhook: StallingWebhook
) -> None:
    # The projector flushes so rarely that nothing is planned before the kill:
    # the messages are acked, and only the replay of the dead process's log
    # can turn them into a notification.
    slow_projector = {"projector_interval_seconds": 60, "projector_heartbeat_seconds": 0.5}
    async with world(tmp_path / "stack", webhook, slow_projector) as w:
        alice, bob = await sign_up(w.keys), await sign_up(w.keys)
        token = await w.register(bob)
        conversation = await direct(w.m, alice, bob)
        await asyncio.sleep(1.0)  # the flush cycle starts from here
        sent = [await send(w.m, alice, conversation, f"{i}".encode()) for i in range(3)]
        assert await w.jobs(bob) == [], "nothing was meant to be planned yet"

        await w.crash_and_restart()

        (push,) = await webhook.wait_to(token)
        assert push.json["count"] == 3
        assert push.json["message_id"] == sent[-1].message_id
        await asyncio.sleep(QUIET_SECONDS)
        assert len(webhook.to(token, delivered_only=False)) == 1
        (job,) = await w.jobs(bob)
        assert sorted(job["messages"]) == sorted(f"{conversation}:{m.seq}" for m in sent)
