"""Every authenticated RPC (Connect included) against every bad credential.

No token, malformed or forged tokens, an expired token and a revoked device's
token are UNAUTHENTICATED with the matching reason, on every process; a valid
token of another user is PERMISSION_DENIED on a conversation they are not in,
and the RPCs that are not about a conversation only ever show the caller's
own data. Requests aim at the victim's real data, so any leak would show.
The internal RPCs other services call take the deployment's service
credential and nothing else: no access token, however valid.

Abuse limits are taken after these checks, so no bad credential or outsider
ever spends a budget or sees RATE_LIMITED. This stack's limits are never
reached; tests/chaos/test_limit_matrix.py calls every limited RPC until its
limit refuses it, and with the budget spent checks these answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2 as keypb
from parley.keys.v1 import keys_pb2_grpc as keygrpc
from parley.media.v1 import media_pb2
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import internal_pb2 as pinternal_pb
from parley.presence.v1 import internal_pb2_grpc as pinternal_grpc
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley.search.v1 import search_pb2 as spb
from parley_core.auth.credentials import new_token
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.chaos.export_calls import EXPORT_RPCS
from tests.helpers import Metadata, auth
from tests.limited_rpcs import LIMITS_BY_RPC
from tests.users import Device, direct, link_device, rid, send, sign_up

pytestmark = pytest.mark.chaos

Call = Callable[[Metadata], Awaitable[Any]]


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details in {error}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "parley.dev"
            return info.reason
    raise AssertionError(f"no ErrorInfo in {error}")


@dataclass
class Victim:
    alice: Device
    bob: Device
    laptop: Device  # alice's second device, revoked
    conversation: str
    message_ids: list[str]
    page_token: str


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded and returned {reply!r:.300}")


def unary_calls(
    keys: kgrpc.AccountServiceStub, messages: mgrpc.MessageServiceStub, v: Victim
) -> dict[str, Call]:
    """Every authenticated unary RPC, each aimed at the victim's data."""
    conversation = v.conversation
    return {
        "RegisterDevice": lambda md: keys.RegisterDevice(
            kpb.RegisterDeviceRequest(request_id=rid(), device=kpb.NewDevice(name="x", platform=1)),
            metadata=md,
        ),
        "RevokeDevice": lambda md: keys.RevokeDevice(
            kpb.RevokeDeviceRequest(request_id=rid(), device_id=v.alice.device_id), metadata=md
        ),
        "ListDevices": lambda md: keys.ListDevices(kpb.ListDevicesRequest(), metadata=md),
        "GetAccount": lambda md: keys.GetAccount(kpb.GetAccountRequest(), metadata=md),
        # Confirmed with the victim's handle: a credential that passed as
        # hers would erase her account.
        "DeleteAccount": lambda md: keys.DeleteAccount(
            kpb.DeleteAccountRequest(request_id=rid(), confirm_handle=v.alice.handle),
            metadata=md,
        ),
        "CreateDirectConversation": lambda md: messages.CreateDirectConversation(
            mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=v.bob.account_id),
            metadata=md,
        ),
        "GetConversation": lambda md: messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=conversation), metadata=md
        ),
        "ListConversations": lambda md: messages.ListConversations(
            mpb.ListConversationsRequest(), metadata=md
        ),
        "SendMessage": lambda md: messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(), conversation_id=conversation, type=1, body=b"intruder"
            ),
            metadata=md,
        ),
        "ListMessages": lambda md: messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation), metadata=md
        ),
        "MarkDelivered": lambda md: messages.MarkDelivered(
            mpb.MarkDeliveredRequest(request_id=rid(), conversation_id=conversation, seq=3),
            metadata=md,
        ),
        "MarkRead": lambda md: messages.MarkRead(
            mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=3),
            metadata=md,
        ),
        **change_calls(messages, v),
        **membership_calls(messages, v),
        **push_calls(messages),
    }


