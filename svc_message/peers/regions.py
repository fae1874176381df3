"""svc_message of the deployment's other regions, as owners of conversations.

A request is forwarded as the bytes the caller sent to the same
MessageService method at the region's peer address for ``message``, with the
caller's own token (every region verifies every region's tokens) and the
region-forwarded mark; the answer, or the status with its details, comes
back unchanged (svc_message/peers/owners.py does the call).
"""

from __future__ import annotations

from collections.abc import Callable

from parley_core.regions import REGION_FORWARDED
from parley_core.topology import Topology
from svc_message.model.ownership import OwnerUnreachable
from svc_message.peers.owners import OwnerChannels


class RegionChannels:
    """Implements ports.RegionLink."""

    def __init__(self, topology: Callable[[], Topology | None], channels: OwnerChannels) -> None:
        self._topology = topology
        self._channels = channels

    async def forward_to_region(
        self, region: str, method: str, request: bytes, *, bearer_token: str, timeout: float
    ) -> bytes:
        topology = self._topology()
        endpoints = topology.regions.get(region) if topology is not None else None
        address = endpoints.peer_address("message") if endpoints is not None else None
        if address is None:
            raise OwnerUnreachable(f"the topology names no peer endpoint for region {region!r}")
        return await self._channels.forward(
            address,
            method,
            request,
            bearer_token=bearer_token,
            timeout=timeout,
            mark=REGION_FORWARDED,
        )
