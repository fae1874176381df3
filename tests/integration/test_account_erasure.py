"""Account erasure end to end: DeleteAccount, then every store is scanned for
the account's ids, handle, message bodies and search tokens (the same scan finds them all
before: the positive control), with svc_media's grace period set to a
second so the account's media are collected within the test. Also: the
handle is refused during the cooling-off period, a wrong confirmation is
refused, and the job resumes after SIGKILLs of the services it calls and of
svc_keys itself."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2 as apb
from parley.keys.v1 import accounts_pb2_grpc as agrpc
from parley.keys.v1 import keys_pb2 as kpb
from parley.keys.v1 import keys_pb2_grpc as kgrpc
from parley.media.v1 import media_pb2_grpc as media_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley.search.v1 import search_pb2_grpc as search_grpc
from parley_dev.stack import LocalStack
from parley_sdk import Client, HandleTakenError, InvalidArgumentError
from tests.helpers import TEST_LIMITS, wait_until
from tests.media_stack import objects_of, upload
from tests.media_world import Blob
from tests.search_world import Epoch, index, set_search
from tests.store_scan import Hit, scan_all
from tests.users import Device, all_messages, direct, rid, send, sign_up, unique_handle

ERASED = "erased"
JOB_SECONDS = 60.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    config: dict[str, Any] = {
        **TEST_LIMITS,
        "keys": {"erasure_poll_seconds": 0.5, "erasure_lease_seconds": 5},
        "media": {"gc_grace_seconds": 1, "sweep_interval_seconds": 0.5},
    }
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("erasure")),
        shutdown_grace_seconds=2.0,
        extra_config=config,
    ) as local:
        yield local


class Stubs:
    def __init__(self, stack: LocalStack) -> None:
        self._channels = [
            grpc.aio.insecure_channel(t)
            for t in (stack.keys_target, stack.message_targets[0], stack.presence_target)
        ]
        self._channels.append(grpc.aio.insecure_channel(stack.media_target))
        self._channels.append(grpc.aio.insecure_channel(stack.search_target))
        keys, message, presence, media, search = self._channels
        self.accounts = agrpc.AccountServiceStub(keys)
        self.keys = kgrpc.KeyServiceStub(keys)
        self.messages = mgrpc.MessageServiceStub(message)
        self.presence = pgrpc.PresenceServiceStub(presence)
        self.media = media_grpc.MediaServiceStub(media)
        self.search = search_grpc.SearchServiceStub(search)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@pytest_asyncio.fixture(loop_scope="session")
async def stubs(stack: LocalStack) -> AsyncIterator[Stubs]:
    made = Stubs(stack)
    yield made
    await made.close()


def secret() -> bytes:
    return b"body-" + uuid.uuid4().hex.encode()


def _raw(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


async def publish_keys(stubs: Stubs, device: Device) -> None:
    identity = Ed25519PrivateKey.generate()
    signed = _raw(X25519PrivateKey.generate().public_key())
    await stubs.keys.PublishKeys(
        kpb.PublishKeysRequest(
            identity_key=_raw(identity.public_key()),
            signed_pre_key=kpb.SignedPreKey(
                key_id=1, public_key=signed, signature=identity.sign(b"\x05" + signed)
            ),
            one_time_pre_keys=[
                kpb.OneTimePreKey(
                    key_id=i, public_key=_raw(X25519PrivateKey.generate().public_key())
                )
                for i in range(1, 4)
            ],
        ),
        metadata=device.md,
    )


async def erasure_record(stack: LocalStack, erasure_id: str) -> dict[str, Any] | None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongo_uri)
    try:
        return await client["parley"]["erasures"].find_one({"_id": erasure_id})
    finally:
        await client.close()


async def wait_erased(stack: LocalStack, erasure_id: str, timeout: float = JOB_SECONDS) -> None:
    async def done() -> bool:
        record = await erasure_record(stack, erasure_id)
        return record is not None and record.get("state") == "done"

    await wait_until(done, timeout=timeout, interval=0.25, what="the erasure job to finish")


async def delete_account(stubs: Stubs, device: Device) -> apb.DeleteAccountResponse:
    return await stubs.accounts.DeleteAccount(
        apb.DeleteAccountRequest(request_id=rid(), confirm_handle=device.handle.upper()),
        metadata=device.md,
    )


class World:
    """Alice (to be erased) with a second device, Bob and Carol; a direct
    conversation, a group, media, keys, presence, contacts and settings."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.blob = Blob.random(64 * 1024)

    async def build(self, stubs: Stubs) -> None:
        self.alice = await sign_up(stubs.accounts, unique_handle("erase"))
        laptop = await stubs.accounts.RegisterDevice(
            apb.RegisterDeviceRequest(
                request_id=rid(), device=apb.NewDevice(name="laptop", platform=4)
            ),
            metadata=self.alice.md,
        )
        self.alice_devices = [self.alice.device_id, laptop.device.device_id]
        self.bob = await sign_up(stubs.accounts)
        self.carol = await sign_up(stubs.accounts)
        await publish_keys(stubs, self.alice)
        messages = stubs.messages
        self.direct_id = await direct(messages, self.alice, self.bob)
        # A new identity key (a re-install): a system message naming the
        # device goes into her conversations.
        await publish_keys(stubs, self.alice)

        async def announced() -> bool:
            history = await all_messages(messages, self.bob, self.direct_id)
            return any(m.system.action == mpb.SystemEvent.ACTION_IDENTITY_CHANGED for m in history)

        await wait_until(announced, timeout=30.0, interval=0.25, what="the identity change")
        alice_said = await send(messages, self.alice, self.direct_id, self._body())
        bob_said = await send(messages, self.bob, self.direct_id, b"bob keeps this")
        # Her message on the server blind index: its postings name her as sender.
        await set_search(messages, self.alice, self.direct_id, True)
        epoch = Epoch()
        terms = ["erasable", "postings"]
        self.tokens = epoch.tokens(terms)
        said = alice_said.message_id
        await index(stubs.search, self.alice, self.direct_id, said, epoch, terms)
        await messages.ReactToMessage(
            mpb.ReactToMessageRequest(
                request_id=rid(),
                conversation_id=self.direct_id,
                message_id=bob_said.message_id,
                emoji="👍",
            ),
            metadata=self.alice.md,
        )
        group = await messages.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(),
                title="erasure group",
                member_account_ids=[self.bob.account_id, self.carol.account_id],
            ),
            metadata=self.alice.md,
        )
        self.group_id = group.conversation.conversation_id
        edited = await send(messages, self.alice, self.group_id, secret())
        await messages.EditMessage(
            mpb.EditMessageRequest(
                request_id=rid(),
                conversation_id=self.group_id,
                message_id=edited.message_id,
                body=self._body(),
            ),
            metadata=self.alice.md,
        )
        media = await upload(stubs.media, self.alice, self.blob)
        self.media_id = media.media_id
        await messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(),
                conversation_id=self.group_id,
                type=mpb.MESSAGE_TYPE_IMAGE,
                body=self._body(),
                media_ids=[self.media_id],
            ),
            metadata=self.alice.md,
        )
        await send(messages, self.carol, self.group_id, b"carol keeps this")
        await messages.MarkRead(
            mpb.MarkReadRequest(request_id=rid(), conversation_id=self.group_id, seq=1),
            metadata=self.alice.md,
        )
        await messages.SetMuted(
            mpb.SetMutedRequest(request_id=rid(), conversation_id=self.group_id, forever=True),
            metadata=self.alice.md,
        )
        await messages.RegisterPushToken(
            mpb.RegisterPushTokenRequest(
                provider=mpb.PUSH_PROVIDER_WEBHOOK, token="tok-" + uuid.uuid4().hex
            ),
            metadata=self.alice.md,
        )
        await stubs.presence.Heartbeat(ppb.HeartbeatRequest(), metadata=self.alice.md)
        await stubs.presence.UpdatePresenceSettings(
            ppb.UpdatePresenceSettingsRequest(online=ppb.VISIBILITY_CONTACTS),
            metadata=self.alice.md,
        )
        await stubs.presence.AddContacts(
            ppb.AddContactsRequest(account_ids=[self.bob.account_id]), metadata=self.alice.md
        )
        await stubs.presence.AddContacts(
            ppb.AddContactsRequest(account_ids=[self.alice.account_id]), metadata=self.bob.md
        )
        self.alice_said = alice_said

    def _body(self) -> bytes:
        body = secret()
        self.bodies.append(body)
        return body

    @property
    def needles(self) -> list[bytes]:
        ids = [self.alice.account_id, *self.alice_devices, self.alice.handle]
        return [*(i.encode() for i in ids), *self.bodies, *self.tokens]