def key_calls(key_service: keygrpc.KeyServiceStub, v: Victim) -> dict[str, Call]:
    """The key directory, aimed at the victim's keys."""
    signed = keypb.SignedPreKey(key_id=1, public_key=b"\x01" * 32, signature=b"\x02" * 64)
    return {
        "PublishKeys": lambda md: key_service.PublishKeys(
            keypb.PublishKeysRequest(identity_key=b"\x03" * 32, signed_pre_key=signed),
            metadata=md,
        ),
        "UploadPreKeys": lambda md: key_service.UploadPreKeys(
            keypb.UploadPreKeysRequest(
                pre_keys=[keypb.OneTimePreKey(key_id=1, public_key=b"\x04" * 32)]
            ),
            metadata=md,
        ),
        "GetPreKeyBundles": lambda md: key_service.GetPreKeyBundles(
            keypb.GetPreKeyBundlesRequest(account_id=v.alice.account_id), metadata=md
        ),
        "GetPreKeyCount": lambda md: key_service.GetPreKeyCount(
            keypb.GetPreKeyCountRequest(), metadata=md
        ),
        "GetDeviceKeys": lambda md: key_service.GetDeviceKeys(
            keypb.GetDeviceKeysRequest(account_ids=[v.alice.account_id]), metadata=md
        ),
        "SendSenderKeys": lambda md: key_service.SendSenderKeys(
            keypb.SendSenderKeysRequest(
                request_id=rid(),
                conversation_id=v.conversation,
                envelopes=[
                    keypb.SenderKeyEnvelope(
                        recipient_account_id=v.alice.account_id,
                        recipient_device_id=v.alice.device_id,
                        ciphertext=b"intruder",
                    )
                ],
            ),
            metadata=md,
        ),
        "ClaimSenderKeys": lambda md: key_service.ClaimSenderKeys(
            keypb.ClaimSenderKeysRequest(), metadata=md
        ),
    }


def push_calls(messages: mgrpc.MessageServiceStub) -> dict[str, Call]:
    """Push registration and settings: always the caller's own device and account."""
    dnd = mpb.DoNotDisturb(enabled=True, start_minute=0, end_minute=1439, time_zone="UTC")
    return {
        "RegisterPushToken": lambda md: messages.RegisterPushToken(
            mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_WEBHOOK, token="intruder"),
            metadata=md,
        ),
        "RemovePushToken": lambda md: messages.RemovePushToken(
            mpb.RemovePushTokenRequest(), metadata=md
        ),
        "GetPushSettings": lambda md: messages.GetPushSettings(
            mpb.GetPushSettingsRequest(), metadata=md
        ),
        "UpdatePushSettings": lambda md: messages.UpdatePushSettings(
            mpb.UpdatePushSettingsRequest(do_not_disturb=dnd), metadata=md
        ),
    }


def presence_calls(presence: pgrpc.PresenceServiceStub, v: Victim) -> dict[str, Call]:
    """Every presence RPC, aimed at the victim (SubscribePresence read to its first event)."""
    victim = [v.alice.account_id]

    async def subscribe(md: Metadata) -> Any:
        call = presence.SubscribePresence(
            ppb.SubscribePresenceRequest(account_ids=victim), metadata=md, timeout=10
        )
        try:
            async for event in call:
                return event
        finally:
            call.cancel()
        return None

    return {
        "Heartbeat": lambda md: presence.Heartbeat(ppb.HeartbeatRequest(), metadata=md),
        "GoOffline": lambda md: presence.GoOffline(ppb.GoOfflineRequest(), metadata=md),
        "GetPresence": lambda md: presence.GetPresence(
            ppb.GetPresenceRequest(account_ids=victim), metadata=md
        ),
        "SubscribePresence": subscribe,
        "GetPresenceSettings": lambda md: presence.GetPresenceSettings(
            ppb.GetPresenceSettingsRequest(), metadata=md
        ),
        "UpdatePresenceSettings": lambda md: presence.UpdatePresenceSettings(
            ppb.UpdatePresenceSettingsRequest(online=ppb.VISIBILITY_EVERYONE), metadata=md
        ),
        "AddContacts": lambda md: presence.AddContacts(
            ppb.AddContactsRequest(account_ids=victim), metadata=md
        ),
        "RemoveContacts": lambda md: presence.RemoveContacts(
            ppb.RemoveContactsRequest(account_ids=victim), metadata=md
        ),
        "ListContacts": lambda md: presence.ListContacts(ppb.ListContactsRequest(), metadata=md),
    }


