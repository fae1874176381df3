"""parley.presence.v1.PresenceRegionService (called by the svc_presence of
peer regions with the service credential, which the interceptor checks)."""

from __future__ import annotations

import time
from typing import Any

from parley.presence.v1 import internal_pb2 as pb
from parley.presence.v1 import internal_pb2_grpc
from parley_core.validation import Check
from svc_presence.domain.region_intake import RegionIntake
from svc_presence.model import ExportEntry

REGION_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PresenceRegionService"].full_name
# A digest page of the exporter is 1000; a little room above it.
MAX_ENTRIES = 2000


class PresenceRegionServicer(internal_pb2_grpc.PresenceRegionServiceServicer):
    def __init__(self, intake: RegionIntake) -> None:
        self._intake = intake

    async def ApplyPresence(
        self, request: pb.ApplyPresenceRequest, context: Any
    ) -> pb.ApplyPresenceResponse:
        check = Check().text("source_region", request.source_region, min_len=1, max_len=63)
        if len(request.entries) > MAX_ENTRIES:
            check.fail("entries", f"at most {MAX_ENTRIES} entries per call")
        for i, entry in enumerate(request.entries[:MAX_ENTRIES]):
            check.id(f"entries[{i}].account_id", entry.account_id)
            check.non_negative(f"entries[{i}].last_seen_ms", entry.last_seen_ms)
            if entry.expires_in_ms <= 0:
                check.fail(f"entries[{i}].expires_in_ms", "must be positive")
        check.done()
        applied = await self._intake.apply(
            source=request.source_region,
            entries=[
                ExportEntry(e.account_id, e.online, e.last_seen_ms, e.expires_in_ms)
                for e in request.entries
            ],
            digest=request.digest,
            now=time.time(),
        )
        return pb.ApplyPresenceResponse(applied=applied)
