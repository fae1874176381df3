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
from typing import Any

import grpc
import pytest

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2_grpc as keygrpc
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import internal_pb2 as pinternal_pb
from parley.presence.v1 import internal_pb2_grpc as pinternal_grpc
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_core.auth.credentials import new_token
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.chaos.auth_calls import (
    AUTHENTICATED,
    INTERNAL_RPCS,
    MEDIA_RPCS,
    PRESENCE_INTERNAL_RPCS,
    PRESENCE_RPCS,
    SEARCH_RPCS,
    Call,
    Victim,
    change_calls,
    key_calls,
    membership_calls,
    presence_calls,
    reason_of,
    refused,
    unary_calls,
)
from tests.helpers import Metadata, auth
from tests.limited_rpcs import LIMITS_BY_RPC
from tests.refusals import until_revoked
from tests.users import direct, link_device, rid, send, sign_up

pytestmark = pytest.mark.chaos


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
            await until_revoked(
                lambda stub=stub: stub.ListConversations(
                    mpb.ListConversationsRequest(), metadata=v.laptop.md
                ),
                service="svc_message",
            )

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
        await until_revoked(
            lambda: calls["GetPresenceSettings"](v.laptop.md), service="svc_presence"
        )
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
