"""The auth matrix of svc_search.

Every SearchService RPC against every bad credential (no token, malformed,
tampered, forged, expired, revoked, the operator's or the service's
credential): UNAUTHENTICATED with the matching reason. SearchInternalService
takes only the service credential. Another user's valid token reaches
nothing of the victim's: its query with the victim's own tokens finds
nothing (and looks like a query without matches), and it can neither index
nor remove the victim's message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.search.v1 import internal_pb2 as ipb
from parley.search.v1 import internal_pb2_grpc as igrpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc as sgrpc
from parley_core.auth.credentials import new_token
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.helpers import Metadata, auth
from tests.refusals import until_revoked
from tests.search_world import Epoch, Query, index, request, send_opaque, set_search
from tests.users import Device, direct, error_reason, link_device, rid, sign_up

pytestmark = pytest.mark.chaos

Call = Callable[[Metadata], Awaitable[Any]]
SEARCH_RPCS = {m.name for m in spb.DESCRIPTOR.services_by_name["SearchService"].methods}
INTERNAL_RPCS = {m.name for m in ipb.DESCRIPTOR.services_by_name["SearchInternalService"].methods}


@dataclass
class Victim:
    alice: Device
    laptop: Device  # alice's second device, revoked
    bob: Device
    conversation_id: str
    message_id: str
    epoch: Epoch

    @property
    def query(self) -> list[Query]:
        return [Query(self.conversation_id, self.epoch, ("secret",))]


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded and returned {reply!r:.300}")


@pytest_asyncio.fixture(loop_scope="session")
async def stubs(
    chaos: LocalStack,
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, mgrpc.MessageServiceStub, Any, Any]]:
    async with (
        grpc.aio.insecure_channel(chaos.keys_target) as keys_channel,
        grpc.aio.insecure_channel(chaos.message_targets[0]) as message_channel,
        grpc.aio.insecure_channel(chaos.search_target) as search_channel,
    ):
        yield (
            kgrpc.AccountServiceStub(keys_channel),
            mgrpc.MessageServiceStub(message_channel),
            sgrpc.SearchServiceStub(search_channel),
            igrpc.SearchInternalServiceStub(search_channel),
        )


async def victim_world(stubs: Any) -> Victim:
    keys, messages, search, _ = stubs
    alice, bob = await sign_up(keys), await sign_up(keys)
    laptop = await link_device(keys, alice)
    conversation_id = await direct(messages, alice, bob)
    await set_search(messages, alice, conversation_id, True)
    message = await send_opaque(messages, alice, conversation_id)
    epoch = Epoch()
    await index(search, alice, conversation_id, message.message_id, epoch, ["secret"])
    return Victim(alice, laptop, bob, conversation_id, message.message_id, epoch)


def search_calls(search: sgrpc.SearchServiceStub, v: Victim) -> dict[str, Call]:
    """Every SearchService RPC, aimed at the victim's conversation and message."""
    return {
        "GetSearchSettings": lambda md: search.GetSearchSettings(
            spb.GetSearchSettingsRequest(), metadata=md
        ),
        "IndexMessage": lambda md: search.IndexMessage(
            spb.IndexMessageRequest(
                request_id=rid(),
                conversation_id=v.conversation_id,
                message_id=v.message_id,
                key_id=v.epoch.key_id,
                tokens=v.epoch.tokens(["intruder"]),
            ),
            metadata=md,
        ),
        "RemoveMessage": lambda md: search.RemoveMessage(
            spb.RemoveMessageRequest(conversation_id=v.conversation_id, message_id=v.message_id),
            metadata=md,
        ),
        "Search": lambda md: search.Search(request(v.query), metadata=md),
    }


