"""A Redis Cluster on loopback, as child processes: for tests and the local stack.

Three masters and three replicas (one each), every node a ``redis-server``
with cluster mode on, a node timeout of 2 s (a killed master is failed over
in about 4 s; Redis' default of 15 s would take 20 or more) and its files in
a directory of its own, named by absolute path (nodes.conf is written
relative to the working directory otherwise). A fresh set of nodes is joined
with ``redis-cli --cluster create``; nodes started again on their old
directories find each other from nodes.conf. Ready means every node reports
the cluster ok with all slots served, every replica has its master's data (a
replica that never synced is refused the failover), and every node agrees on
who replicates whom.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from parley_dev.layout import HOST, REDIS_CLUSTER_NODES, find_executable
from parley_dev.probes import StackError
from parley_dev.process import ManagedProcess

NODES = REDIS_CLUSTER_NODES
MASTERS = NODES // 2
NODE_TIMEOUT_MS = 2000
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
CREATE_SECONDS = 30.0
POLL_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 0.5
SLOTS = 16384
INSTALL_HINT = "install it with `apt-get install -y redis-server`"


@dataclass(frozen=True, slots=True)
class NodeState:
    """What one node says about the cluster."""

    port: int
    state_ok: bool
    slots_ok: int
    master: bool
    # Replicas only: the link to the master is up (its data is synced).
    synced: bool
    # (master port, first slot, last slot) of every slot range it knows of.
    ranges: tuple[tuple[int, int, int], ...]
    # Port -> the port of its master (0 for a master), of every node it knows.
    roles: dict[int, int]


async def node_state(port: int) -> NodeState:
    client = Redis(
        host=HOST,
        port=port,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
    )
    try:
        info = await client.cluster("INFO")
        replication = await client.info("replication")
        slots = await client.cluster("SLOTS")
        nodes = await client.cluster("NODES")
    finally:
        await client.aclose()
    master = replication.get("role") == "master"
    port_of = {entry["node_id"]: int(address.split(":")[1]) for address, entry in nodes.items()}
    roles = {
        int(address.split(":")[1]): port_of.get(entry["master_id"], 0)
        for address, entry in nodes.items()
    }
    return NodeState(
        port=port,
        state_ok=info.get("cluster_state") == "ok",
        slots_ok=int(info.get("cluster_slots_ok", 0)),
        master=master,
        synced=master or replication.get("master_link_status") == "up",
        ranges=tuple((int(entry[2][1]), int(entry[0]), int(entry[1])) for entry in slots),
        roles=roles,
    )


class LocalRedisCluster:
    """The nodes of one cluster; see the module docstring. ``ports`` and
    ``bus_ports`` (the cluster bus of each node) must be free on 127.0.0.1."""

    def __init__(
        self,
        *,
        root: Path,
        ports: Sequence[int],
        bus_ports: Sequence[int],
        logs_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "redis",
    ) -> None:
        if len(ports) != NODES or len(bus_ports) != NODES:
            raise ValueError(f"a local cluster has {NODES} nodes: give {NODES} ports of each kind")
        self.root = root.resolve()
        self.ports = list(ports)
        server = find_executable(
            "redis-server", "install it with `apt-get install -y redis-server`"
        )
        logs = (logs_dir or self.root).resolve()
        self.processes = [
            ManagedProcess(
                f"{name}-{index}",
                [
                    server,
                    *("--port", str(port), "--bind", HOST),
                    *("--cluster-enabled", "yes", "--cluster-port", str(bus)),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--cluster-config-file", str(self._dir(index) / "nodes.conf")),
                    *("--dir", str(self._dir(index)), "--daemonize", "no"),
                    *("--save", "", "--appendonly", "no"),
                    # A replica syncs at once instead of after 5 s, so the
                    # cluster can fail a master over as soon as it is ready.
                    *("--repl-diskless-sync-delay", "0"),
                ],
                log_path=logs / f"{name}-{index}.log",
                env=env,
                cwd=self._dir(index),
            )
            for index, (port, bus) in enumerate(zip(ports, bus_ports, strict=True))
        ]

    def _dir(self, index: int) -> Path:
        return self.root / f"node-{index}"

    @property
    def url(self) -> str:
        """The URL of the first node (any node leads a client to all of them)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    @property
    def other_nodes(self) -> list[str]:
        """``host:port`` of the nodes after the first (``redis.cluster_nodes``)."""
        return [f"{HOST}:{port}" for port in self.ports[1:]]

    # -- whole cluster ------------------------------------------------------------

    async def start(self) -> None:
        """Start every node that is not running, join them into a cluster the
        first time, and wait until it is ready."""
        fresh = not any((self._dir(i) / "nodes.conf").exists() for i in range(NODES))
        for index, process in enumerate(self.processes):
            if not process.alive():
                self._dir(index).mkdir(parents=True, exist_ok=True)
                process.start()
        await self._answering(range(NODES))
        if fresh:
            await self._create()
        await self.wait_ready()

    async def stop(self) -> None:
        await asyncio.gather(*(p.terminate(STOP_SECONDS) for p in self.processes))

    async def kill(self) -> None:
        await asyncio.gather(*(p.kill() for p in self.processes if p.alive()))

    # -- one node -----------------------------------------------------------------

    async def start_node(self, index: int) -> None:
        """Start one node again; it rejoins from its nodes.conf (as a replica
        if its slots were failed over meanwhile)."""
        process = self.processes[index]
        if not process.alive():
            process.start()
        await self._answering([index])

    async def kill_node(self, index: int) -> None:
        """SIGKILL one node (a crash)."""
        await self.processes[index].kill()

    async def master_of(self, key: str) -> int:
        """The index of the node serving ``key``'s slot now."""
        slot = key_slot(key.encode())
        for index in self._alive():
            state = await node_state(self.ports[index])
            for port, first, last in state.ranges:
                if first <= slot <= last:
                    return self.ports.index(port)
        raise StackError(f"no running node knows who serves slot {slot}")

    # -- readiness ----------------------------------------------------------------

    async def states(self) -> list[NodeState]:
        return [await node_state(self.ports[i]) for i in self._alive()]

    async def wait_ready(self, timeout: float = READY_SECONDS) -> float:
        """Wait until the running nodes say the cluster is ok, every slot is
        served by a running master, and every replica is synced; seconds taken."""
        started = time.monotonic()
        deadline = started + timeout
        last = "no answer yet"
        while True:
            try:
                last = self._not_ready(await self.states())
            except (RedisError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if not last:
                return time.monotonic() - started
            self._check_alive()
            if time.monotonic() >= deadline:
                raise StackError(f"the Redis Cluster is not ready after {timeout:.0f}s: {last}")
            await asyncio.sleep(POLL_SECONDS)

    def _not_ready(self, states: list[NodeState]) -> str:
        """Why the cluster is not ready yet; empty when it is."""
        alive_ports = {self.ports[i] for i in self._alive()}
        for state in states:
            if not state.state_ok or state.slots_ok != SLOTS:
                return f"node {state.port}: state ok={state.state_ok}, {state.slots_ok} slots ok"
            if not state.synced:
                return f"replica {state.port} is not synced with its master"
            served = sum(
                last - first + 1 for port, first, last in state.ranges if port in alive_ports
            )
            if served != SLOTS:
                return f"node {state.port} sees {SLOTS - served} slots on stopped masters"
        # Every running node agrees who follows whom: a master that has not
        # heard of its replica yet ignores its manual failover request.
        views = [
            {port: master for port, master in state.roles.items() if port in alive_ports}
            for state in states
        ]
        if any(view != views[0] for view in views):
            return "the nodes do not agree yet on which node replicates which"
        return ""

    def _alive(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p.alive()]

    def _check_alive(self) -> None:
        """Fail at once when a node exited by itself (a kill is a test's doing)."""
        for process in self.processes:
            if process.returncode is not None and process.returncode > 0:
                raise StackError(
                    f"{process.name} exited with code {process.returncode}; end of "
                    f"{process.log_path}:\n{process.log_tail(20)}"
                )

    async def _answering(self, indexes: Sequence[int] | range) -> None:
        deadline = time.monotonic() + READY_SECONDS
        for index in indexes:
            while True:
                self._check_alive()
                client = Redis(host=HOST, port=self.ports[index], socket_timeout=0.5)
                try:
                    if await client.ping():
                        break
                except (RedisError, OSError):
                    pass
                finally:
                    await client.aclose()
                if time.monotonic() >= deadline:
                    raise StackError(f"{self.processes[index].name} does not answer PING")
                await asyncio.sleep(POLL_SECONDS)

    async def _create(self) -> None:
        cli = find_executable(
            "redis-cli", "it comes with redis-server (apt-get install -y redis-tools)"
        )
        log_path = self.root / "create.log"
        with log_path.open("ab") as log:
            child = await asyncio.create_subprocess_exec(
                cli,
                "--cluster",
                "create",
                *(f"{HOST}:{port}" for port in self.ports),
                *("--cluster-replicas", str(NODES // MASTERS - 1), "--cluster-yes"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                async with asyncio.timeout(CREATE_SECONDS):
                    code = await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()
                raise StackError(f"redis-cli --cluster create hung; see {log_path}") from None
        if code != 0:
            raise StackError(f"redis-cli --cluster create failed ({code}); see {log_path}")