def change_calls(messages: mgrpc.MessageServiceStub, v: Victim) -> dict[str, Call]:
    """The RPCs that change or inspect the victim's messages and settings."""
    target = {"conversation_id": v.conversation, "message_id": v.message_ids[0]}
    conversation = {"conversation_id": v.conversation}
    return {
        "EditMessage": lambda md: messages.EditMessage(
            mpb.EditMessageRequest(request_id=rid(), body=b"x", **target), metadata=md
        ),
        "DeleteMessage": lambda md: messages.DeleteMessage(
            mpb.DeleteMessageRequest(
                request_id=rid(), scope=mpb.DELETE_SCOPE_FOR_EVERYONE, **target
            ),
            metadata=md,
        ),
        "ReactToMessage": lambda md: messages.ReactToMessage(
            mpb.ReactToMessageRequest(request_id=rid(), emoji="\U0001f600", **target),
            metadata=md,
        ),
        "ListReactions": lambda md: messages.ListReactions(
            mpb.ListReactionsRequest(**target), metadata=md
        ),
        "ListMessageReceipts": lambda md: messages.ListMessageReceipts(
            mpb.ListMessageReceiptsRequest(seq=1, **conversation), metadata=md
        ),
        "SetMuted": lambda md: messages.SetMuted(
            mpb.SetMutedRequest(request_id=rid(), forever=True, **conversation), metadata=md
        ),
        "SetPinned": lambda md: messages.SetPinned(
            mpb.SetPinnedRequest(request_id=rid(), pinned=True, **conversation), metadata=md
        ),
        "SetArchived": lambda md: messages.SetArchived(
            mpb.SetArchivedRequest(request_id=rid(), archived=True, **conversation), metadata=md
        ),
        "MarkUnread": lambda md: messages.MarkUnread(
            mpb.MarkUnreadRequest(request_id=rid(), **conversation), metadata=md
        ),
    }


def membership_calls(messages: mgrpc.MessageServiceStub, v: Victim) -> dict[str, Call]:
    """The group and channel RPCs, aimed at the victim's conversation."""
    conversation = {"conversation_id": v.conversation}
    return {
        "CreateGroup": lambda md: messages.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title="g", member_account_ids=[v.bob.account_id]
            ),
            metadata=md,
        ),
        "CreateChannel": lambda md: messages.CreateChannel(
            mpb.CreateChannelRequest(request_id=rid(), title="c", public=True), metadata=md
        ),
        "UpdateConversationInfo": lambda md: messages.UpdateConversationInfo(
            mpb.UpdateConversationInfoRequest(request_id=rid(), title="t", **conversation),
            metadata=md,
        ),
        "SetServerSearch": lambda md: messages.SetServerSearch(
            mpb.SetServerSearchRequest(request_id=rid(), enabled=True, **conversation), metadata=md
        ),
        "AddMembers": lambda md: messages.AddMembers(
            mpb.AddMembersRequest(
                request_id=rid(), account_ids=[v.alice.account_id], **conversation
            ),
            metadata=md,
        ),
        "RemoveMember": lambda md: messages.RemoveMember(
            mpb.RemoveMemberRequest(request_id=rid(), account_id=v.bob.account_id, **conversation),
            metadata=md,
        ),
        "LeaveConversation": lambda md: messages.LeaveConversation(
            mpb.LeaveConversationRequest(request_id=rid(), **conversation), metadata=md
        ),
        "SetMemberRole": lambda md: messages.SetMemberRole(
            mpb.SetMemberRoleRequest(
                request_id=rid(),
                account_id=v.bob.account_id,
                role=mpb.ROLE_ADMIN,
                **conversation,
            ),
            metadata=md,
        ),
        "SubscribeChannel": lambda md: messages.SubscribeChannel(
            mpb.SubscribeChannelRequest(request_id=rid(), **conversation), metadata=md
        ),
        "ListMembers": lambda md: messages.ListMembers(
            mpb.ListMembersRequest(**conversation), metadata=md
        ),
    }


