"""The SDK's presence and push calls without servers: requests, batching, the
subscription's reconnects and snapshots, and the keep-online heartbeat task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from parley.keys.v1 import accounts_pb2
from parley.message.v1 import messages_pb2 as pb
from parley.presence.v1 import presence_pb2 as ppb
from parley_sdk import (
    Availability,
    Client,
    Contact,
    Credentials,
    DoNotDisturb,
    PermissionDeniedError,
    PresenceUpdate,
    PushProvider,
    RetryPolicy,
    UnauthenticatedError,
    UnavailableError,
    Visibility,
)
from parley_sdk import _presence as presence_module
from parley_sdk._presence import update_presence_settings_request
from parley_sdk._session import Session

Responder = Callable[[Any], Any]


def rpc_error(code: grpc.StatusCode, message: str = "nope") -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), message, None)


class FakeRpc:
    """A unary multi-callable: fails with queued errors, then answers via ``respond``."""

    def __init__(self, respond: Responder, errors: list[aio.AioRpcError]) -> None:
        self.respond = respond
        self.errors = errors
        self.requests: list[Any] = []

    def __call__(self, request: Any, *, metadata: Any, timeout: float | None) -> Any:
        self.requests.append(request)

        async def answer() -> Any:
            await asyncio.sleep(0)
            if self.errors:
                raise self.errors.pop(0)
            return self.respond(request)

        return answer()


class FakeSubscribeCall:
    """One SubscribePresence call: reads follow a script of events, errors, then
    either EOF or (``hang``) a wait until cancelled."""

    def __init__(self, script: list[ppb.PresenceEvent | BaseException], *, hang: bool) -> None:
        self.script = list(script)
        self.hang = hang
        self.cancelled = asyncio.Event()

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        if self.hang:
            await self.cancelled.wait()
            raise asyncio.CancelledError
        return aio.EOF  # type: ignore[attr-defined]

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


class FakeService:
    """Unary methods answered per name; SubscribePresence from scripted calls."""

    def __init__(self) -> None:
        self.rpcs: dict[str, FakeRpc] = {}
        self.subscribe_calls: list[FakeSubscribeCall] = []
        self.subscribe_requests: list[ppb.SubscribePresenceRequest] = []
        self.subscribe_tokens: list[str] = []

    def answer(
        self, name: str, respond: Responder, errors: list[aio.AioRpcError] | None = None
    ) -> FakeRpc:
        self.rpcs[name] = FakeRpc(respond, errors or [])
        return self.rpcs[name]

    def SubscribePresence(
        self, request: ppb.SubscribePresenceRequest, *, metadata: Any
    ) -> FakeSubscribeCall:
        self.subscribe_requests.append(request)
        self.subscribe_tokens.append(dict(metadata)["authorization"])
        return self.subscribe_calls[len(self.subscribe_requests) - 1]

    def __getattr__(self, name: str) -> FakeRpc:
        if name not in self.rpcs:
            raise AssertionError(f"unexpected call to {name}")
        return self.rpcs[name]


def make_client(stream_attempts: int = 3) -> tuple[Client, FakeService, FakeService]:
    now = datetime.now(UTC)
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        presence_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=now + timedelta(hours=1),
            refresh_token="rt",
            refresh_token_expire_time=now + timedelta(days=30),
            account_id="me",
            device_id="dev",
        ),
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        stream_retry_policy=RetryPolicy(
            max_attempts=stream_attempts, initial_backoff=0.001, max_backoff=0.01
        ),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=None,
    )
    presence, messages, keys = FakeService(), FakeService(), FakeService()
    session.presence = presence  # type: ignore[assignment]
    session.messages = messages  # type: ignore[assignment]
    session.accounts = keys  # type: ignore[assignment]
    return Client(session, page_size=50), presence, messages


def online(*account_ids: str, snapshot: bool = False) -> ppb.PresenceEvent:
    return ppb.PresenceEvent(
        snapshot=snapshot,
        presences=[
            ppb.Presence(account_id=a, availability=ppb.AVAILABILITY_ONLINE) for a in account_ids
        ],
    )


def offline(account_id: str) -> ppb.PresenceEvent:
    presence = ppb.Presence(account_id=account_id, availability=ppb.AVAILABILITY_OFFLINE)
    presence.last_seen_time.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
    return ppb.PresenceEvent(presences=[presence])


# -- unary calls ------------------------------------------------------------------------------


async def test_heartbeat_returns_the_servers_interval() -> None:
    client, presence, _ = make_client()
    async with client:
        presence.answer(
            "Heartbeat",
            lambda r: ppb.HeartbeatResponse(
                ttl=duration_pb2.Duration(seconds=45), interval=duration_pb2.Duration(seconds=15)
            ),
        )
        assert await client.heartbeat() == timedelta(seconds=15)
        # A server that only names the TTL: a third of it.
        presence.answer(
            "Heartbeat", lambda r: ppb.HeartbeatResponse(ttl=duration_pb2.Duration(seconds=30))
        )
        assert await client.heartbeat() == timedelta(seconds=10)
        offline_rpc = presence.answer("GoOffline", lambda r: ppb.GoOfflineResponse())
        await client.go_offline()
        assert len(offline_rpc.requests) == 1


async def test_get_presence_dedupes_keeps_order_and_batches_past_the_cap() -> None:
    client, presence, _ = make_client()
    async with client:
        get = presence.answer(
            "GetPresence",
            lambda r: ppb.GetPresenceResponse(
                presences=[ppb.Presence(account_id=a) for a in r.account_ids]
            ),
        )
        found = await client.get_presence(["b", "a", "b"])
        assert [p.account_id for p in found] == ["b", "a"]
        assert all(p.availability is Availability.UNKNOWN for p in found)
        assert [list(r.account_ids) for r in get.requests] == [["b", "a"]]

        await client.get_presence("solo")  # one id, not its characters
        assert list(get.requests[-1].account_ids) == ["solo"]

        many = [f"a{i}" for i in range(600)]
        found = await client.get_presence(many)
        assert [p.account_id for p in found] == many
        assert [len(r.account_ids) for r in get.requests[2:]] == [256, 256, 88]

        assert await client.get_presence([]) == []
        assert len(get.requests) == 5, "no request for no ids"


def test_settings_updates_send_only_what_changes() -> None:
    request = update_presence_settings_request(
        online=Visibility.CONTACTS, last_seen=None, invisible=None
    )
    assert request.online == ppb.VISIBILITY_CONTACTS
    assert request.last_seen == ppb.VISIBILITY_UNSPECIFIED, "unspecified keeps the value"
    assert not request.HasField("invisible")
    request = update_presence_settings_request(online=None, last_seen=None, invisible=False)
    assert request.HasField("invisible") and not request.invisible
    with pytest.raises(ValueError, match="online"):
        update_presence_settings_request(online=None, last_seen=None, invisible=None)


async def test_settings_calls_return_typed_settings() -> None:
    client, presence, _ = make_client()
    async with client:

        def settings(r: Any) -> ppb.PresenceSettings:
            answer = ppb.PresenceSettings(
                online=ppb.VISIBILITY_EVERYONE, last_seen=ppb.VISIBILITY_NOBODY, invisible=True
            )
            answer.update_time.FromDatetime(datetime(2030, 1, 1, tzinfo=UTC))
            return answer

        presence.answer("GetPresenceSettings", settings)
        update = presence.answer("UpdatePresenceSettings", settings)
        current = await client.get_presence_settings()
        assert (current.online, current.last_seen, current.invisible) == (
            Visibility.EVERYONE,
            Visibility.NOBODY,
            True,
        )
        assert current.updated_at == datetime(2030, 1, 1, tzinfo=UTC)
        await client.update_presence_settings(last_seen=Visibility.NOBODY, invisible=True)
        sent = update.requests[0]
        assert (sent.online, sent.last_seen, sent.invisible) == (0, ppb.VISIBILITY_NOBODY, True)


async def test_contacts_sum_counts_over_batches_and_list_as_typed_contacts() -> None:
    client, presence, _ = make_client()
    async with client:
        add = presence.answer(
            "AddContacts", lambda r: ppb.AddContactsResponse(added_count=len(r.account_ids) - 1)
        )
        assert await client.add_contacts([f"a{i}" for i in range(300)]) == 255 + 43
        assert [len(r.account_ids) for r in add.requests] == [256, 44]
        remove = presence.answer(
            "RemoveContacts", lambda r: ppb.RemoveContactsResponse(removed_count=1)
        )
        assert await client.remove_contacts("a1") == 1
        assert list(remove.requests[0].account_ids) == ["a1"]

        pages = {
            "": ppb.ListContactsResponse(
                contacts=[ppb.Contact(account_id="a1")], next_page_token="p2"
            ),
            "p2": ppb.ListContactsResponse(contacts=[ppb.Contact(account_id="a2")]),
        }
        listing = presence.answer("ListContacts", lambda r: pages[r.page_token])
        contacts = [c async for c in client.list_contacts(page_size=5000)]
        assert contacts == [Contact("a1"), Contact("a2")]
        assert [r.page_size for r in listing.requests] == [1000, 1000]


async def test_push_calls_build_their_requests() -> None:
    client, _, messages = make_client()
    async with client:
        register = messages.answer(
            "RegisterPushToken",
            lambda r: pb.PushRegistration(device_id="dev", provider=r.provider, locale=r.locale),
        )
        registration = await client.register_push_token(PushProvider.FCM, "tok", locale="de-DE")
        assert (registration.device_id, registration.provider, registration.locale) == (
            "dev",
            PushProvider.FCM,
            "de-DE",
        )
        sent = register.requests[0]
        assert (sent.provider, sent.token, sent.locale) == (pb.PUSH_PROVIDER_FCM, "tok", "de-DE")
        remove = messages.answer("RemovePushToken", lambda r: pb.RemovePushTokenResponse())
        await client.remove_push_token()
        assert len(remove.requests) == 1

        update = messages.answer(
            "UpdatePushSettings", lambda r: pb.PushSettings(do_not_disturb=r.do_not_disturb)
        )
        window = DoNotDisturb(start=time(22), end=time(7), time_zone="Europe/Berlin")
        settings = await client.update_push_settings(do_not_disturb=window)
        assert settings.do_not_disturb == window
        assert update.requests[0].do_not_disturb.start_minute == 22 * 60
        messages.answer("GetPushSettings", lambda r: pb.PushSettings())
        assert not (await client.get_push_settings()).do_not_disturb.enabled


async def test_presence_calls_retry_unavailable_like_every_call() -> None:
    client, presence, _ = make_client()
    async with client:
        get = presence.answer(
            "GetPresence",
            lambda r: ppb.GetPresenceResponse(),
            errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)],
        )
        assert await client.get_presence(["a"]) == []
        assert len(get.requests) == 2
        presence.answer(
            "GetPresence",
            lambda r: ppb.GetPresenceResponse(),
            errors=[rpc_error(grpc.StatusCode.UNAVAILABLE)] * 2,
        )
        with pytest.raises(UnavailableError):
            await client.get_presence(["a"])


# -- the subscription ---------------------------------------------------------------------


async def collect(subscription: Any, limit: int = 20) -> list[PresenceUpdate]:
    updates: list[PresenceUpdate] = []
    async with asyncio.timeout(10):
        async for update in subscription:
            updates.append(update)
            assert len(updates) <= limit
    return updates


async def test_a_subscription_reconnects_and_starts_again_with_a_snapshot() -> None:
    client, presence, _ = make_client()
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "restarting")
    presence.subscribe_calls = [
        FakeSubscribeCall([online("b", "c", snapshot=True), offline("b"), unavailable], hang=False),
        FakeSubscribeCall([unavailable], hang=False),
        FakeSubscribeCall([online("b", "c", snapshot=True), offline("c")], hang=False),
    ]
    async with client:
        subscription = client.subscribe_presence(["b", "c", "b"])
        updates = await collect(subscription)
    assert [u.snapshot for u in updates] == [True, False, True, False]
    assert updates[1].presences[0].availability is Availability.OFFLINE
    assert updates[1].presences[0].last_seen == datetime(2030, 1, 1, tzinfo=UTC)
    assert [list(r.account_ids) for r in presence.subscribe_requests] == [["b", "c"]] * 3
    assert subscription.reconnects == 2
    assert subscription.closed


async def test_a_subscription_gives_up_after_the_stream_retry_policy() -> None:
    client, presence, _ = make_client(stream_attempts=2)
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "redis down")
    presence.subscribe_calls = [
        FakeSubscribeCall([unavailable], hang=False),
        FakeSubscribeCall([unavailable], hang=False),
    ]
    async with client:
        with pytest.raises(UnavailableError, match="redis down"):
            await collect(client.subscribe_presence(["b"]))
    assert len(presence.subscribe_requests) == 2


async def test_a_subscription_does_not_retry_what_a_retry_cannot_fix() -> None:
    client, presence, _ = make_client()
    presence.subscribe_calls = [
        FakeSubscribeCall([rpc_error(grpc.StatusCode.PERMISSION_DENIED)], hang=False)
    ]
    async with client:
        with pytest.raises(PermissionDeniedError):
            await collect(client.subscribe_presence(["b"]))
    assert len(presence.subscribe_requests) == 1


async def test_a_subscription_refreshes_an_expired_token_once() -> None:
    client, presence, _ = make_client()
    keys: Any = client._session.accounts
    now = datetime.now(UTC)
    fresh = pb_credentials(now)
    keys.answer("RefreshToken", lambda r: fresh)
    expired = aio.AioRpcError(
        grpc.StatusCode.UNAUTHENTICATED,
        aio.Metadata(),
        aio.Metadata(("grpc-status-details-bin", _reason("ERROR_REASON_TOKEN_EXPIRED"))),
        "expired",
        None,
    )
    presence.subscribe_calls = [
        FakeSubscribeCall([expired], hang=False),
        FakeSubscribeCall([online("b", snapshot=True)], hang=False),
    ]
    async with client:
        updates = await collect(client.subscribe_presence("b"))
    assert [u.snapshot for u in updates] == [True]
    assert presence.subscribe_tokens == ["Bearer at", "Bearer at2"]


async def test_close_from_another_task_ends_the_iteration() -> None:
    client, presence, _ = make_client()
    presence.subscribe_calls = [FakeSubscribeCall([online("b", snapshot=True)], hang=True)]
    async with client:
        subscription = client.subscribe_presence(["b"])
        updates: list[PresenceUpdate] = []

        async def consume() -> None:
            async for update in subscription:
                updates.append(update)

        task = asyncio.create_task(consume())
        async with asyncio.timeout(10):
            while not updates:
                await asyncio.sleep(0.01)
            await subscription.close()
            await task
        assert presence.subscribe_calls[0].cancelled.is_set()
        with pytest.raises(RuntimeError, match="once"):
            subscription.__aiter__()


async def test_closing_the_client_ends_its_subscriptions() -> None:
    client, presence, _ = make_client()
    presence.subscribe_calls = [FakeSubscribeCall([], hang=True)]
    subscription = client.subscribe_presence(["b"])
    task = asyncio.create_task(collect(subscription))
    async with asyncio.timeout(10):
        while not presence.subscribe_requests:
            await asyncio.sleep(0.01)
        await client.close()
        assert await task == []


# -- keep_online ----------------------------------------------------------------------------


async def test_keep_online_heartbeats_at_the_interval_and_goes_offline_on_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presence_module, "_MIN_INTERVAL", 0.01)
    client, presence, _ = make_client()
    beats = presence.answer(
        "Heartbeat",
        lambda r: ppb.HeartbeatResponse(interval=duration_pb2.Duration(nanos=20_000_000)),
    )
    gone = presence.answer("GoOffline", lambda r: ppb.GoOfflineResponse())
    async with client:
        async with client.keep_online() as keeper:
            assert keeper.online
            assert keeper.interval == timedelta(milliseconds=20)
            async with asyncio.timeout(10):
                while keeper.heartbeats < 4:
                    await asyncio.sleep(0.01)
            assert not gone.requests
        assert len(gone.requests) == 1
        count = len(beats.requests)
        await asyncio.sleep(0.1)
        assert len(beats.requests) == count, "no heartbeat after the block"


async def test_keep_online_rides_out_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presence_module, "_MIN_INTERVAL", 0.01)
    monkeypatch.setattr(presence_module, "_RETRY_AFTER_FAILURE", 0.01)
    client, presence, _ = make_client()
    down = rpc_error(grpc.StatusCode.UNAVAILABLE, "redis down")
    presence.answer(
        "Heartbeat",
        lambda r: ppb.HeartbeatResponse(interval=duration_pb2.Duration(nanos=10_000_000)),
        errors=[down] * 4,  # two calls of two attempts each
    )
    gone = presence.answer("GoOffline", lambda r: ppb.GoOfflineResponse())
    async with client:
        async with client.keep_online() as keeper:
            assert not keeper.online
            assert isinstance(keeper.last_error, UnavailableError)
            async with asyncio.timeout(10):
                while not keeper.online:
                    await asyncio.sleep(0.01)
            assert keeper.last_error is None
        assert len(gone.requests) == 1


async def test_keep_online_raises_what_a_retry_cannot_fix_and_skips_go_offline() -> None:
    client, presence, _ = make_client()
    presence.answer(
        "Heartbeat",
        lambda r: ppb.HeartbeatResponse(),
        errors=[rpc_error(grpc.StatusCode.UNAUTHENTICATED)],
    )
    async with client:
        with pytest.raises(UnauthenticatedError):
            async with client.keep_online():
                raise AssertionError("the block must not run")


def pb_credentials(now: datetime) -> accounts_pb2.RefreshTokenResponse:
    response = accounts_pb2.RefreshTokenResponse()
    credentials = response.credentials
    credentials.access_token = "at2"
    credentials.refresh_token = "rt2"
    credentials.access_token_expire_time.FromDatetime(now + timedelta(hours=1))
    credentials.refresh_token_expire_time.FromDatetime(now + timedelta(days=30))
    return response


def _reason(reason: str) -> bytes:
    status = status_pb2.Status(code=grpc.StatusCode.UNAUTHENTICATED.value[0], message="expired")
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="parley.dev"))
    status.details.append(info)
    return status.SerializeToString()
