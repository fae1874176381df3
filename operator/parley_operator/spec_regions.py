"""The ParleyRegion spec's region links, parsed: the region's number, its
peers, who registers handles, the legacy owner, residency and the settings of
replication to the peers (docs/design/regions.md). ``spec.parse_region``
folds them into the RegionSpec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley_operator.spec_errors import SpecError

# Bounds of spec.replication, the same as parley_core.config's
# message.replication (the operator does not import parley_core; the unit
# tests check that a rendered config loads).
REPLICATION_BOUNDS: Mapping[str, tuple[str, float, float]] = {
    # CRD key -> (config key, least, most); retrySeconds must be above 0.
    "batchChanges": ("batch_changes", 1, 10_000),
    "batchSeconds": ("batch_seconds", 0, 60),
    "leaseSeconds": ("lease_seconds", 1, 3600),
    "retrySeconds": ("retry_seconds", 0, 300),
    "snapshotPage": ("snapshot_page", 1, 10_000),
}
# Keys whose least value is exclusive (a zero wait or pause makes no sense).
EXCLUSIVE_MINIMUM = frozenset({"retrySeconds"})
INTEGER_KEYS = frozenset({"batchChanges", "snapshotPage"})


@dataclass(frozen=True)
class Peer:
    name: str
    endpoint: str
    public_endpoint: str | None = None
    # The peer's region number (docs/design/regions.md, tagged ids).
    number: int | None = None


@dataclass(frozen=True)
class ReplicationSpec:
    """spec.replication: each unset value leaves the service's default."""

    batch_changes: int | None = None
    batch_seconds: float | None = None
    lease_seconds: float | None = None
    retry_seconds: float | None = None
    snapshot_page: int | None = None

    def config(self) -> dict[str, float]:
        """The set values as svc_message's message.replication section."""
        values = {
            "batch_changes": self.batch_changes,
            "batch_seconds": self.batch_seconds,
            "lease_seconds": self.lease_seconds,
            "retry_seconds": self.retry_seconds,
            "snapshot_page": self.snapshot_page,
        }
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class RegionLinks:
    number: int | None
    peers: tuple[Peer, ...]
    handle_registrars: tuple[str, ...] | None
    legacy_region: str | None
    home_only_data: tuple[str, ...]
    replicate_to: tuple[str, ...]
    replication: ReplicationSpec


def _object(tree: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = tree.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key} must be an object")
    return value


def parse_links(region: str, spec: Mapping[str, Any]) -> RegionLinks:
    """The region links of a spec, or SpecError naming the field."""
    peers = tuple(
        Peer(
            name=str(p["name"]),
            endpoint=str(p["endpoint"]),
            public_endpoint=p.get("publicEndpoint"),
            number=region_number(p.get("number"), f"spec.peers[{p.get('name')}].number"),
        )
        for p in spec.get("peers") or ()
    )
    peer_names = [p.name for p in peers]
    if region in peer_names:
        raise SpecError(f"spec.peers lists the region itself ({region})")
    if len(set(peer_names)) != len(peer_names):
        raise SpecError("spec.peers names a region twice")
    number = region_number(spec.get("number"), "spec.number")
    check_region_numbers(number, peers)
    all_regions = {region, *peer_names}
    registrars = spec.get("handleRegistrars")
    if registrars is not None:
        registrars = tuple(str(r) for r in registrars)
        if not registrars or set(registrars) - all_regions:
            raise SpecError("spec.handleRegistrars must list some of the region and its peers")
    legacy_region = spec.get("legacyRegion")
    if legacy_region is not None and legacy_region not in all_regions:
        raise SpecError("spec.legacyRegion must be the region or one of its peers")
    residency = _object(spec, "residency")
    replicate_to = tuple(residency.get("replicateTo") or peer_names)
    unknown = sorted(set(replicate_to) - set(peer_names))
    if unknown:
        raise SpecError(f"spec.residency.replicateTo names regions that are not peers: {unknown}")
    return RegionLinks(
        number=number,
        peers=peers,
        handle_registrars=registrars,
        legacy_region=legacy_region,
        home_only_data=tuple(residency.get("homeOnlyData") or ()),
        replicate_to=replicate_to,
        replication=parse_replication(_object(spec, "replication")),
    )


def parse_replication(tree: Mapping[str, Any]) -> ReplicationSpec:
    unknown = sorted(set(tree) - set(REPLICATION_BOUNDS))
    if unknown:
        raise SpecError(f"spec.replication has unknown fields: {unknown}")
    values: dict[str, float] = {}
    for key, (config_key, least, most) in REPLICATION_BOUNDS.items():
        value = tree.get(key)
        if value is None:
            continue
        where = f"spec.replication.{key}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where} must be a number")
        if key in INTEGER_KEYS and not float(value).is_integer():
            raise SpecError(f"{where} must be an integer")
        too_low = value <= least if key in EXCLUSIVE_MINIMUM else value < least
        if too_low or value > most:
            side = "above" if key in EXCLUSIVE_MINIMUM else "at least"
            raise SpecError(f"{where} must be {side} {least:g} and at most {most:g}")
        values[config_key] = int(value) if key in INTEGER_KEYS else float(value)
    return ReplicationSpec(
        batch_changes=_int_or_none(values.get("batch_changes")),
        batch_seconds=values.get("batch_seconds"),
        lease_seconds=values.get("lease_seconds"),
        retry_seconds=values.get("retry_seconds"),
        snapshot_page=_int_or_none(values.get("snapshot_page")),
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def region_number(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise SpecError(f"{where} must be an integer from 0 to 255")
    return value


def check_region_numbers(number: int | None, peers: tuple[Peer, ...]) -> None:
    """Ids carry their region's number, so with peers every region needs a distinct one."""
    if not peers:
        return
    if number is None or any(p.number is None for p in peers):
        raise SpecError("spec.number and every spec.peers[].number are required with peers")
    numbers = [number, *(p.number for p in peers)]
    if len(set(numbers)) != len(numbers):
        raise SpecError("spec.number and spec.peers[].number must all differ")
