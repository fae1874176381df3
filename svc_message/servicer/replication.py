"""parley.message.v1.RegionReplicationService: a peer region's owner sends the
changes of its conversations here (service credential, checked by the
interceptor like MessageInternalService)."""

from __future__ import annotations

from typing import Any

from parley.message.v1 import replication_pb2 as rpb
from parley.message.v1 import replication_pb2_grpc as rgrpc
from parley_core.validation import Check
from svc_message.domain.replication import ReplicaApplier
from svc_message.model.replication import ReplicatedDoc, ReplicatedKind

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["RegionReplicationService"].full_name
MAX_CHANGES = 500
MAX_HIGH_WATER_IDS = 500
KIND_FROM_WIRE = {
    rpb.REPLICATED_KIND_MESSAGE: ReplicatedKind.MESSAGE,
    rpb.REPLICATED_KIND_CONVERSATION: ReplicatedKind.CONVERSATION,
    rpb.REPLICATED_KIND_MEMBER: ReplicatedKind.MEMBER,
    rpb.REPLICATED_KIND_MEMBER_REMOVAL: ReplicatedKind.MEMBER_REMOVAL,
    rpb.REPLICATED_KIND_SETTINGS: ReplicatedKind.SETTINGS,
}


class RegionReplicationServicer(rgrpc.RegionReplicationServiceServicer):
    def __init__(self, applier: ReplicaApplier) -> None:
        self._applier = applier

    async def Apply(self, request: rpb.ApplyRequest, context: Any) -> rpb.ApplyResponse:
        check = Check()
        if not request.source_region:
            check.fail("source_region", "required")
        if len(request.changes) > MAX_CHANGES:
            check.fail("changes", f"at most {MAX_CHANGES}, got {len(request.changes)}")
        docs: list[ReplicatedDoc] = []
        for i, change in enumerate(request.changes[:MAX_CHANGES]):
            kind = KIND_FROM_WIRE.get(change.kind)
            if kind is None:
                check.fail(
                    f"changes[{i}].kind",
                    "must be MESSAGE, CONVERSATION, MEMBER, MEMBER_REMOVAL or SETTINGS",
                )
            elif not change.conversation_id or not change.document:
                check.fail(f"changes[{i}]", "conversation_id and document are required")
            else:
                docs.append(ReplicatedDoc(kind, change.conversation_id, change.document))
        check.done()
        outcome = await self._applier.apply(request.source_region, docs)
        return rpb.ApplyResponse(applied=outcome.applied, already_present=outcome.already_present)

    async def HighWater(self, request: rpb.HighWaterRequest, context: Any) -> rpb.HighWaterResponse:
        check = Check()
        if len(request.conversation_ids) > MAX_HIGH_WATER_IDS:
            check.fail("conversation_ids", f"at most {MAX_HIGH_WATER_IDS}")
        check.done()
        marks = await self._applier.high_water(request.conversation_ids)
        return rpb.HighWaterResponse(
            conversations=[
                rpb.ConversationHighWater(
                    conversation_id=c, last_seq=m.last_seq, max_version=m.max_version
                )
                for c, m in sorted(marks.items())
            ]
        )