async def test_bad_credentials_are_refused_by_every_search_rpc(
    chaos: LocalStack, stubs: Any, tmp_path: Path
) -> None:
    keys, _, search, internal = stubs
    v = await victim_world(stubs)
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
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=v.laptop.device_id),
        metadata=v.alice.md,
    )
    cases: list[tuple[str, Metadata, str]] = [
        ("no token", (), "ERROR_REASON_TOKEN_INVALID"),
        ("empty bearer", (("authorization", "Bearer "),), "ERROR_REASON_TOKEN_INVALID"),
        ("basic scheme", (("authorization", "Basic YWxpY2U6eA=="),), "ERROR_REASON_TOKEN_INVALID"),
        ("not a jwt", auth("not.a.jwt"), "ERROR_REASON_TOKEN_INVALID"),
        ("huge", auth("a" * 6000), "ERROR_REASON_TOKEN_INVALID"),
        ("bad signature", auth(f"{header}.{payload}.{flipped}"), "ERROR_REASON_TOKEN_INVALID"),
        ("unknown key", auth(forged), "ERROR_REASON_TOKEN_INVALID"),
        ("expired", auth(expired), "ERROR_REASON_TOKEN_EXPIRED"),
        ("revoked", v.laptop.md, "ERROR_REASON_TOKEN_REVOKED"),
        ("operator credential", auth(chaos.operator_token), "ERROR_REASON_TOKEN_INVALID"),
        ("service credential", auth(chaos.service_token), "ERROR_REASON_TOKEN_INVALID"),
    ]
    calls = search_calls(search, v)
    assert set(calls) == SEARCH_RPCS, "the matrix misses a search RPC"
    await until_revoked(lambda: calls["GetSearchSettings"](v.laptop.md), service="svc_search")
    for name, md, reason in cases:
        for rpc, call in calls.items():
            error = await refused(call(md))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
            assert error_reason(error) == reason, (name, rpc)

    # The internal service: the service credential and nothing else. Aimed at
    # the victim, so a credential that passed would erase her postings.
    erase: dict[str, Call] = {
        "EraseAccount": lambda md: internal.EraseAccount(
            ipb.EraseAccountRequest(account_id=v.alice.account_id), metadata=md
        )
    }
    assert set(erase) == INTERNAL_RPCS
    others = [(n, md) for n, md, _ in cases if n != "service credential"]
    for name, md in [*others, ("access token", v.alice.md), ("random", auth(new_token()))]:
        error = await refused(erase["EraseAccount"](md))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, error)

    # Nothing above changed the victim's postings.
    found = await search.Search(request(v.query), metadata=v.bob.md)
    assert [h.message_id for h in found.hits] == [v.message_id]
    # The service credential itself goes through (for an account that does not exist).
    done = await internal.EraseAccount(
        ipb.EraseAccountRequest(account_id=rid()), metadata=auth(chaos.service_token)
    )
    assert done.done


async def test_another_users_token_reaches_nothing_of_the_victims(
    chaos: LocalStack, stubs: Any
) -> None:
    keys, _, search, _ = stubs
    v = await victim_world(stubs)
    mallory = await sign_up(keys)
    calls = search_calls(search, v)
    indexed = await refused(calls["IndexMessage"](mallory.md))
    assert indexed.code() == grpc.StatusCode.NOT_FOUND
    removed = await refused(calls["RemoveMessage"](mallory.md))
    assert removed.code() == grpc.StatusCode.NOT_FOUND
    # Bob reads it but did not send it.
    not_sender = await refused(calls["RemoveMessage"](v.bob.md))
    assert not_sender.code() == grpc.StatusCode.PERMISSION_DENIED
    # The victim's own tokens (leaked) find nothing for mallory: the same
    # answer, to the byte count, as a query without matches.
    theirs = await calls["Search"](mallory.md)
    nothing = await search.Search(
        request([Query(v.conversation_id, v.epoch, ("absent",))]), metadata=v.bob.md
    )
    assert list(theirs.hits) == [] and not theirs.next_page_token
    assert theirs.ByteSize() == nothing.ByteSize()
    found = await search.Search(request(v.query), metadata=v.bob.md)
    assert [h.message_id for h in found.hits] == [v.message_id]