def unexpected(hits: list[Hit], world: World) -> list[Hit]:
    """What the design does not keep. Kept: revocations of the account's
    devices (device ids only), which expire with the last access token they
    refuse (auth.access_token_ttl_seconds)."""
    devices = {d.encode() for d in world.alice_devices}
    return [h for h in hits if not (h.where.endswith(".revocations") and h.needle in devices)]


async def test_erasure_leaves_nothing_of_the_account(stack: LocalStack, stubs: Stubs) -> None:
    world = World()
    await world.build(stubs)
    before, keys_before = await scan_all(stack, world.needles)
    found = {h.needle for h in before}
    # The positive control: the scan sees every id and body where they live.
    assert found == set(world.needles), set(world.needles) - found
    assert {h.store for h in before} >= {"mongo", "redis"}
    assert objects_of(stack, world.media_id), "the media object is stored"

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.accounts.DeleteAccount(
            apb.DeleteAccountRequest(request_id=rid(), confirm_handle="not_" + world.alice.handle),
            metadata=world.alice.md,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "confirm_handle" in (refused.value.details() or "")

    reply = await delete_account(stubs, world.alice)
    assert reply.erasure_id and world.alice.account_id not in reply.erasure_id
    assert reply.handle_release_time.seconds > time.time() + 29 * 86400
    # Signed out before the answer: its token is refused at once.
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await stubs.accounts.ListDevices(apb.ListDevicesRequest(), metadata=world.alice.md)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await wait_erased(stack, reply.erasure_id)

    # The handle cools off.
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await sign_up(stubs.accounts, world.alice.handle)
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # Bob keeps the conversation, with a tombstone where Alice's message was.
    history = await all_messages(stubs.messages, world.bob, world.direct_id)
    tomb = next(m for m in history if m.message_id == world.alice_said.message_id)
    assert tomb.deleted and tomb.body == b"" and tomb.sender_account_id == ERASED
    assert any(m.body == b"bob keeps this" for m in history)
    # ... and may go on writing in it; the peer is the erased marker.
    await send(stubs.messages, world.bob, world.direct_id, b"still here")
    view = await stubs.messages.GetConversation(
        mpb.GetConversationRequest(conversation_id=world.direct_id), metadata=world.bob.md
    )
    assert set(view.conversation.member_account_ids) == {world.bob.account_id, ERASED}
    group_history = await all_messages(stubs.messages, world.carol, world.group_id)
    left = group_history[-1]
    assert left.system.action == mpb.SystemEvent.ACTION_MEMBER_LEFT
    assert not any(m.media_ids for m in group_history)

    # The media nothing references any longer is collected after the grace.
    async def collected() -> bool:
        return not objects_of(stack, world.media_id)

    await wait_until(collected, timeout=30.0, interval=0.5, what="the media to be collected")

    after, keys_after = await scan_all(stack, world.needles)
    assert unexpected(after, world) == []
    assert len(keys_after) <= len(keys_before)
    record = await erasure_record(stack, reply.erasure_id)
    assert record is not None
    assert set(record) == {
        "_id",
        "steps",
        "state",
        "created_at",
        "finished_at",
        "cold_deadline",
        "handle_release_at",
    }


async def test_erasure_resumes_after_sigkills(stack: LocalStack, stubs: Stubs) -> None:
    alice, bob = await sign_up(stubs.accounts), await sign_up(stubs.accounts)
    conversation = await direct(stubs.messages, alice, bob)
    body = secret()
    await send(stubs.messages, alice, conversation, body)
    await stack.kill_presence()
    reply = await delete_account(stubs, alice)

    async def stalled_after_message() -> bool:
        record = await erasure_record(stack, reply.erasure_id)
        return record is not None and "message" in record["steps"]

    await wait_until(stalled_after_message, timeout=JOB_SECONDS, what="the message step")
    record = await erasure_record(stack, reply.erasure_id)
    assert record is not None and record["state"] == "running"
    assert "presence" not in record["steps"]
    # The job's holder dies too; a restarted svc_keys takes the job over
    # once the lease ran out.
    await stack.kill_keys()
    await stack.start_presence()
    await stack.start_keys()
    await wait_erased(stack, reply.erasure_id)
    hits, _ = await scan_all(stack, [alice.account_id.encode(), body])
    assert [h for h in hits if not h.where.endswith(".revocations")] == []


async def test_a_repeated_delete_finds_the_running_job(stack: LocalStack, stubs: Stubs) -> None:
    alice = await sign_up(stubs.accounts)
    await stack.kill_message(0)
    try:
        first = await delete_account(stubs, alice)
    finally:
        await stack.start_message(0)
    await wait_erased(stack, first.erasure_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await delete_account(stubs, alice)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- the SDK and the CLI ---------------------------------------------------------------------------

CLI = [sys.executable, "-m", "parley_cli"]


async def run_cli(home: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env={**os.environ, "PARLEY_HOME": str(home)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_sdk_delete_account(stack: LocalStack) -> None:
    handle = unique_handle("sdk")
    client = await Client.sign_up(
        handle=handle,
        device_name="phone",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
    )
    async with client:
        with pytest.raises(InvalidArgumentError):
            await client.delete_account(confirm="someone_else")
        erased = await client.delete_account(confirm=f"@{handle.upper()}")
        assert client.credentials is None
    await wait_erased(stack, erased.erasure_id)
    with pytest.raises(HandleTakenError):
        await Client.sign_up(
            handle=handle,
            device_name="phone",
            keys_target=stack.keys_target,
            message_target=stack.message_targets[0],
        )


async def test_cli_delete_account(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    handle = unique_handle("cli")
    code, _, err = await run_cli(home, "signup", handle, "--profile", "gone", *targets)
    assert code == 0, err
    code, _, err = await run_cli(home, "delete-account", "--profile", "gone", "--confirm", "nope")
    assert code != 0 and "confirm_handle" in err
    code, out, err = await run_cli(home, "delete-account", "--profile", "gone", "--confirm", handle)
    assert code == 0, err
    assert f"deleted @{handle}: erasure=" in out
    assert not (home / "gone.json").exists()
    erasure_id = out.split("erasure=")[1].split(";")[0]
    await wait_erased(stack, erasure_id)
