"""The auth matrix of the history export RPCs (MessageService).

Each against every bad credential (no token, malformed, tampered, forged,
expired, revoked): UNAUTHENTICATED with the matching reason. Another user's
valid token reaches nothing of the victim's: the victim's export is
NOT_FOUND to it (by id, for cancel, and absent from its list), and an export
of the victim's conversation is PERMISSION_DENIED.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.chaos.auth_calls import refused
from tests.chaos.export_calls import EXPORT_RPCS, export_calls
from tests.helpers import Metadata, auth
from tests.refusals import until_revoked
from tests.users import direct, error_reason, link_device, rid, sign_up

pytestmark = pytest.mark.chaos

MESSAGE_RPCS = {m.name for m in mpb.DESCRIPTOR.services_by_name["MessageService"].methods}


@pytest_asyncio.fixture(loop_scope="session")
async def stubs(
    chaos: LocalStack,
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, mgrpc.MessageServiceStub]]:
    async with (
        grpc.aio.insecure_channel(chaos.keys_target) as keys_channel,
        grpc.aio.insecure_channel(chaos.message_targets[0]) as message_channel,
    ):
        yield kgrpc.AccountServiceStub(keys_channel), mgrpc.MessageServiceStub(message_channel)


def test_the_export_rpcs_are_message_service_rpcs() -> None:
    assert EXPORT_RPCS <= MESSAGE_RPCS


async def test_bad_credentials_are_refused_by_every_export_rpc(
    chaos: LocalStack, stubs: Any, tmp_path: Path
) -> None:
    keys, messages = stubs
    alice, bob = await sign_up(keys), await sign_up(keys)
    laptop = await link_device(keys, alice)
    conversation_id = await direct(messages, alice, bob)
    export = await messages.RequestHistoryExport(
        mpb.RequestHistoryExportRequest(request_id=rid(), conversation_id=conversation_id),
        metadata=alice.md,
    )
    issuer = TokenIssuer(load_private_key(chaos.private_key_path), ttl_seconds=60)
    expired = issuer.issue(
        account_id=alice.account_id, device_id=alice.device_id, now=time.time() - 120
    ).token
    write_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub.pem")
    forged = (
        TokenIssuer(load_private_key(tmp_path / "evil.pem"), ttl_seconds=600)
        .issue(account_id=alice.account_id, device_id=alice.device_id, now=time.time())
        .token
    )
    header, payload, signature = alice.access_token.split(".")
    other_payload = bob.access_token.split(".")[1]
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=laptop.device_id), metadata=alice.md
    )
    cases: list[tuple[str, Metadata, str]] = [
        ("no token", (), "ERROR_REASON_TOKEN_INVALID"),
        ("empty bearer", (("authorization", "Bearer "),), "ERROR_REASON_TOKEN_INVALID"),
        ("basic scheme", (("authorization", "Basic YWxpY2U6eA=="),), "ERROR_REASON_TOKEN_INVALID"),
        ("not a jwt", auth("not.a.jwt"), "ERROR_REASON_TOKEN_INVALID"),
        ("huge", auth("a" * 6000), "ERROR_REASON_TOKEN_INVALID"),
        (
            "tampered payload",
            auth(f"{header}.{other_payload}.{signature}"),
            "ERROR_REASON_TOKEN_INVALID",
        ),
        ("bad signature", auth(f"{header}.{payload}.{flipped}"), "ERROR_REASON_TOKEN_INVALID"),
        ("unknown key", auth(forged), "ERROR_REASON_TOKEN_INVALID"),
        ("expired", auth(expired), "ERROR_REASON_TOKEN_EXPIRED"),
        ("revoked", laptop.md, "ERROR_REASON_TOKEN_REVOKED"),
    ]
    # Every process refuses the revoked token before the matrix runs.
    await until_revoked(
        lambda: messages.ListHistoryExports(mpb.ListHistoryExportsRequest(), metadata=laptop.md),
        service="svc_message",
    )

    calls = export_calls(messages, conversation_id=conversation_id, export_id=export.export_id)
    assert set(calls) == EXPORT_RPCS, "the matrix misses an export RPC"
    for name, md, reason in cases:
        for rpc, call in calls.items():
            error = await refused(call(md))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
            assert error_reason(error) == reason, (name, rpc)
    # The export is untouched by all of it.
    mine = await messages.GetHistoryExport(
        mpb.GetHistoryExportRequest(export_id=export.export_id), metadata=alice.md
    )
    assert mine.state != mpb.HistoryExport.STATE_CANCELLED


async def test_another_users_token_never_reaches_an_export(stubs: Any) -> None:
    keys, messages = stubs
    alice, bob, mallory = await sign_up(keys), await sign_up(keys), await sign_up(keys)
    conversation_id = await direct(messages, alice, bob)
    export = await messages.RequestHistoryExport(
        mpb.RequestHistoryExportRequest(request_id=rid(), conversation_id=conversation_id),
        metadata=alice.md,
    )
    calls = export_calls(messages, conversation_id=conversation_id, export_id=export.export_id)
    expected = {
        "RequestHistoryExport": (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_NOT_A_MEMBER"),
        "GetHistoryExport": (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_EXPORT_NOT_FOUND"),
        "CancelHistoryExport": (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_EXPORT_NOT_FOUND"),
    }
    for rpc, (code, reason) in expected.items():
        error = await refused(calls[rpc](mallory.md))
        assert (error.code(), error_reason(error)) == (code, reason), rpc
    # Bob shares the conversation but not alice's export.
    for rpc in ("GetHistoryExport", "CancelHistoryExport"):
        error = await refused(calls[rpc](bob.md))
        assert error.code() == grpc.StatusCode.NOT_FOUND, rpc
    for intruder in (bob, mallory):
        listed = await calls["ListHistoryExports"](intruder.md)
        assert export.export_id not in {e.export_id for e in listed.exports}
    listed = await calls["ListHistoryExports"](alice.md)
    assert export.export_id in {e.export_id for e in listed.exports}
    mine = await messages.GetHistoryExport(
        mpb.GetHistoryExportRequest(export_id=export.export_id), metadata=alice.md
    )
    assert mine.state != mpb.HistoryExport.STATE_CANCELLED