AUTHENTICATED = {
    m.name
    for service in (
        kpb.DESCRIPTOR.services_by_name["AccountService"],
        keypb.DESCRIPTOR.services_by_name["KeyService"],
        mpb.DESCRIPTOR.services_by_name["MessageService"],
    )
    for m in service.methods
    # The history export RPCs have a matrix of their own (test_export_auth.py).
} - {"SignUp", "RefreshToken", *EXPORT_RPCS}


PRESENCE_RPCS = {m.name for m in ppb.DESCRIPTOR.services_by_name["PresenceService"].methods}
# Called by other services with the deployment's service credential only.
INTERNAL_RPCS = {m.name for m in ipb.DESCRIPTOR.services_by_name["MessageInternalService"].methods}
PRESENCE_INTERNAL_RPCS = {
    m.name for m in pinternal_pb.DESCRIPTOR.services_by_name["PresenceInternalService"].methods
}
MEDIA_RPCS = {m.name for m in media_pb2.DESCRIPTOR.services_by_name["MediaService"].methods}
SEARCH_RPCS = {m.name for m in spb.DESCRIPTOR.services_by_name["SearchService"].methods}


def test_every_limited_rpc_is_in_the_matrix() -> None:
    # Public RPCs have no credentials to refuse; RefreshToken's bad refresh
    # tokens are checked below; the media RPCs in tests/chaos/test_media_auth.py,
    # the search RPCs in tests/chaos/test_search_auth.py.
    covered = AUTHENTICATED | PRESENCE_RPCS | MEDIA_RPCS | SEARCH_RPCS | {"SignUp", "RefreshToken"}
    assert set(LIMITS_BY_RPC) <= covered


async def connect_refused(messages: mgrpc.MessageServiceStub, md: Metadata, v: Victim) -> Any:
    """Connect with these credentials: the error, after no event at all."""

    async def requests() -> Any:
        # The server refuses before reading anything; sending the resume a
        # little later keeps the client from racing its own write against the
        # refusal (which gRPC's client reports as its own INTERNAL error). A
        # server that accepted the stream would then replay the conversation.
        await asyncio.sleep(0.3)
        yield mpb.ClientEvent(
            resume=mpb.Resume(
                positions=[mpb.ConversationPosition(conversation_id=v.conversation, seq=0)]
            )
        )
        await asyncio.sleep(30)

    call = messages.Connect(requests(), metadata=md, timeout=20)
    events: list[mpb.Event] = []
    try:
        async for server_event in call:
            events.extend(server_event.events)
    except grpc.aio.AioRpcError as exc:
        assert events == [], f"events before the refusal: {events}"
        return exc
    raise AssertionError(f"Connect was not refused: {events}")


async def victim_world(stack: LocalStack, keys: kgrpc.AccountServiceStub) -> Victim:
    alice, bob = await sign_up(keys), await sign_up(keys)
    laptop = await link_device(keys, alice)
    async with grpc.aio.insecure_channel(stack.message_targets[0]) as channel:
        messages = mgrpc.MessageServiceStub(channel)
        conversation = await direct(messages, alice, bob)
        sent = [await send(messages, bob, conversation, f"secret {i}".encode()) for i in range(3)]
        page = await messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation, page_size=1), metadata=alice.md
        )
    return Victim(
        alice, bob, laptop, conversation, [m.message_id for m in sent], page.next_page_token
    )


