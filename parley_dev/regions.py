"""Several regions on one machine: a LocalStack per region, joined by fault proxies.

Every region runs on 127.0.0.1 with its own ports and data directory
(``ROOT/<region>``). Between each ordered pair of regions (A, B) sits one
``FaultProxy`` per service regions call each other on (svc_message instance
0, svc_keys, svc_presence, svc_media): region A's topology file gives them as B's
``peerEndpoint`` (svc_message) and ``peerServices``, so whatever A sends to B
crosses them, and a test delays, slows or cuts that direction alone with
``proxy(A, B)`` (a ``PeerLink`` controlling the pair's proxies together).
Regions are numbered 1, 2, ... in the order given. ``publicEndpoint`` is a
region's own svc_message address (what its clients dial). Each region's
topology file is ``ROOT/<region>/topology.json``, given to its services as
``topology.path``; the region names itself with
``self: true``. Forwarding and replication are the services' business: this
module only lays the regions and the network between them out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from parley_core.auth.credentials import new_token
from parley_core.auth.tokens import write_key_pair
from parley_core.topology import FORMAT_VERSION, SHARD_HASH, parse_topology
from parley_dev.fault_proxy import Direction, FaultProxy, ProxyStats
from parley_dev.layout import HOST, StackPorts, deep_merge
from parley_dev.process import free_ports
from parley_dev.region_names import check_region_names
from parley_dev.stack import LocalStack, write_secret

DEFAULT_REGIONS = ("eu", "us")
# Fixed layouts (parley up --regions) shift each region's ports by this much; it
# leaves room for 9 svc_message instances (their ports step by 10).
REGION_PORT_STEP = 100
# The proxy from region i to region j for a service listens at its base
# + i * REGION_PORT_STEP + j (none of them meets a service's own port).
PROXY_PORT_BASES = {"message": 7190, "keys": 8150, "media": 8170, "presence": 8190}
PEER_SERVICES = tuple(PROXY_PORT_BASES)
PROXY_PORT_BASE = PROXY_PORT_BASES["message"]
TOPOLOGY_FILE = "topology.json"
# Low, so a rewritten topology (a test changing residency) applies quickly.
TOPOLOGY_POLL_SECONDS = 1.0
# Attempts at drawing free ports for every region that do not overlap.
_PORT_DRAWS = 20


@dataclass(frozen=True)
class RegionResidency:
    """A region's residency section. ``replicate_to`` None: every other region."""

    home_only_data: tuple[str, ...] = ()
    replicate_to: tuple[str, ...] | None = None


Pair = tuple[str, str]
# (source region, target region, service)
Route = tuple[str, str, str]


def _pairs(names: Sequence[str]) -> list[Pair]:
    return [(a, b) for a in names for b in names if a != b]


def _routes(names: Sequence[str]) -> list[Route]:
    return [(a, b, service) for a, b in _pairs(names) for service in PEER_SERVICES]


class PeerLink:
    """The proxies of one ordered region pair, one per service, controlled as
    one link: ``address`` and ``stats`` are svc_message's."""

    def __init__(self, proxies: Mapping[str, FaultProxy]) -> None:
        self.services = dict(proxies)

    @property
    def address(self) -> str:
        return self.services["message"].address

    @property
    def stats(self) -> ProxyStats:
        return self.services["message"].stats

    @property
    def is_cut(self) -> bool:
        return any(p.is_cut for p in self.services.values())

    def set_delay(
        self, delay_ms: float, *, jitter_ms: float = 0.0, direction: Direction | None = None
    ) -> None:
        for proxy in self.services.values():
            proxy.set_delay(delay_ms, jitter_ms=jitter_ms, direction=direction)

    def set_rtt(self, rtt_ms: float, *, jitter_ms: float = 0.0) -> None:
        for proxy in self.services.values():
            proxy.set_rtt(rtt_ms, jitter_ms=jitter_ms)

    def set_loss(self, probability: float, *, direction: Direction | None = None) -> None:
        for proxy in self.services.values():
            proxy.set_loss(probability, direction=direction)

    def clear(self) -> None:
        for proxy in self.services.values():
            proxy.clear()

    def cut(self, *, refuse: bool = False) -> None:
        for proxy in self.services.values():
            proxy.cut(refuse=refuse)

    def heal(self) -> None:
        for proxy in self.services.values():
            proxy.heal()


def fixed_layout(
    names: Sequence[str], *, message_instances: int = 1, offset: int = 0
) -> tuple[dict[str, StackPorts], dict[Route, int]]:
    """``parley up``'s ports, region i shifted by i * REGION_PORT_STEP, and the proxies'."""
    ports = {
        name: StackPorts.defaults(message_instances, offset=offset + i * REGION_PORT_STEP)
        for i, name in enumerate(names)
    }
    index = {name: i for i, name in enumerate(names)}
    proxies = {
        (a, b, service): PROXY_PORT_BASES[service] + offset + index[a] * REGION_PORT_STEP + index[b]
        for a, b, service in _routes(names)
    }
    return ports, proxies


