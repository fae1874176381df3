"""The topology document: the region map, peers, residency and shard routing.

Written as JSON into the ``<name>-topology`` ConfigMap under ``topology.json``
and mounted at ``/etc/parley/topology/`` in every pod, so the kubelet swaps in
a new version without a restart. The format is described in operator/README.md.
"""

from __future__ import annotations

import hashlib
from typing import Any

from parley_operator.spec import GRPC_PORTS, RegionSpec

TOPOLOGY_FILE = "topology.json"
FORMAT_VERSION = 1
# How a conversation id maps to a shard; named so a reader can refuse one it
# does not know rather than route differently from its peers.
SHARD_HASH = "sha256-first8-mod"


def conversation_shard(conversation_id: str, shards: int) -> int:
    """The shard of a conversation, as every reader of the document must compute it."""
    digest = hashlib.sha256(conversation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def service_address(region: RegionSpec, service: str) -> str:
    """The in-cluster host:port of a service's Service (what other services dial)."""
    return f"{region.name}-{service}.{region.namespace}.svc.cluster.local:{GRPC_PORTS[service]}"


def topology_document(region: RegionSpec, generation: int) -> dict[str, Any]:
    regions: dict[str, Any] = {
        region.region: {
            "self": True,
            "publicEndpoint": region.public_endpoint,
            "peerEndpoint": None,
            "number": region.number,
        }
    }
    for peer in region.peers:
        regions[peer.name] = {
            "self": False,
            "publicEndpoint": peer.public_endpoint,
            "peerEndpoint": peer.endpoint,
            "number": peer.number,
        }
    extra: dict[str, Any] = {}
    if region.handle_registrars is not None:
        extra["handleRegistrars"] = list(region.handle_registrars)
    if region.legacy_region is not None:
        extra["legacyRegion"] = region.legacy_region
    return {
        **extra,
        "format": FORMAT_VERSION,
        "generation": generation,
        "region": region.region,
        "regions": regions,
        "residency": {
            "homeOnlyData": sorted(region.home_only_data),
            "replicateTo": sorted(region.replicate_to),
        },
        "routing": {
            "conversationShards": region.conversation_shards,
            "shardHash": SHARD_HASH,
            # The services this region runs (media only when enabled).
            "services": {name: service_address(region, name) for name in region.services},
        },
    }