async def test_bad_credentials_are_refused_by_every_rpc(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub, tmp_path: Any
) -> None:
    v = await victim_world(chaos, keys_stub)
    issuer = TokenIssuer(load_private_key(chaos.private_key_path), ttl_seconds=60)
    expired = issuer.issue(
        account_id=v.alice.account_id, device_id=v.alice.device_id, now=time.time() - 120
    ).token
    write_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub.pem")
    forged = (
        TokenIssuer(load_private_key(tmp_path / "evil.pem"), ttl_seconds=600)
        .issue(account_id=v.alice.account_id, device_id=v.alice.device_id, now=time.time())
        .token
    )
    header, payload, signature = v.alice.access_token.split(".")
    other_payload = v.bob.access_token.split(".")[1]
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    # Revoke alice's laptop and wait until every process refuses its token.
    await keys_stub.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=v.laptop.device_id),
        metadata=v.alice.md,
    )

    cases: list[tuple[str, Metadata, str]] = [
        ("no token", (), "ERROR_REASON_TOKEN_INVALID"),
        ("empty bearer", (("authorization", "Bearer "),), "ERROR_REASON_TOKEN_INVALID"),
        ("basic scheme", (("authorization", "Basic YWxpY2U6eA=="),), "ERROR_REASON_TOKEN_INVALID"),
        ("not a jwt", auth("not.a.jwt"), "ERROR_REASON_TOKEN_INVALID"),
        ("garbage", auth("%%%.@@@.!!!"), "ERROR_REASON_TOKEN_INVALID"),
        ("huge", auth("a" * 6000), "ERROR_REASON_TOKEN_INVALID"),
        (
            "tampered payload",
            auth(f"{header}.{other_payload}.{signature}"),
            "ERROR_REASON_TOKEN_INVALID",
        ),
        ("bad signature", auth(f"{header}.{payload}.{flipped}"), "ERROR_REASON_TOKEN_INVALID"),
        ("unknown key", auth(forged), "ERROR_REASON_TOKEN_INVALID"),
        ("expired", auth(expired), "ERROR_REASON_TOKEN_EXPIRED"),
        ("revoked", v.laptop.md, "ERROR_REASON_TOKEN_REVOKED"),
    ]

    targets = [chaos.keys_target, *chaos.message_targets, chaos.presence_target]
    channels = {t: grpc.aio.insecure_channel(t) for t in targets}
    try:
        keys = kgrpc.AccountServiceStub(channels[chaos.keys_target])
        for target in chaos.message_targets:
            stub = mgrpc.MessageServiceStub(channels[target])
            deadline = time.monotonic() + 10
            while True:
                error = await refused(
                    stub.ListConversations(mpb.ListConversationsRequest(), metadata=v.laptop.md)
                )
                if reason_of(error) == "ERROR_REASON_TOKEN_REVOKED":
                    break
                assert time.monotonic() < deadline, "the revocation did not reach svc_message"
                await asyncio.sleep(0.05)

        checked = 0
        for target in chaos.message_targets:
            messages = mgrpc.MessageServiceStub(channels[target])
            key_service = keygrpc.KeyServiceStub(channels[chaos.keys_target])
            calls = {**unary_calls(keys, messages, v), **key_calls(key_service, v)}
            assert set(calls) | {"Connect"} == AUTHENTICATED, "the matrix misses an RPC"
            for name, md, reason in cases:
                for rpc, call in calls.items():
                    error = await refused(call(md))
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
                    assert reason_of(error) == reason, (name, rpc)
                    checked += 1
                error = await connect_refused(messages, md, v)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, "Connect", error)
                assert reason_of(error) == reason, (name, "Connect")
                checked += 1
        assert checked == len(chaos.message_targets) * len(cases) * len(AUTHENTICATED)

        # svc_presence: every RPC, the same cases, once the revocation reached it.
        presence = pgrpc.PresenceServiceStub(channels[chaos.presence_target])
        calls = presence_calls(presence, v)
        assert set(calls) == PRESENCE_RPCS, "the matrix misses a presence RPC"
        deadline = time.monotonic() + 10
        while True:
            error = await refused(calls["GetPresenceSettings"](v.laptop.md))
            if reason_of(error) == "ERROR_REASON_TOKEN_REVOKED":
                break
            assert time.monotonic() < deadline, "the revocation did not reach svc_presence"
            await asyncio.sleep(0.05)
        for name, md, reason in cases:
            for rpc, call in calls.items():
                error = await refused(call(md))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
                assert reason_of(error) == reason, (name, rpc)

        # The public RPCs: a refresh token of the revoked device, or an access
        # token presented as a refresh token, gets nothing.
        for refresh in (v.laptop.refresh_token, v.alice.access_token, expired):
            error = await refused(
                keys.RefreshToken(kpb.RefreshTokenRequest(request_id=rid(), refresh_token=refresh))
            )
            assert error.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ), error

        # Nothing above changed the victim's data.
        messages = mgrpc.MessageServiceStub(channels[chaos.message_targets[0]])
        history = await messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=v.conversation), metadata=v.alice.md
        )
        assert [m.body for m in history.messages] == [b"secret 2", b"secret 1", b"secret 0"]
        devices = await keys.ListDevices(kpb.ListDevicesRequest(), metadata=v.alice.md)
        assert [d.device_id for d in devices.devices] == [v.alice.device_id]
    finally:
        for channel in channels.values():
            await channel.close()