def free_layout(
    names: Sequence[str], *, message_instances: int = 1
) -> tuple[dict[str, StackPorts], dict[Route, int]]:
    """Ports the OS reports free now, none shared between regions (tests)."""
    for _ in range(_PORT_DRAWS):
        ports = {name: StackPorts.free(message_instances) for name in names}
        proxy_ports = free_ports(len(_routes(names)))
        every = [p for each in ports.values() for p in each.all()] + proxy_ports
        # Each draw releases its ports before the next, so two may repeat one.
        if len(set(every)) == len(every):
            return ports, dict(zip(_routes(names), proxy_ports, strict=True))
    raise RuntimeError(f"no {len(names)} disjoint sets of free ports in {_PORT_DRAWS} draws")


class RegionsStack:
    """Starts, stops and exposes N regions and the fault proxies between them.

    ``stack_options`` go to every LocalStack (log format, user config, service
    environment, ...); ``extra_config`` is merged into each region's config
    under the topology settings the harness sets, and ``region_config[name]``
    into that region's alone (e.g. one region's clock run off).
    """

    def __init__(
        self,
        *,
        root: Path,
        regions: Sequence[str] = DEFAULT_REGIONS,
        ports: Mapping[str, StackPorts] | None = None,
        proxy_ports: Mapping[Route, int] | None = None,
        message_instances: int = 1,
        residency: Mapping[str, RegionResidency] | None = None,
        conversation_shards: int = 64,
        generation: int = 1,
        topology_poll_seconds: float = TOPOLOGY_POLL_SECONDS,
        extra_config: Mapping[str, Any] | None = None,
        region_config: Mapping[str, Mapping[str, Any]] | None = None,
        **stack_options: Any,
    ) -> None:
        check_region_names(regions)
        self.root = root.resolve()
        self.names = list(regions)
        if ports is None or proxy_ports is None:
            ports, proxy_ports = free_layout(self.names, message_instances=message_instances)
        missing = [n for n in self.names if n not in ports] + [
            f"{a}->{b} {s}" for a, b, s in _routes(self.names) if (a, b, s) not in proxy_ports
        ]
        if missing:
            raise ValueError(f"no ports given for {missing}")
        every = [p for n in self.names for p in ports[n].all()] + [
            proxy_ports[route] for route in _routes(self.names)
        ]
        shared = sorted({p for p in every if every.count(p) > 1})
        if shared:
            raise ValueError(f"regions share ports {shared} (too many svc_message instances?)")
        unknown = sorted((set(residency or {}) | set(region_config or {})) - set(self.names))
        if unknown:
            raise ValueError(f"residency or config for unknown regions {unknown}")
        given = residency or {}
        self.residency = {name: given.get(name, RegionResidency()) for name in self.names}
        self.conversation_shards = conversation_shards
        self.generation = generation
        self.stacks: dict[str, LocalStack] = {}
        for name in self.names:
            topology = {
                "topology": {
                    "path": str(self.topology_path(name)),
                    "poll_seconds": topology_poll_seconds,
                }
            }
            self.stacks[name] = LocalStack(
                root=self.root / name,
                ports=ports[name],
                message_instances=message_instances,
                extra_config=deep_merge(
                    deep_merge(dict(extra_config or {}), dict((region_config or {}).get(name, {}))),
                    topology,
                ),
                **stack_options,
            )
        upstreams = {
            name: {
                "message": ports[name].message[0],
                "keys": ports[name].keys,
                "presence": ports[name].presence,
                "media": ports[name].media,
            }
            for name in self.names
        }
        self.proxies: dict[Route, FaultProxy] = {
            (a, b, s): FaultProxy(upstream_port=upstreams[b][s], listen_port=proxy_ports[(a, b, s)])
            for a, b, s in _routes(self.names)
        }
        self.links = {
            (a, b): PeerLink({s: self.proxies[(a, b, s)] for s in PEER_SERVICES})
            for a, b in _pairs(self.names)
        }
        # Checked now, as the services will read them: a bad residency fails here.
        for name in self.names:
            parse_topology(json.dumps(self.topology_document(name)))

    @classmethod
    def with_fixed_ports(
        cls,
        *,
        root: Path,
        regions: Sequence[str] = DEFAULT_REGIONS,
        message_instances: int = 1,
        port_offset: int = 0,
        **kwargs: Any,
    ) -> RegionsStack:
        ports, proxies = fixed_layout(
            regions, message_instances=message_instances, offset=port_offset
        )
        return cls(
            root=root,
            regions=regions,
            ports=ports,
            proxy_ports=proxies,
            message_instances=message_instances,
            **kwargs,
        )

    # -- what tests use ---------------------------------------------------------

    def region(self, name: str) -> LocalStack:
        """The region's stack: its targets, metrics URLs, processes and kill switches."""
        return self.stacks[name]

    def proxy(self, source: str, target: str) -> PeerLink:
        """The proxies ``source``'s traffic to ``target`` crosses, as one link."""
        return self.links[(source, target)]

    def peer_endpoint(self, source: str, target: str) -> str:
        """Where ``source`` reaches ``target`` (through the proxy)."""
        return self.proxy(source, target).address

    def topology_path(self, name: str) -> Path:
        return self.root / name / TOPOLOGY_FILE

    def topology_document(self, name: str) -> dict[str, Any]:
        """The topology file of region ``name`` (operator/README.md, "The topology file")."""
        stack = self.stacks[name]
        residency = self.residency[name]
        peers = [n for n in self.names if n != name]
        replicate_to = peers if residency.replicate_to is None else list(residency.replicate_to)
        return {
            "format": FORMAT_VERSION,
            "generation": self.generation,
            "region": name,
            "regions": {
                other: {
                    "self": other == name,
                    "number": index + 1,
                    "publicEndpoint": self.stacks[other].message_targets[0],
                    "peerEndpoint": None if other == name else self.peer_endpoint(name, other),
                    "peerServices": {}
                    if other == name
                    else {
                        service: proxy.address
                        for service, proxy in self.proxy(name, other).services.items()
                    },
                }
                for index, other in enumerate(self.names)
            },
            "residency": {
                "homeOnlyData": list(residency.home_only_data),
                "replicateTo": replicate_to,
            },
            "routing": {
                "conversationShards": self.conversation_shards,
                "shardHash": SHARD_HASH,
                "services": {
                    "keys": stack.keys_target,
                    "message": stack.message_targets[0],
                    "presence": stack.presence_target,
                    "media": stack.media_target,
                    "search": stack.search_target,
                },
            },
        }

    def write_topology(self, name: str) -> None:
        """(Re)write a region's topology file; the services pick a change up by polling.

        Written to a temporary name and renamed, so a poll never reads half a file."""
        path = self.topology_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.topology_document(name), indent=2) + "\n")
        partial.replace(path)

    # -- whole harness ------------------------------------------------------------

    def share_deployment_secrets(self) -> None:
        """One token signing key and one service credential for every region:
        a device's token is then accepted by any region and requests forwarded
        between regions are verified (in production every region lists every
        region's verification key and mounts the same service token). Made
        once, in the first region's secrets, and copied to the others."""
        first = self.stacks[self.names[0]]
        first.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (first.private_key_path.exists() and first.public_key_path.exists()):
            write_key_pair(first.private_key_path, first.public_key_path)
        if not first.service_token_path.exists():
            write_secret(first.service_token_path, new_token())
        for name in self.names[1:]:
            stack = self.stacks[name]
            stack.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for source, target in (
                (first.private_key_path, stack.private_key_path),
                (first.public_key_path, stack.public_key_path),
                (first.service_token_path, stack.service_token_path),
            ):
                write_secret(target, source.read_text().strip())

    async def start(self) -> None:
        """Proxies, topology files, then every region side by side; on failure stop it all."""
        try:
            self.share_deployment_secrets()
            for proxy in self.proxies.values():
                await proxy.start()
            for name in self.names:
                self.write_topology(name)
            results = await asyncio.gather(
                *(stack.start() for stack in self.stacks.values()), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(stack.stop() for stack in self.stacks.values()))
        await asyncio.gather(*(proxy.stop() for proxy in self.proxies.values()))

    async def kill_all(self) -> None:
        await asyncio.gather(*(stack.kill_all() for stack in self.stacks.values()))
        await asyncio.gather(*(proxy.stop() for proxy in self.proxies.values()))

    async def __aenter__(self) -> RegionsStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def describe(self) -> list[tuple[str, str]]:
        """(label, address) rows of every region's public services and the peer links."""
        rows: list[tuple[str, str]] = []
        for name, stack in self.stacks.items():
            rows.append((f"{name} svc_keys", stack.keys_target))
            rows.append((f"{name} svc_message", ", ".join(stack.message_targets)))
            rows.append((f"{name} svc_presence", stack.presence_target))
            rows.append((f"{name} svc_media", stack.media_target))
            rows.append((f"{name} svc_search", stack.search_target))
            rows.append((f"{name} topology", str(self.topology_path(name))))
            rows.append((f"{name} data", str(stack.root)))
        for (source, target, service), proxy in self.proxies.items():
            rows.append(
                (
                    f"{source} -> {target} {service}",
                    f"{proxy.address} (proxy to {HOST}:{proxy.upstream_port})",
                )
            )
        return rows
