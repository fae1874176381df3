"""The svc_media and svc_message of the deployment's other regions.

Media requests for objects another region holds are forwarded as bytes to
that region's svc_media (the topology's peer address for ``media``) with the
caller's own token, or the service credential for MediaReferenceService, and
the region-forwarded mark; the receiver never forwards again. A refusal the
region answered is raised as the ParleyError it was; a call that got no
answer is RegionUnreachable. ``MessagePeers`` gives the other regions'
svc_message internal service, for access checks and reference counts of
messages replicated only there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import grpc
import structlog
from grpc_status import rpc_status

from parley_core.auth.credentials import ServiceCredential
from parley_core.regions import REGION_FORWARDED
from parley_core.rpc.status import error_from_status
from parley_core.topology import Topology
from svc_media.peers.messages import MessagePeerClient
from svc_media.ports import RegionUnreachable

log = structlog.get_logger(__name__)

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _peer_address(topology: Topology | None, region: str, service: str) -> str | None:
    endpoints = topology.regions.get(region) if topology is not None else None
    if endpoints is None or endpoints.is_self:
        return None
    return endpoints.peer_address(service)


class MediaRegionClient:
    """Implements ports.RegionLink over gRPC, one channel per peer address."""

    def __init__(
        self,
        topology: Callable[[], Topology | None],
        *,
        credential: ServiceCredential | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._topology = topology
        self._credential = credential
        self._interceptors = list(interceptors) or None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, region: str) -> grpc.aio.Channel:
        address = _peer_address(self._topology(), region, "media")
        if address is None:
            raise RegionUnreachable(f"the topology names no media peer endpoint for {region!r}")
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors
            )
            self._channels[address] = channel
        return channel

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str | None,
        timeout: float | None,
    ) -> bytes:
        # No (de)serializers: the request and the answer pass as bytes.
        call = self._channel(region).unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        metadata: tuple[tuple[str, str], ...] = ((REGION_FORWARDED, "1"),)
        if bearer_token is not None:
            metadata += (("authorization", f"Bearer {bearer_token}"),)
        elif self._credential is not None:
            metadata += tuple(self._credential.metadata())
        try:
            answer: bytes = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            try:
                status = rpc_status.from_call(error)  # type: ignore[arg-type]
            except ValueError:
                status = None
            refusal = error_from_status(status) if status is not None else None
            if refusal is not None:
                raise refusal from None
            log.warning("media_region_call_failed", region=region, code=error.code().name)
            raise RegionUnreachable(error.code().name.lower()) from None
        return answer

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()


class MessagePeers:
    """Every other region's svc_message internal service, by region name."""

    def __init__(
        self,
        topology: Callable[[], Topology | None],
        *,
        credential: ServiceCredential | None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._topology = topology
        self._credential = credential
        self._interceptors = interceptors
        self._clients: dict[str, MessagePeerClient] = {}

    def __call__(self) -> Mapping[str, MessagePeerClient]:
        topology = self._topology()
        if topology is None:
            return {}
        peers: dict[str, MessagePeerClient] = {}
        for region in topology.regions:
            address = _peer_address(topology, region, "message")
            if address is None:
                continue
            client = self._clients.get(address)
            if client is None:
                client = MessagePeerClient(
                    address, self._credential, interceptors=self._interceptors
                )
                self._clients[address] = client
            peers[region] = client
        return peers

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