async def test_another_users_token_never_reaches_a_conversation_they_are_not_in(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub
) -> None:
    v = await victim_world(chaos, keys_stub)
    mallory = await sign_up(keys_stub)
    async with grpc.aio.insecure_channel(chaos.message_targets[1]) as channel:
        messages = mgrpc.MessageServiceStub(channel)
        calls = unary_calls(keys_stub, messages, v)
        aimed = (
            "GetConversation",
            "SendMessage",
            "ListMessages",
            "MarkDelivered",
            "MarkRead",
            *change_calls(messages, v),
            *(
                set(membership_calls(messages, v))
                - {"CreateGroup", "CreateChannel", "SubscribeChannel"}
            ),
        )
        for rpc in aimed:
            error = await refused(calls[rpc](mallory.md))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, error)
            assert reason_of(error) == "ERROR_REASON_NOT_A_MEMBER", rpc
        # The victim's page token, or a message id as the conversation: still nothing.
        for request in (
            mpb.ListMessagesRequest(conversation_id=v.conversation, page_token=v.page_token),
            mpb.ListMessagesRequest(conversation_id=v.message_ids[0]),
        ):
            error = await refused(messages.ListMessages(request, metadata=mallory.md))
            assert error.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            ), error

        # RPCs that are not about one conversation show only mallory's own data.
        inbox = await calls["ListConversations"](mallory.md)
        assert [c.conversation.conversation_id for c in inbox.conversations] == []
        created = await calls["CreateDirectConversation"](mallory.md)
        assert created.conversation.conversation_id != v.conversation
        assert set(created.conversation.member_account_ids) == {
            mallory.account_id,
            v.bob.account_id,
        }
        assert created.conversation.last_seq == 0
        devices = await calls["ListDevices"](mallory.md)
        assert [d.account_id for d in devices.devices] == [mallory.account_id]
        me = await calls["GetAccount"](mallory.md)
        assert me.account_id == mallory.account_id
        error = await refused(calls["RevokeDevice"](mallory.md))  # alice's device
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        linked = await calls["RegisterDevice"](mallory.md)
        assert linked.device.account_id == mallory.account_id
        # Another's handle as the confirmation erases nothing: it names
        # only the caller's own account, and it is not mallory's handle.
        error = await refused(calls["DeleteAccount"](mallory.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert (await calls["GetAccount"](v.alice.md)).account_id == v.alice.account_id

        # Connect: positions naming the victim's conversation bring nothing of
        # it, now or live, and acks for it move no watermark.
        outgoing: asyncio.Queue[mpb.ClientEvent | None] = asyncio.Queue()
        outgoing.put_nowait(
            mpb.ClientEvent(
                resume=mpb.Resume(
                    positions=[mpb.ConversationPosition(conversation_id=v.conversation, seq=0)]
                )
            )
        )
        outgoing.put_nowait(
            mpb.ClientEvent(
                ack=mpb.Ack(
                    positions=[
                        mpb.ConversationPosition(conversation_id=v.conversation, seq=3, version=3)
                    ]
                )
            )
        )

        async def requests() -> Any:
            while (event := await outgoing.get()) is not None:
                yield event

        events: list[mpb.Event] = []
        call = messages.Connect(requests(), metadata=mallory.md, timeout=30)

        async def read() -> None:
            async for server_event in call:
                events.extend(server_event.events)

        reader = asyncio.create_task(read())
        try:
            deadline = time.monotonic() + 10
            while not any(e.WhichOneof("kind") == "sync_complete" for e in events):
                assert time.monotonic() < deadline, events
                assert not reader.done(), reader
                await asyncio.sleep(0.05)
            await send(messages, v.alice, v.conversation, b"still secret")
            await messages.MarkRead(
                mpb.MarkReadRequest(request_id=rid(), conversation_id=v.conversation, seq=4),
                metadata=v.bob.md,
            )
            await asyncio.sleep(1.0)
        finally:
            outgoing.put_nowait(None)
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        leaked = [
            e
            for e in events
            if v.conversation
            in (
                e.message.conversation_id,
                e.receipt.conversation_id,
                e.conversation.conversation_id,
            )
        ]
        assert leaked == [], f"the stream leaked the victim's conversation: {leaked}"
        # mallory's own new conversation is announced; nothing else.
        assert [e.WhichOneof("kind") for e in events] == ["conversation", "sync_complete"]

        view = await messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=v.conversation), metadata=v.alice.md
        )
        assert {w.account_id for w in view.member_watermarks} == {
            v.alice.account_id,
            v.bob.account_id,
        }
        alice_marks = next(w for w in view.member_watermarks if w.account_id == v.alice.account_id)
        assert alice_marks.delivered_seq == 4  # her own send, not mallory's ack


