"""A peer region's RegionReplicationService, as the owner's replicator calls
it: one channel to the peer's ``peerEndpoint``, the service credential as
bearer token (for now; a per-peer credential replaces it with the multi-region
deployment)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from parley.message.v1 import replication_pb2 as rpb
from parley.message.v1 import replication_pb2_grpc as rgrpc
from svc_message.model.replication import (
    ApplyOutcome,
    HighWater,
    PeerUnavailable,
    ReplicatedDoc,
    ReplicatedKind,
)

KIND_TO_WIRE = {
    ReplicatedKind.MESSAGE: rpb.REPLICATED_KIND_MESSAGE,
    ReplicatedKind.CONVERSATION: rpb.REPLICATED_KIND_CONVERSATION,
    ReplicatedKind.MEMBER: rpb.REPLICATED_KIND_MEMBER,
    ReplicatedKind.MEMBER_REMOVAL: rpb.REPLICATED_KIND_MEMBER_REMOVAL,
    ReplicatedKind.SETTINGS: rpb.REPLICATED_KIND_SETTINGS,
}
# What the server takes in one HighWater request (replication.proto).
HIGH_WATER_IDS = 500
# Codes after which the batch may or may not have been applied: sending it
# again is safe (apply is idempotent), so all mean "try again".
_RETRY = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ReplicationPeer:
    def __init__(
        self,
        *,
        source_region: str,
        address: str,
        bearer_token: str,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._source_region = source_region
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = rgrpc.RegionReplicationServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {bearer_token}"),)
        self._timeout = timeout_seconds

    async def apply(self, batch_id: str, docs: Sequence[ReplicatedDoc]) -> ApplyOutcome:
        request = rpb.ApplyRequest(
            source_region=self._source_region,
            batch_id=batch_id,
            changes=[
                rpb.ReplicatedChange(
                    kind=KIND_TO_WIRE[d.kind],
                    conversation_id=d.conversation_id,
                    document=d.document,
                )
                for d in docs
            ],
        )
        try:
            answer = await self._stub.Apply(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRY:
                raise PeerUnavailable(f"{error.code().name}: {error.details()}") from None
            raise
        return ApplyOutcome(applied=answer.applied, already_present=answer.already_present)

    async def high_water(self, conversation_ids: Sequence[str]) -> dict[str, HighWater]:
        marks: dict[str, HighWater] = {}
        ids = list(conversation_ids)
        for start in range(0, len(ids), HIGH_WATER_IDS):
            try:
                answer = await self._stub.HighWater(
                    rpb.HighWaterRequest(conversation_ids=ids[start : start + HIGH_WATER_IDS]),
                    metadata=self._metadata,
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRY:
                    raise PeerUnavailable(f"{error.code().name}: {error.details()}") from None
                raise
            for mark in answer.conversations:
                marks[mark.conversation_id] = HighWater(
                    last_seq=mark.last_seq, max_version=mark.max_version
                )
        return marks

    async def close(self) -> None:
        await self._channel.close(grace=None)
