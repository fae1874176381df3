"""The region topology the operator writes: regions, residency, shard routing.

The document is specified in operator/README.md ("The topology file") and
written by ``parley_operator.topology``. This reader is independent of it on
purpose (services never import the operator); a unit test feeds the
operator's output through ``parse_topology`` to pin the contract.

``TopologyWatcher`` polls the mounted file and swaps in a new document without
a restart. The kubelet replaces a ConfigMap volume by repointing a ``..data``
symlink, which leaves the file's own mtime meaningless, so it compares content.
A document it cannot use (unknown format or shard hash, bad types, an older
generation) is refused and the previous one stays in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from parley_core.ids import MAX_REGION_NUMBER

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
# A reader that hashed differently from its peers would route conversations to
# the wrong owner, so any other name is refused rather than guessed at.
SHARD_HASH = "sha256-first8-mod"


class TopologyError(ValueError):
    """The document cannot be used; the message names the field."""


def conversation_shard(conversation_id: str, shards: int) -> int:
    """The first 8 bytes of the id's SHA-256, big-endian, modulo the shard count."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    digest = hashlib.sha256(conversation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True)
class RegionEndpoints:
    name: str
    is_self: bool
    # What this region's clients dial; other regions redirect clients to it.
    public_endpoint: str | None
    # Where other regions forward requests and replicate events to.
    peer_endpoint: str | None
    # The number tagged ids minted in this region carry (parley_core/ids.py);
    # None only in a document with a single region.
    number: int | None = None
    # Per-service peer addresses, where one peer endpoint does not route by
    # service (the local multi-region harness); a service not listed uses
    # peer_endpoint.
    peer_services: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def peer_address(self, service: str) -> str | None:
        """Where another region reaches this region's ``service``."""
        return self.peer_services.get(service, self.peer_endpoint)


@dataclass(frozen=True)
class Residency:
    # Data kinds of this region's users that never leave it.
    home_only_data: tuple[str, ...]
    # The only regions conversation events are replicated to.
    replicate_to: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    conversation_shards: int
    shard_hash: str
    # In-cluster host:port of this region's services, by service name.
    services: Mapping[str, str]


@dataclass(frozen=True)
class Topology:
    format: int
    generation: int
    region: str
    regions: Mapping[str, RegionEndpoints]
    residency: Residency
    routing: Routing
    # The regions that register handles, in the order the document lists them
    # (docs/design/regions.md, "Handles stay unique across regions").
    handle_registrars: tuple[str, ...] = ()
    # The region that owns ids without a region tag (minted before the
    # deployment had regions); None: the self region.
    legacy_region: str | None = None

    @property
    def self_region(self) -> RegionEndpoints:
        return self.regions[self.region]

    @property
    def peers(self) -> tuple[RegionEndpoints, ...]:
        return tuple(r for r in self.regions.values() if not r.is_self)

    def conversation_shard(self, conversation_id: str) -> int:
        return conversation_shard(conversation_id, self.routing.conversation_shards)


# -- parsing ---------------------------------------------------------------


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: must be an object")
    return value


