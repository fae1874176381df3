"""svc_keys against the real stack: sign-up, devices, tokens and their failures."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.keys.v1 import accounts_pb2 as kpb
from parley.message.v1 import messages_pb2 as mpb
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.helpers import auth
from tests.users import link_device, rid, sign_up, unique_handle


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            assert info.domain == "parley.dev"
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def new_device(name: str = "phone") -> kpb.NewDevice:
    return kpb.NewDevice(name=name, platform=1)


async def test_sign_up_returns_working_credentials(keys) -> None:
    user = await sign_up(keys)
    me = await keys.GetAccount(kpb.GetAccountRequest(), metadata=user.md)
    assert me.account_id == user.account_id
    assert me.handle == user.handle


async def test_sign_up_retry_returns_same_account(keys) -> None:
    request = kpb.SignUpRequest(request_id=rid(), handle=unique_handle(), device=new_device())
    first, second = await asyncio.gather(keys.SignUp(request), keys.SignUp(request))
    assert first.account.account_id == second.account.account_id
    assert first.device.device_id == second.device.device_id


@pytest.mark.parametrize(
    "handle",
    ["ab", "x" * 33, "1abc", "_abc", "bad handle", "héllo", "ab-c", "abc..d", "abc.", "admin"],
)
async def test_bad_handles_are_invalid_argument_naming_the_field(keys, handle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.SignUp(kpb.SignUpRequest(request_id=rid(), handle=handle, device=new_device()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = details(caught.value)
    assert reason == "ERROR_REASON_INVALID_FIELD"
    assert fields == ["handle"]


async def test_duplicate_handle_ignores_case(keys) -> None:
    handle = unique_handle("Dup")
    await sign_up(keys, handle)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sign_up(keys, handle.upper())
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(caught.value)[0] == "ERROR_REASON_HANDLE_TAKEN"


async def test_every_field_violation_is_reported(keys) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.SignUp(kpb.SignUpRequest(request_id="not-a-uuid", handle="", device=None))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(caught.value)[1]) == {"request_id", "handle", "device"}


async def test_get_account_by_handle_is_case_insensitive(keys) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    found = await keys.GetAccount(
        kpb.GetAccountRequest(handle=bob.handle.upper()), metadata=alice.md
    )
    assert found.account_id == bob.account_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.GetAccount(
            kpb.GetAccountRequest(handle="nobody_" + rid()[:8]), metadata=alice.md
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_device_cap_and_listing(keys, stack: LocalStack) -> None:
    owner = await sign_up(keys)
    cap = stack.settings.keys.max_devices_per_account
    linked = [await link_device(keys, owner, name=f"d{i}") for i in range(cap - 1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await link_device(keys, owner)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught.value)[0] == "ERROR_REASON_DEVICE_LIMIT_REACHED"

    seen, token = [], ""
    while True:
        page = await keys.ListDevices(
            kpb.ListDevicesRequest(page_size=2, page_token=token), metadata=owner.md
        )
        seen.extend(d.device_id for d in page.devices)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted([owner.device_id, *(d.device_id for d in linked)])

    # Revoking one frees its slot.
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=linked[0].device_id), metadata=owner.md
    )
    await link_device(keys, owner)


async def test_register_device_retry_is_idempotent(keys) -> None:
    owner = await sign_up(keys)
    request = kpb.RegisterDeviceRequest(request_id=rid(), device=new_device("tablet"))
    first = await keys.RegisterDevice(request, metadata=owner.md)
    second = await keys.RegisterDevice(request, metadata=owner.md)
    assert first.device.device_id == second.device.device_id


async def test_refresh_rotates_and_old_refresh_token_is_refused(keys) -> None:
    user = await sign_up(keys)
    fresh = await keys.RefreshToken(
        kpb.RefreshTokenRequest(request_id=rid(), refresh_token=user.refresh_token)
    )
    await keys.GetAccount(kpb.GetAccountRequest(), metadata=auth(fresh.credentials.access_token))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.RefreshToken(
            kpb.RefreshTokenRequest(request_id=rid(), refresh_token=user.refresh_token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(caught.value)[0] == "ERROR_REASON_REFRESH_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "ERROR_REASON_TOKEN_INVALID"),
        ((("authorization", "Basic abc"),), "ERROR_REASON_TOKEN_INVALID"),
        ((("authorization", "Bearer not.a.jwt"),), "ERROR_REASON_TOKEN_INVALID"),
        ((("authorization", "Bearer "),), "ERROR_REASON_TOKEN_INVALID"),
    ],
)
async def test_missing_or_malformed_tokens_are_refused(
    keys, messages, metadata, reason: str
) -> None:
    for call in (
        keys.GetAccount(kpb.GetAccountRequest(), metadata=metadata),
        messages.ListConversations(mpb.ListConversationsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(caught.value)[0] == reason


async def test_expired_token_is_refused_everywhere(keys, messages, stack: LocalStack) -> None:
    user = await sign_up(keys)
    issuer = TokenIssuer(load_private_key(stack.private_key_path), ttl_seconds=60)
    expired = issuer.issue(
        account_id=user.account_id, device_id=user.device_id, now=time.time() - 120
    )
    for call in (
        keys.GetAccount(kpb.GetAccountRequest(), metadata=auth(expired.token)),
        messages.ListConversations(mpb.ListConversationsRequest(), metadata=auth(expired.token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert details(caught.value)[0] == "ERROR_REASON_TOKEN_EXPIRED"


async def test_forged_tokens_are_refused(keys, messages, tmp_path) -> None:
    user = await sign_up(keys)
    write_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub.pem")
    evil = TokenIssuer(load_private_key(tmp_path / "evil.pem"), ttl_seconds=600)
    forged_key = evil.issue(account_id=user.account_id, device_id=user.device_id, now=time.time())
    header, _payload, signature = user.access_token.split(".")
    other = await sign_up(keys)
    tampered = ".".join([header, other.access_token.split(".")[1], signature])
    for token in (forged_key.token, tampered):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await messages.ListConversations(mpb.ListConversationsRequest(), metadata=auth(token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_revoked_device_is_refused_everywhere(keys, messages, messages_b) -> None:
    owner = await sign_up(keys)
    laptop = await link_device(keys, owner)
    await messages.ListConversations(mpb.ListConversationsRequest(), metadata=laptop.md)
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=owner.md
    )

    async def refused(call) -> bool:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return details(exc)[0] == "ERROR_REASON_TOKEN_REVOKED"
        return False

    # svc_keys refuses at once; the other processes hear it over Redis.
    assert await refused(keys.GetAccount(kpb.GetAccountRequest(), metadata=laptop.md))
    for stub in (messages, messages_b):
        deadline = time.monotonic() + 3
        while not await refused(
            stub.ListConversations(mpb.ListConversationsRequest(), metadata=laptop.md)
        ):
            assert time.monotonic() < deadline, "revocation did not reach svc_message"
            await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.RefreshToken(
            kpb.RefreshTokenRequest(request_id=rid(), refresh_token=laptop.refresh_token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The owner's own device is untouched.
    await messages.ListConversations(mpb.ListConversationsRequest(), metadata=owner.md)


async def test_cannot_revoke_another_accounts_device(keys) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.RevokeDevice(
            kpb.RevokeDeviceRequest(request_id=rid(), device_id=bob.device_id), metadata=alice.md
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await keys.GetAccount(kpb.GetAccountRequest(), metadata=bob.md)
