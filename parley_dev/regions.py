"""Several regions on one machine: a LocalStack per region, joined by fault proxies.

Every region runs on 127.0.0.1 with its own ports and data directory
(``ROOT/<region>``). Between each ordered pair of regions (A, B) sits a
``FaultProxy`` relaying to B's svc_message (instance 0): region A's topology
file gives that proxy as B's ``peerEndpoint``, so whatever A sends to B
crosses it, and a test delays, slows or cuts that direction alone with
``proxy(A, B)``. svc_presence pushes presence to its peers' svc_presence,
so a second proxy per ordered pair relays to B's svc_presence, named in A's
topology as B's ``peerServices.presence`` (``presence_proxy(A, B)``).
``publicEndpoint`` is a region's own svc_message address (what
its clients dial). Each region's topology file is ``ROOT/<region>/topology.json``,
given to its services as ``topology.path``; the region names itself with
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

from parley_core.topology import FORMAT_VERSION, SHARD_HASH, parse_topology
from parley_dev.fault_proxy import FaultProxy
from parley_dev.layout import HOST, StackPorts, deep_merge
from parley_dev.process import free_ports
from parley_dev.region_names import check_region_names
from parley_dev.stack import LocalStack

DEFAULT_REGIONS = ("eu", "us")
# Fixed layouts (parley up --regions) shift each region's ports by this much; it
# leaves room for 9 svc_message instances (their ports step by 10).
REGION_PORT_STEP = 100
# The proxy from region i to region j listens at this port + i * REGION_PORT_STEP + j.
PROXY_PORT_BASE = 7190
# The presence proxy from region i to region j listens at this port + i * REGION_PORT_STEP + j.
PRESENCE_PROXY_PORT_BASE = 8190
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


def _pairs(names: Sequence[str]) -> list[Pair]:
    return [(a, b) for a in names for b in names if a != b]


def fixed_layout(
    names: Sequence[str], *, message_instances: int = 1, offset: int = 0
) -> tuple[dict[str, StackPorts], dict[Pair, int]]:
    """``parley up``'s ports, region i shifted by i * REGION_PORT_STEP, and the proxies'."""
    ports = {
        name: StackPorts.defaults(message_instances, offset=offset + i * REGION_PORT_STEP)
        for i, name in enumerate(names)
    }
    index = {name: i for i, name in enumerate(names)}
    proxies = {
        (a, b): PROXY_PORT_BASE + offset + index[a] * REGION_PORT_STEP + index[b]
        for a, b in _pairs(names)
    }
    return ports, proxies


def fixed_presence_proxies(names: Sequence[str], *, offset: int = 0) -> dict[Pair, int]:
    """The presence proxies' ports of ``fixed_layout``."""
    index = {name: i for i, name in enumerate(names)}
    return {
        (a, b): PRESENCE_PROXY_PORT_BASE + offset + index[a] * REGION_PORT_STEP + index[b]
        for a, b in _pairs(names)
    }


def free_layout(
    names: Sequence[str], *, message_instances: int = 1
) -> tuple[dict[str, StackPorts], dict[Pair, int]]:
    """Ports the OS reports free now, none shared between regions (tests)."""
    for _ in range(_PORT_DRAWS):
        ports = {name: StackPorts.free(message_instances) for name in names}
        proxy_ports = free_ports(len(_pairs(names)))
        every = [p for each in ports.values() for p in each.all()] + proxy_ports
        # Each draw releases its ports before the next, so two may repeat one.
        if len(set(every)) == len(every):
            return ports, dict(zip(_pairs(names), proxy_ports, strict=True))
    raise RuntimeError(f"no {len(names)} disjoint sets of free ports in {_PORT_DRAWS} draws")