def _field(tree: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in tree:
        raise TopologyError(f"{where}.{key}: missing")
    return tree[key]


def _int(value: Any, where: str, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass; true is not a generation.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{where}: must be an integer")
    if value < minimum:
        raise TopologyError(f"{where}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise TopologyError(f"{where}: must be at most {maximum}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TopologyError(f"{where}: must be a non-empty string")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TopologyError(f"{where}: must be a list of strings")
    return tuple(_text(item, f"{where}[{i}]") for i, item in enumerate(value))


def _region(name: str, value: Any) -> RegionEndpoints:
    where = f"regions.{name}"
    tree = _object(value, where)
    is_self = _field(tree, "self", where)
    if not isinstance(is_self, bool):
        raise TopologyError(f"{where}.self: must be true or false")
    number = tree.get("number")
    services = _object(tree.get("peerServices") or {}, f"{where}.peerServices")
    return RegionEndpoints(
        name=name,
        is_self=is_self,
        public_endpoint=_optional_text(tree.get("publicEndpoint"), f"{where}.publicEndpoint"),
        peer_endpoint=_optional_text(tree.get("peerEndpoint"), f"{where}.peerEndpoint"),
        number=None
        if number is None
        else _int(number, f"{where}.number", minimum=0, maximum=MAX_REGION_NUMBER),
        peer_services=MappingProxyType(
            {
                _text(name, f"{where}.peerServices: a name"): _text(
                    address, f"{where}.peerServices.{name}"
                )
                for name, address in services.items()
            }
        ),
    )


def _regions(value: Any, region: str) -> Mapping[str, RegionEndpoints]:
    tree = _object(value, "regions")
    regions = {_text(name, "regions: a name"): _region(name, item) for name, item in tree.items()}
    selves = sorted(name for name, r in regions.items() if r.is_self)
    if len(selves) != 1:
        raise TopologyError(f"regions: exactly one must have self: true, found {selves}")
    if selves[0] != region:
        raise TopologyError(f"regions: the self region is {selves[0]}, but region is {region}")
    if len(regions) > 1:
        # Tagged ids route by number: two regions sharing one would each take
        # the other's conversations for their own.
        unnumbered = sorted(name for name, r in regions.items() if r.number is None)
        if unnumbered:
            raise TopologyError(f"regions: every region needs a number, missing for {unnumbered}")
        numbers = [r.number for r in regions.values()]
        if len(set(numbers)) != len(numbers):
            raise TopologyError("regions: two regions have the same number")
    return MappingProxyType(regions)


def _region_names(
    value: Any, where: str, regions: Mapping[str, RegionEndpoints]
) -> tuple[str, ...]:
    names = _texts(value, where)
    unknown = sorted(set(names) - set(regions))
    if unknown:
        raise TopologyError(f"{where}: not regions of the document: {unknown}")
    if len(set(names)) != len(names):
        raise TopologyError(f"{where}: a region is listed twice")
    return names


def _registrars(value: Any, regions: Mapping[str, RegionEndpoints]) -> tuple[str, ...]:
    names = _region_names(value, "handleRegistrars", regions)
    if not names:
        raise TopologyError("handleRegistrars: at least one region must register handles")
    return names


def _residency(value: Any, regions: Mapping[str, RegionEndpoints]) -> Residency:
    tree = _object(value, "residency")
    replicate_to = _texts(_field(tree, "replicateTo", "residency"), "residency.replicateTo")
    peers = {name for name, r in regions.items() if not r.is_self}
    unknown = sorted(set(replicate_to) - peers)
    if unknown:
        raise TopologyError(f"residency.replicateTo: not peer regions: {unknown}")
    return Residency(
        home_only_data=_texts(_field(tree, "homeOnlyData", "residency"), "residency.homeOnlyData"),
        replicate_to=replicate_to,
    )


def _routing(value: Any) -> Routing:
    tree = _object(value, "routing")
    shard_hash = _text(_field(tree, "shardHash", "routing"), "routing.shardHash")
    if shard_hash != SHARD_HASH:
        raise TopologyError(f"routing.shardHash: unknown hash {shard_hash!r}, know {SHARD_HASH!r}")
    services = _object(_field(tree, "services", "routing"), "routing.services")
    return Routing(
        conversation_shards=_int(
            _field(tree, "conversationShards", "routing"), "routing.conversationShards", minimum=1
        ),
        shard_hash=shard_hash,
        services=MappingProxyType(
            {
                _text(name, "routing.services: a name"): _text(address, f"routing.services.{name}")
                for name, address in services.items()
            }
        ),
    )


def parse_topology(content: str | bytes) -> Topology:
    """The document as a Topology, or TopologyError naming what is wrong.

    Keys this reader does not know are ignored: additions that keep the
    meaning of the known ones do not bump ``format``; changes that do, do.
    """
    try:
        tree = _object(json.loads(content), "the document")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TopologyError(f"not JSON: {exc}") from None
    document_format = _int(_field(tree, "format", "document"), "format", minimum=0)
    if document_format != FORMAT_VERSION:
        raise TopologyError(f"format: unknown version {document_format}, know {FORMAT_VERSION}")
    region = _text(_field(tree, "region", "document"), "region")
    regions = _regions(_field(tree, "regions", "document"), region)
    registrars = tree.get("handleRegistrars")
    legacy = tree.get("legacyRegion")
    return Topology(
        format=document_format,
        generation=_int(_field(tree, "generation", "document"), "generation", minimum=0),
        region=region,
        regions=regions,
        residency=_residency(_field(tree, "residency", "document"), regions),
        routing=_routing(_field(tree, "routing", "document")),
        # Absent: every region registers handles.
        handle_registrars=tuple(sorted(regions))
        if registrars is None
        else _registrars(registrars, regions),
        legacy_region=None
        if legacy is None
        else _region_names([legacy], "legacyRegion", regions)[0],
    )


# -- watching the file -------------------------------------------------------


def file_reader(path: Path) -> Callable[[], bytes | None]:
    """Reads the file whole; None when it (or its directory) does not exist."""

    def read() -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    return read


Subscriber = Callable[[Topology], None]


class TopologyWatcher:
    """The current topology, re-read every ``poll_seconds``.

    ``read`` returns the file's bytes or None when there is no file, and may
    raise OSError. No file at start means no topology (one region, local
    mode); a file that disappears later leaves the last document in force.
    """

    def __init__(
        self,
        read: Callable[[], bytes | None],
        *,
        poll_seconds: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._read = read
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._sleep = sleep
        self._subscribers: list[Subscriber] = []
        self.current: Topology | None = None
        # When ``current`` was applied (clock time), None before the first.
        self.applied_at: float | None = None
        # Documents refused (bad content, older generation, unreadable file).
        # Each distinct content counts once, not once per poll.
        self.reload_failures = 0
        self._seen: bytes | None = None
        self._applied: bytes | None = None
        self._read_error: str | None = None

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with each newly applied document; returns the unsubscribe."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def poll(self) -> bool:
        """Read the file once and apply it if it changed and is usable; True when applied."""
        try:
            content = self._read()
        except OSError as exc:
            if self._read_error != str(exc):
                self._read_error = str(exc)
                self._refuse("unreadable", str(exc))
            return False
        self._read_error = None
        if content == self._seen:
            return False
        self._seen = content
        if content is None:
            if self.current is not None:
                log.warning("topology_file_missing", kept_generation=self.current.generation)
            return False
        if content == self._applied:
            # Back after a vanished file or a refused version: already in force.
            return False
        try:
            topology = parse_topology(content)
        except TopologyError as exc:
            self._refuse("invalid", str(exc))
            return False
        if self.current is not None and topology.generation < self.current.generation:
            self._refuse(
                "older_generation",
                f"generation {topology.generation} is older than {self.current.generation}",
            )
            return False
        self._applied = content
        self._apply(topology)
        return True

    async def run(self) -> None:
        while True:
            await self._sleep(self._poll_seconds)
            try:
                self.poll()
            except Exception:
                # A bug here must not freeze the topology for the life of the process.
                log.exception("topology_poll_failed")

    def _refuse(self, reason: str, error: str) -> None:
        self.reload_failures += 1
        log.warning(
            "topology_refused",
            reason=reason,
            error=error,
            kept_generation=None if self.current is None else self.current.generation,
        )

    def _apply(self, topology: Topology) -> None:
        self.current = topology
        self.applied_at = self._clock()
        log.info(
            "topology_applied",
            region=topology.region,
            generation=topology.generation,
            regions=len(topology.regions),
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(topology)
            except Exception:
                # One broken subscriber must not keep the others on the old topology.
                log.exception("topology_subscriber_failed", generation=topology.generation)


class TopologyMetrics(Collector):
    def __init__(self, watcher: TopologyWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        current = self._watcher.current
        yield GaugeMetricFamily(
            "parley_topology_generation",
            "Generation of the region topology document in force (0: none).",
            value=0 if current is None else current.generation,
        )
        yield GaugeMetricFamily(
            "parley_topology_regions",
            "Regions in the topology document in force, this one included (0: none).",
            value=0 if current is None else len(current.regions),
        )
        # An info-style series, so a scrape (and a harness test) tells which
        # region answered: every region runs the same ports layout locally.
        region = GaugeMetricFamily(
            "parley_topology_region",
            "1, labelled with the region this process serves in the topology in force "
            "(no series without one).",
            labels=["region"],
        )
        if current is not None:
            region.add_metric([current.region], 1)
        yield region
        yield CounterMetricFamily(
            "parley_topology_reload_failures",
            "Topology documents refused (invalid, older generation, unreadable); the "
            "previous one stayed in force.",
            value=self._watcher.reload_failures,
        )
