"""The CRD schema of the region's links to its peers: the peers, residency and
the settings of replication to them (parley_operator.crds)."""

from __future__ import annotations

from parley_operator.crd_schema import (
    ENDPOINT_PATTERN,
    Schema,
    integer_schema,
    number_schema,
    object_schema,
    string_schema,
)
from parley_operator.spec import DATA_KINDS, REGION_PATTERN
from parley_operator.spec_regions import EXCLUSIVE_MINIMUM, INTEGER_KEYS, REPLICATION_BOUNDS

# What each spec.replication field does; the bounds come from spec_regions.
REPLICATION_FIELDS: dict[str, str] = {
    "batchChanges": "Most feed changes sent to a peer in one Apply (also the page of a "
    "snapshot's sends); svc_message's default: 200.",
    "batchSeconds": "Seconds a batch waits, after its first change, for more before it is "
    "sent (batches also fill while the previous one is at the peer): more makes fuller "
    "batches over a slow link and more lag; default 0.",
    "leaseSeconds": "Seconds a svc_message process holds the lease of replicating to one "
    "peer unless it renews it: after the holder dies another takes over within this; "
    "default 10.",
    "retrySeconds": "Pause, in seconds, before the next try after a peer did not answer; "
    "default 0.5.",
    "snapshotPage": "Conversations read per page while a snapshot asks a peer for its "
    "high-water marks; default 200.",
}


def peers_schema() -> Schema:
    return {
        "type": "array",
        "description": "The other regions: conversation events replicate to them and "
        "requests for conversations homed there are forwarded to them.",
        "items": object_schema(
            "A peer region.",
            {
                "name": string_schema("The peer's region name.", pattern=REGION_PATTERN),
                "endpoint": string_schema(
                    "host:port of the peer's region-to-region endpoint.",
                    pattern=ENDPOINT_PATTERN,
                ),
                "publicEndpoint": string_schema(
                    "host:port the peer's clients connect to.", pattern=ENDPOINT_PATTERN
                ),
                "number": integer_schema(
                    "The peer's region number (its spec.number).", minimum=0, maximum=255
                ),
            },
            required=["name", "endpoint"],
        ),
        "maxItems": 64,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }


def residency_schema() -> Schema:
    return object_schema(
        "Data residency of users homed in this region.",
        {
            "homeOnlyData": {
                "type": "array",
                "description": "Data kinds that never leave this region.",
                "items": {"type": "string", "enum": list(DATA_KINDS)},
                "x-kubernetes-list-type": "set",
            },
            "replicateTo": {
                "type": "array",
                "description": "Peers conversation events may replicate to (empty: every peer).",
                "items": {"type": "string", "pattern": REGION_PATTERN},
                "x-kubernetes-list-type": "set",
            },
        },
        default={},
    )


def replication_schema() -> Schema:
    properties: Schema = {}
    for key, (_, least, most) in REPLICATION_BOUNDS.items():
        description = REPLICATION_FIELDS[key]
        if key in INTEGER_KEYS:
            properties[key] = integer_schema(description, minimum=int(least), maximum=int(most))
        elif key in EXCLUSIVE_MINIMUM:
            properties[key] = number_schema(
                description, minimum=least, exclusiveMinimum=True, maximum=most
            )
        else:
            properties[key] = number_schema(description, minimum=least, maximum=most)
    return object_schema(
        "Replication of this region's conversations to its peers (svc_message's "
        "message.replication); unset fields keep the service's defaults.",
        properties,
    )