class RegionsStack:
    """Starts, stops and exposes N regions and the fault proxies between them.

    ``stack_options`` go to every LocalStack (log format, user config, service
    environment, ...); ``extra_config`` is merged into each region's config
    under the topology settings the harness sets.
    """

    def __init__(
        self,
        *,
        root: Path,
        regions: Sequence[str] = DEFAULT_REGIONS,
        ports: Mapping[str, StackPorts] | None = None,
        proxy_ports: Mapping[Pair, int] | None = None,
        message_instances: int = 1,
        residency: Mapping[str, RegionResidency] | None = None,
        conversation_shards: int = 64,
        generation: int = 1,
        topology_poll_seconds: float = TOPOLOGY_POLL_SECONDS,
        extra_config: Mapping[str, Any] | None = None,
        presence_proxy_ports: Mapping[Pair, int] | None = None,
        **stack_options: Any,
    ) -> None:
        check_region_names(regions)
        self.root = root.resolve()
        self.names = list(regions)
        if ports is None or proxy_ports is None:
            ports, proxy_ports = free_layout(self.names, message_instances=message_instances)
        missing = [n for n in self.names if n not in ports] + [
            f"{a}->{b}" for a, b in _pairs(self.names) if (a, b) not in proxy_ports
        ]
        if missing:
            raise ValueError(f"no ports given for {missing}")
        every = [p for n in self.names for p in ports[n].all()] + [
            proxy_ports[pair] for pair in _pairs(self.names)
        ]
        if presence_proxy_ports is None:
            presence_proxy_ports = dict(
                zip(
                    _pairs(self.names),
                    _free_ports_avoiding(len(_pairs(self.names)), every),
                    strict=True,
                )
            )
        every += [presence_proxy_ports[pair] for pair in _pairs(self.names)]
        shared = sorted({p for p in every if every.count(p) > 1})
        if shared:
            raise ValueError(f"regions share ports {shared} (too many svc_message instances?)")
        unknown = sorted(set(residency or {}) - set(self.names))
        if unknown:
            raise ValueError(f"residency for unknown regions {unknown}")
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
                extra_config=deep_merge(dict(extra_config or {}), topology),
                **stack_options,
            )
        self.proxies: dict[Pair, FaultProxy] = {
            (a, b): FaultProxy(upstream_port=ports[b].message[0], listen_port=proxy_ports[(a, b)])
            for a, b in _pairs(self.names)
        }
        self.presence_proxies: dict[Pair, FaultProxy] = {
            (a, b): FaultProxy(
                upstream_port=ports[b].presence, listen_port=presence_proxy_ports[(a, b)]
            )
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
            presence_proxy_ports=fixed_presence_proxies(regions, offset=port_offset),
            message_instances=message_instances,
            **kwargs,
        )

    # -- what tests use ---------------------------------------------------------

    def region(self, name: str) -> LocalStack:
        """The region's stack: its targets, metrics URLs, processes and kill switches."""
        return self.stacks[name]

    def proxy(self, source: str, target: str) -> FaultProxy:
        """The proxy ``source``'s traffic to ``target`` crosses."""
        return self.proxies[(source, target)]

    def presence_proxy(self, source: str, target: str) -> FaultProxy:
        """The proxy ``source``'s presence pushes to ``target`` cross."""
        return self.presence_proxies[(source, target)]

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
                    "publicEndpoint": self.stacks[other].message_targets[0],
                    "peerEndpoint": None if other == name else self.peer_endpoint(name, other),
                    # Tagged ids name their region by number (parley_core/ids.py):
                    # the order the regions were given in, from 1.
                    "number": self.names.index(other) + 1,
                    **(
                        {}
                        if other == name
                        else {
                            "peerServices": {"presence": self.presence_proxy(name, other).address}
                        }
                    ),
                }
                for other in self.names
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

    async def start(self) -> None:
        """Proxies, topology files, then every region side by side; on failure stop it all."""
        try:
            for proxy in [*self.proxies.values(), *self.presence_proxies.values()]:
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
        await asyncio.gather(*(proxy.stop() for proxy in self._all_proxies()))

    async def kill_all(self) -> None:
        await asyncio.gather(*(stack.kill_all() for stack in self.stacks.values()))
        await asyncio.gather(*(proxy.stop() for proxy in self._all_proxies()))

    def _all_proxies(self) -> list[FaultProxy]:
        return [*self.proxies.values(), *self.presence_proxies.values()]

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
        for (source, target), proxy in self.proxies.items():
            rows.append(
                (
                    f"{source} -> {target}",
                    f"{proxy.address} (proxy to {HOST}:{proxy.upstream_port})",
                )
            )
        for (source, target), proxy in self.presence_proxies.items():
            rows.append(
                (
                    f"{source} -> {target} presence",
                    f"{proxy.address} (proxy to {HOST}:{proxy.upstream_port})",
                )
            )
        return rows


def _free_ports_avoiding(count: int, taken: Sequence[int]) -> list[int]:
    for _ in range(_PORT_DRAWS):
        drawn = free_ports(count)
        if not set(drawn) & set(taken) and len(set(drawn)) == count:
            return drawn
    raise RuntimeError(f"no {count} free ports apart from the regions' in {_PORT_DRAWS} draws")