def internal_calls(internal: igrpc.MessageInternalServiceStub, v: Victim) -> dict[str, Call]:
    """svc_media's questions to svc_message, aimed at the victim's data."""
    return {
        "CheckMediaAccess": lambda md: internal.CheckMediaAccess(
            ipb.CheckMediaAccessRequest(account_id=v.alice.account_id, media_ids=["m"]),
            metadata=md,
        ),
        "CountMediaReferences": lambda md: internal.CountMediaReferences(
            ipb.CountMediaReferencesRequest(media_ids=["m"]), metadata=md
        ),
        "NotifyDevice": lambda md: internal.NotifyDevice(
            ipb.NotifyDeviceRequest(
                account_id=v.alice.account_id,
                device_id=v.alice.device_id,
                notice=mpb.MediaNotice(kind=mpb.MediaNotice.KIND_RESTORE_READY, media_id="m"),
            ),
            metadata=md,
        ),
        "CheckSearchMessages": lambda md: internal.CheckSearchMessages(
            ipb.CheckSearchMessagesRequest(
                account_id=v.alice.account_id, conversation_ids=[v.conversation]
            ),
            metadata=md,
        ),
        # An account that does not exist: the service credential's own call
        # at the end of the test must not erase the victim.
        "EraseAccount": lambda md: internal.EraseAccount(
            ipb.EraseAccountRequest(account_id=rid(), erasure_id=rid()), metadata=md
        ),
    }


