"""The svc_presence of the deployment's other regions: PresenceRegionService.

One channel per peer address (``peerServices.presence``, else
``peerEndpoint``, from the topology in force), the deployment's service
credential, a short deadline: a push that does not get through is retried
by the exporter (changes) or superseded by the next digest, so nothing waits
long on a region that is down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from parley.presence.v1 import internal_pb2 as pb
from parley.presence.v1 import internal_pb2_grpc
from parley_core.auth.credentials import ServiceCredential
from parley_core.topology import Topology
from svc_presence.model import ExportEntry, PeerUnreachable

CALL_TIMEOUT_SECONDS = 2.0
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
)


class PresencePeerClient:
    """Implements ports.PeerRegions over gRPC."""

    def __init__(
        self,
        topology: Callable[[], Topology | None],
        *,
        credential: ServiceCredential | None,
        timeout_seconds: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._topology = topology
        self._credential = credential
        self._timeout = timeout_seconds
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, region: str) -> grpc.aio.Channel:
        topology = self._topology()
        endpoints = topology.regions.get(region) if topology is not None else None
        address = endpoints.peer_address("presence") if endpoints is not None else None
        if address is None:
            raise PeerUnreachable(f"the topology names no peer endpoint for {region!r}")
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    async def apply(self, region: str, entries: Sequence[ExportEntry], *, digest: bool) -> int:
        if self._credential is None:
            raise PeerUnreachable("no service credential is configured")
        topology = self._topology()
        if topology is None:
            raise PeerUnreachable("no topology")
        request = pb.ApplyPresenceRequest(
            source_region=topology.region,
            digest=digest,
            entries=[
                pb.RegionPresence(
                    account_id=e.account_id,
                    online=e.online,
                    last_seen_ms=e.seen_ms,
                    expires_in_ms=e.expires_in_ms,
                )
                for e in entries
            ],
        )
        stub = internal_pb2_grpc.PresenceRegionServiceStub(self._channel(region))
        try:
            answer = await stub.ApplyPresence(
                request, metadata=self._credential.metadata(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise PeerUnreachable(f"{region}: {error.code().name}: {error.details()}") from None
        return int(answer.applied)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
