"""The services regions call each other on take the deployment's service
credential and nothing else: svc_keys' AccountRegionService (handle
reservations, revocations) and svc_message's RegionReplicationService (replicated feed).
An account's token, a random token or none is UNAUTHENTICATED on every RPC;
the service credential is served (on a single-region stack too)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import regions_pb2 as rpb
from parley.keys.v1 import regions_pb2_grpc as rgrpc
from parley.message.v1 import replication_pb2 as reppb
from parley.message.v1 import replication_pb2_grpc as repgrpc
from parley_core.auth.credentials import new_token
from parley_dev.stack import LocalStack
from tests.chaos.auth_calls import Call, reason_of, refused
from tests.helpers import auth
from tests.users import rid, sign_up, unique_handle

KEYS_REGION_RPCS = {m.name for m in rpb.DESCRIPTOR.services_by_name["AccountRegionService"].methods}
REPLICATION_RPCS = {
    m.name for m in reppb.DESCRIPTOR.services_by_name["RegionReplicationService"].methods
}


def _keys_calls(stub: rgrpc.AccountRegionServiceStub, account_id: str) -> dict[str, Call]:
    release = Timestamp()
    release.FromDatetime(datetime.now(UTC))
    handle = unique_handle("reserved")
    return {
        "ReserveHandle": lambda md: stub.ReserveHandle(
            rpb.ReserveHandleRequest(
                handle=handle, account_id=str(uuid.uuid4()), home_region="local", request_id=rid()
            ),
            metadata=md,
        ),
        "LookupHandle": lambda md: stub.LookupHandle(
            rpb.LookupHandleRequest(handle=handle), metadata=md
        ),
        "ReleaseHandle": lambda md: stub.ReleaseHandle(
            rpb.ReleaseHandleRequest(handle=handle, account_id=account_id, release_time=release),
            metadata=md,
        ),
        # A device that does not exist: nothing it applies can refuse anyone.
        "ApplyRevocations": lambda md: stub.ApplyRevocations(
            rpb.ApplyRevocationsRequest(
                source_region="elsewhere",
                revocations=[
                    rpb.DeviceRevocation(device_id=str(uuid.uuid4()), revoke_time=release)
                ],
            ),
            metadata=md,
        ),
    }


def _replication_calls(stub: repgrpc.RegionReplicationServiceStub) -> dict[str, Call]:
    return {
        "Apply": lambda md: stub.Apply(
            reppb.ApplyRequest(source_region="elsewhere", batch_id="b"), metadata=md
        ),
        "HighWater": lambda md: stub.HighWater(
            reppb.HighWaterRequest(conversation_ids=[str(uuid.uuid4())]), metadata=md
        ),
    }


async def test_region_services_take_the_service_credential_only(
    chaos: LocalStack, keys_stub: kgrpc.AccountServiceStub
) -> None:
    user = await sign_up(keys_stub)
    bad = [(), user.md, auth(new_token()), (("authorization", f"Basic {chaos.service_token}"),)]
    async with grpc.aio.insecure_channel(chaos.keys_target) as channel:
        calls = _keys_calls(rgrpc.AccountRegionServiceStub(channel), user.account_id)
        assert set(calls) == KEYS_REGION_RPCS, "a region RPC of svc_keys is not covered"
        for md in bad:
            for name, call in calls.items():
                error = await refused(call(md))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, md)
                assert reason_of(error) == "ERROR_REASON_TOKEN_INVALID", name
        await calls["ReserveHandle"](auth(chaos.service_token))
        await calls["LookupHandle"](auth(chaos.service_token))
        await calls["ReleaseHandle"](auth(chaos.service_token))
        await calls["ApplyRevocations"](auth(chaos.service_token))
    for target in chaos.message_targets:
        async with grpc.aio.insecure_channel(target) as channel:
            calls = _replication_calls(repgrpc.RegionReplicationServiceStub(channel))
            assert set(calls) == REPLICATION_RPCS, "a replication RPC is not covered"
            for md in bad:
                for name, call in calls.items():
                    error = await refused(call(md))
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, md)
            for call in calls.values():
                await call(auth(chaos.service_token))