def presence_internal_calls(
    internal: pinternal_grpc.PresenceInternalServiceStub,
) -> dict[str, Call]:
    """svc_keys' erasure call to svc_presence, for an account that does not exist."""
    return {
        "EraseAccount": lambda md: internal.EraseAccount(
            pinternal_pb.EraseAccountRequest(account_id=rid()), metadata=md
        ),
    }


async def test_internal_rpcs_take_the_service_credential_and_nothing_else(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub
) -> None:
    v = await victim_world(chaos, keys_stub)
    issuer = TokenIssuer(load_private_key(chaos.private_key_path), ttl_seconds=3600)
    # A valid access token of a real account, even with a long life, is no
    # service credential; nor is a random token of the right shape.
    fresh = issuer.issue(
        account_id=v.alice.account_id, device_id=v.alice.device_id, now=time.time()
    ).token
    cases: list[tuple[str, Metadata]] = [
        ("no token", ()),
        ("empty bearer", (("authorization", "Bearer "),)),
        ("access token", v.alice.md),
        ("fresh access token", auth(fresh)),
        ("other service token", auth(new_token())),
        ("service token as basic", (("authorization", f"Basic {chaos.service_token}"),)),
    ]
    for target in chaos.message_targets:
        async with grpc.aio.insecure_channel(target) as channel:
            calls = internal_calls(igrpc.MessageInternalServiceStub(channel), v)
            assert set(calls) == INTERNAL_RPCS, "the matrix misses an internal RPC"
            for name, md in cases:
                for rpc, call in calls.items():
                    error = await refused(call(md))
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
                    assert reason_of(error) == "ERROR_REASON_TOKEN_INVALID", (name, rpc)
            for call in calls.values():
                await call(auth(chaos.service_token))
            # And the service credential opens no user RPC.
            error = await refused(
                mgrpc.MessageServiceStub(channel).ListConversations(
                    mpb.ListConversationsRequest(), metadata=auth(chaos.service_token)
                )
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_presence_internal_rpcs_take_the_service_credential_only(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub
) -> None:
    v = await victim_world(chaos, keys_stub)
    async with grpc.aio.insecure_channel(chaos.presence_target) as channel:
        calls = presence_internal_calls(pinternal_grpc.PresenceInternalServiceStub(channel))
        assert set(calls) == PRESENCE_INTERNAL_RPCS, "the matrix misses an internal RPC"
        for md in ((), v.alice.md, auth(new_token())):
            for rpc, call in calls.items():
                error = await refused(call(md))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, error)
        for call in calls.values():
            await call(auth(chaos.service_token))


async def test_a_stream_ends_when_its_token_expires(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub
) -> None:
    alice = await sign_up(keys_stub)
    issuer = TokenIssuer(load_private_key(chaos.private_key_path), ttl_seconds=60)
    # Valid for about four more seconds.
    short = issuer.issue(
        account_id=alice.account_id, device_id=alice.device_id, now=time.time() - 56
    ).token

    async def requests() -> Any:
        yield mpb.ClientEvent(resume=mpb.Resume())
        await asyncio.sleep(30)

    started = time.monotonic()
    async with grpc.aio.insecure_channel(chaos.message_targets[0]) as channel:
        call = mgrpc.MessageServiceStub(channel).Connect(
            requests(), metadata=auth(short), timeout=20
        )
        kinds: list[str] = []

        async def read() -> None:
            async for server_event in call:
                kinds.extend(e.WhichOneof("kind") or "" for e in server_event.events)

        error = await refused(read())
    assert kinds == ["sync_complete"]
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "ERROR_REASON_TOKEN_EXPIRED"
    assert time.monotonic() - started < 10
