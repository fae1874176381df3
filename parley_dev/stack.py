"""The whole Parley stack on one machine, as child processes: for ``parley up`` and tests.

SecantusDB (MongoDB wire protocol), Redis and SeaweedFS (S3) come first, then
svc_keys, then the svc_message instances, svc_presence, svc_media and svc_search side by
side, each started as ``python -m svc_...`` with a generated config file.
Everything lives under one root directory, so the database, the stored
media, the signing keys, the service and operator credentials and the logs
survive a restart of the stack. With ``redis_cluster`` Redis is a Redis
Cluster of six nodes (parley_dev.redis_cluster), components ``redis-0`` to
``redis-5``, and the services run with ``redis.cluster`` on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from parley_core.auth.credentials import new_token, token_digest_hex
from parley_core.auth.tokens import write_key_pair
from parley_core.config import Settings, settings_from_tree
from parley_dev.layout import (
    DB,
    DB_READY_SECONDS,
    DB_STOP_SECONDS,
    HOST,
    KEYS,
    MEDIA,
    PRESENCE,
    REDIS,
    REDIS_READY_SECONDS,
    REDIS_STOP_SECONDS,
    S3,
    S3_READY_SECONDS,
    S3_STOP_SECONDS,
    SEARCH,
    SERVICE_READY_SECONDS,
    SERVICE_STOP_MARGIN_SECONDS,
    StackPorts,
    child_env,
    deep_merge,
    message_name,
)
from parley_dev.probes import (
    Probe,
    StackError,
    grpc_health_serving,
    mongo_ping,
    redis_ping,
    wait_until_ready,
)
from parley_dev.process import ManagedProcess, port_is_free
from parley_dev.redis_cluster import LocalRedisCluster
from parley_dev.seaweed import (
    ACCESS_KEY_FILE,
    BUCKET,
    SECRET_KEY_FILE,
    S3Keys,
    bucket_ready,
    ensure_keys,
    write_identity,
)
from parley_dev.stack_config import merge_user_config
from parley_dev.stack_processes import build_processes, config_tree

__all__ = [
    "DB",
    "KEYS",
    "MEDIA",
    "PRESENCE",
    "REDIS",
    "S3",
    "LocalStack",
    "StackError",
    "StackPorts",
    "message_name",
]


async def _together(*steps: Coroutine[Any, Any, None]) -> None:
    """Run start steps side by side; on the first failure cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as failed:
        # Callers want the StackError with the log tail, not a wrapper around it.
        raise failed.exceptions[0] from None


class LocalStack:
    """Starts, stops and breaks (for failure tests) the local Parley processes.

    All control methods are coroutines; none blocks the event loop for long.
    """

    def __init__(
        self,
        *,
        root: Path,
        ports: StackPorts | None = None,
        message_instances: int = 1,
        log_format: Literal["json", "console"] = "json",
        log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO",
        shutdown_grace_seconds: float | None = None,
        extra_config: Mapping[str, Any] | None = None,
        user_config: Mapping[str, Any] | None = None,
        service_environ: Mapping[str, str] | None = None,
        ready_timeout: float = SERVICE_READY_SECONDS,
        redis_cluster: bool = False,
    ) -> None:
        """``user_config`` is merged over the generated config but cannot change the
        keys the stack owns (parley_dev.stack_config); ``extra_config`` (tests,
        ``parley up`` flags) can. ``service_environ`` holds ``PARLEY_*`` variables
        for the services, as stack_config.service_environment vets them."""
        if message_instances < 1:
            raise ValueError("message_instances must be at least 1")
        ports = ports or StackPorts.defaults(message_instances, redis_cluster=redis_cluster)
        if min(len(ports.message), len(ports.message_metrics)) < message_instances:
            raise ValueError(f"ports hold fewer than {message_instances} svc_message ports")
        if redis_cluster and not ports.redis_nodes:
            raise ValueError(
                "a Redis Cluster needs the ports of its nodes (StackPorts.redis_nodes)"
            )
        self.root = root.resolve()
        self.ports = ports
        self.message_instances = message_instances
        self.ready_timeout = ready_timeout
        self.db_dir = self.root / "db"
        self.redis_dir = self.root / "redis"
        self.secrets_dir = self.root / "secrets"
        self.logs_dir = self.root / "logs"
        self.s3_dir = self.root / "s3"
        self.s3_identity_path = self.secrets_dir / "s3.json"
        self.s3_keys = S3Keys(
            self.secrets_dir / ACCESS_KEY_FILE, self.secrets_dir / SECRET_KEY_FILE
        )
        self.service_token_path = self.secrets_dir / "service_token"
        self.operator_tokens_path = self.secrets_dir / "operator_tokens"
        # The local operator's own token (the tokens file lists only its hash).
        self.operator_token_path = self.secrets_dir / "operator_token"
        self.config_path = self.root / "parley.yaml"
        self.private_key_path = self.secrets_dir / "token_signing.pem"
        self.public_key_path = self.secrets_dir / "token_signing.pub.pem"
        self.mongo_uri = f"mongodb://{HOST}:{ports.mongo}/?retryWrites=false"
        self.redis_cluster = (
            LocalRedisCluster(
                root=self.redis_dir,
                ports=ports.redis_nodes,
                bus_ports=ports.redis_buses,
                logs_dir=self.logs_dir,
                env=child_env({}),
                name=REDIS,
            )
            if redis_cluster
            else None
        )
        self.redis_url = (
            self.redis_cluster.url if self.redis_cluster else f"redis://{HOST}:{ports.redis}/0"
        )
        self.keys_target = f"{HOST}:{ports.keys}"
        self.message_targets = [f"{HOST}:{p}" for p in ports.message[:message_instances]]
        self.keys_metrics_url = f"http://{HOST}:{ports.keys_metrics}/metrics"
        self.message_metrics_urls = [
            f"http://{HOST}:{p}/metrics" for p in ports.message_metrics[:message_instances]
        ]
        self.presence_target = f"{HOST}:{ports.presence}"
        self.presence_metrics_url = f"http://{HOST}:{ports.presence_metrics}/metrics"
        self.media_target = f"{HOST}:{ports.media}"
        self.media_metrics_url = f"http://{HOST}:{ports.media_metrics}/metrics"
        self.search_target = f"{HOST}:{ports.search}"
        self.search_metrics_url = f"http://{HOST}:{ports.search_metrics}/metrics"
        self.s3_endpoint = f"http://{HOST}:{ports.s3}"
        self.s3_bucket = BUCKET
        self._config = config_tree(self, log_format, log_level, shutdown_grace_seconds)
        if user_config:
            self._config = merge_user_config(self._config, user_config)
        if extra_config:
            self._config = deep_merge(self._config, extra_config)
        self._service_environ = dict(service_environ or {})
        # Validated now as the services will read it, so a bad key (ConfigError)
        # fails before any process starts.
        self.settings: Settings = settings_from_tree(self._config, self._service_environ)
        self._grace = max(
            self.settings.keys.server.shutdown_grace_seconds,
            self.settings.message.server.shutdown_grace_seconds,
            self.settings.presence.server.shutdown_grace_seconds,
            self.settings.media.server.shutdown_grace_seconds,
            self.settings.search.server.shutdown_grace_seconds,
        )
        self._processes = build_processes(self, self._service_environ)

    @classmethod
    def with_free_ports(
        cls, *, root: Path, message_instances: int = 1, redis_cluster: bool = False, **kwargs: Any
    ) -> LocalStack:
        return cls(
            root=root,
            ports=StackPorts.free(message_instances, redis_cluster=redis_cluster),
            message_instances=message_instances,
            redis_cluster=redis_cluster,
            **kwargs,
        )

    # -- addresses and processes ------------------------------------------------

    @property
    def component_names(self) -> list[str]:
        """Every process in start order."""
        return list(self._processes)

    def process(self, name: str) -> ManagedProcess:
        return self._processes[name]

    def message_process(self, index: int) -> ManagedProcess:
        return self._processes[message_name(self._check_index(index))]

    def service_ports(self, name: str) -> tuple[int, int]:
        """(gRPC port, metrics port) of a service component."""
        if name == KEYS:
            return self.ports.keys, self.ports.keys_metrics
        if name == PRESENCE:
            return self.ports.presence, self.ports.presence_metrics
        if name == MEDIA:
            return self.ports.media, self.ports.media_metrics
        if name == SEARCH:
            return self.ports.search, self.ports.search_metrics
        index = self._message_index(name)
        return self.ports.message[index], self.ports.message_metrics[index]

    # -- whole stack --------------------------------------------------------------

    async def start(self) -> None:
        """Start everything and wait until all of it answers; on failure stop what started."""
        try:
            await self.start_backends()
            await self.start_services()
        except BaseException:
            await self.stop()
            raise

    async def start_backends(self) -> None:
        """Files (config, keys, credentials) plus SecantusDB, Redis and SeaweedFS,
        not the services."""
        self.prepare_files()
        await _together(self.start_db(), self.start_redis(), self.start_s3())

    async def start_services(self) -> None:
        await self.start_keys()
        # svc_message instances only depend on svc_keys, and svc_presence on the
        # backends alone, so they start side by side.
        await _together(
            *(self.start_message(i) for i in range(self.message_instances)),
            self.start_presence(),
            self.start_media(),
            self.start_search(),
        )

    async def stop(self) -> None:
        """Stop every running process in reverse start order (SIGTERM, then SIGKILL)."""
        await asyncio.gather(
            *(self.stop_message(i) for i in range(self.message_instances)),
            self.stop_presence(),
            self.stop_media(),
            self.stop_search(),
        )
        await self.stop_keys()
        # No backend needs another to shut down cleanly.
        await asyncio.gather(self.stop_redis(), self.stop_db(), self.stop_s3())

    async def kill_all(self) -> None:
        """SIGKILL everything at once (last resort when a clean stop is not wanted)."""
        await asyncio.gather(*(p.kill() for p in self._processes.values() if p.alive()))

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def prepare_files(self) -> None:
        """Create the directories, the signing key pair (once) and the config file."""
        for directory in (self.root, self.db_dir, self.redis_dir, self.logs_dir, self.s3_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Keep an existing pair: tokens issued before a restart must stay valid.
        if not (self.private_key_path.exists() and self.public_key_path.exists()):
            write_key_pair(self.private_key_path, self.public_key_path)
        self._prepare_credentials()
        header = "# Written by parley_dev.stack at every start; edits are overwritten.\n"
        # The user's settings (--config) may hold secrets.
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)
        self.config_path.write_text(header + yaml.safe_dump(self._config, sort_keys=False))
        # An explicit (empty) config stops secantusd-py from picking up a stray
        # ./secantusd.toml or ~/.secantus/secantusd.toml.
        (self.root / "secantusd.toml").write_text("# parley: built-in defaults only\n")

    def _prepare_credentials(self) -> None:
        """The S3 identity, the service token and an operator token, each made
        once and kept across restarts."""
        ensure_keys(self.secrets_dir)
        write_identity(self.s3_identity_path, self.s3_keys)
        if not self.service_token_path.exists():
            write_secret(self.service_token_path, new_token())
        if not self.operator_token_path.exists():
            write_secret(self.operator_token_path, new_token())
        write_secret(
            self.operator_tokens_path,
            f"local {token_digest_hex(self.operator_token)}",
        )

    @property
    def operator_token(self) -> str:
        """The local operator's token, for MediaAdminService (tests, operators)."""
        return self.operator_token_path.read_text().strip()

    @property
    def service_token(self) -> str:
        """The deployment's service credential (tests calling internal RPCs)."""
        return self.service_token_path.read_text().strip()

    # -- one component at a time ------------------------------------------------

    async def start_component(self, name: str) -> None:
        """Start one process by name and wait until it answers (used by the supervisor)."""
        if name == DB:
            await self.start_db()
        elif name == REDIS:
            await self.start_redis()
        elif self.redis_cluster and name in self._cluster_nodes():
            await self.redis_cluster.start_node(self._cluster_nodes()[name])
        elif name == KEYS:
            await self.start_keys()
        elif name == PRESENCE:
            await self.start_presence()
        elif name == S3:
            await self.start_s3()
        elif name == MEDIA:
            await self.start_media()
        elif name == SEARCH:
            await self.start_search()
        else:
            await self.start_message(self._message_index(name))

    async def start_db(self) -> None:
        process = self._processes[DB]
        await self._start(process, [self.ports.mongo])
        await self._ready(
            process, lambda: mongo_ping(self.mongo_uri), "a MongoDB ping", DB_READY_SECONDS
        )

    async def stop_db(self) -> None:
        await self._processes[DB].terminate(DB_STOP_SECONDS)

    async def kill_db(self) -> None:
        """SIGKILL SecantusDB: writes acknowledged with j=True must survive it."""
        await self._processes[DB].kill()

    async def start_redis(self) -> None:
        if self.redis_cluster is not None:
            stopped = [
                port
                for port, process in zip(
                    self.ports.redis_nodes, self.redis_cluster.processes, strict=True
                )
                if not process.alive()
            ]
            busy = [p for p in stopped if not port_is_free(p)]
            if busy:
                raise StackError(f"cannot start the Redis Cluster: port {busy[0]} is in use")
            try:
                await self.redis_cluster.start()
            except BaseException:
                await self.redis_cluster.stop()
                raise
            return
        process = self._processes[REDIS]
        await self._start(process, [self.ports.redis])
        await self._ready(
            process, lambda: redis_ping(self.redis_url), "a Redis PING", REDIS_READY_SECONDS
        )

    async def stop_redis(self) -> None:
        if self.redis_cluster is not None:
            await self.redis_cluster.stop()
            return
        await self._processes[REDIS].terminate(REDIS_STOP_SECONDS)

    async def kill_redis(self) -> None:
        if self.redis_cluster is not None:
            await self.redis_cluster.kill()
            return
        await self._processes[REDIS].kill()

    async def start_s3(self) -> None:
        process = self._processes[S3]
        await self._start(process, [self.ports.s3, *self.ports.seaweed])
        await self._ready(
            process,
            lambda: bucket_ready(self.s3_endpoint, self.s3_keys),
            f"the {BUCKET} bucket on S3 at {self.s3_endpoint}",
            S3_READY_SECONDS,
        )

    async def stop_s3(self) -> None:
        await self._processes[S3].terminate(S3_STOP_SECONDS)

    async def kill_s3(self) -> None:
        """SIGKILL SeaweedFS: stored objects must survive it."""
        await self._processes[S3].kill()

    async def start_media(self) -> None:
        """Start (or restart, on the same ports) svc_media."""
        await self._start_service(MEDIA)

    async def stop_media(self) -> None:
        await self._processes[MEDIA].terminate(self._grace + SERVICE_STOP_MARGIN_SECONDS)

    async def kill_media(self) -> None:
        """SIGKILL svc_media (a crash, for failure tests)."""
        await self._processes[MEDIA].kill()

    async def start_search(self) -> None:
        """Start (or restart, on the same ports) svc_search."""
        await self._start_service(SEARCH)

    async def stop_search(self) -> None:
        await self._processes[SEARCH].terminate(self._grace + SERVICE_STOP_MARGIN_SECONDS)

    async def kill_search(self) -> None:
        """SIGKILL svc_search (a crash, for failure tests)."""
        await self._processes[SEARCH].kill()

    def _cluster_nodes(self) -> dict[str, int]:
        """Component name -> index of each Redis Cluster node."""
        if self.redis_cluster is None:
            return {}
        return {p.name: i for i, p in enumerate(self.redis_cluster.processes)}

    async def start_keys(self) -> None:
        await self._start_service(KEYS)

    async def stop_keys(self) -> None:
        await self._processes[KEYS].terminate(self._grace + SERVICE_STOP_MARGIN_SECONDS)

    async def kill_keys(self) -> None:
        await self._processes[KEYS].kill()

    async def start_message(self, index: int) -> None:
        """Start (or restart, on the same ports) svc_message instance ``index``."""
        await self._start_service(message_name(self._check_index(index)))

    async def stop_message(self, index: int) -> None:
        process = self._processes[message_name(self._check_index(index))]
        await process.terminate(self._grace + SERVICE_STOP_MARGIN_SECONDS)

    async def kill_message(self, index: int) -> None:
        """SIGKILL svc_message instance ``index`` (a crash, for failure tests)."""
        await self._processes[message_name(self._check_index(index))].kill()

    async def start_presence(self) -> None:
        """Start (or restart, on the same ports) svc_presence."""
        await self._start_service(PRESENCE)

    async def stop_presence(self) -> None:
        await self._processes[PRESENCE].terminate(self._grace + SERVICE_STOP_MARGIN_SECONDS)

    async def kill_presence(self) -> None:
        """SIGKILL svc_presence (a crash, for failure tests)."""
        await self._processes[PRESENCE].kill()

    # -- internals ----------------------------------------------------------------

    async def _start_service(self, name: str) -> None:
        process = self._processes[name]
        port, metrics_port = self.service_ports(name)
        await self._start(process, [port, metrics_port])
        target = f"{HOST}:{port}"
        await self._ready(
            process,
            lambda: grpc_health_serving(target),
            f"gRPC health SERVING on {target}",
            self.ready_timeout,
        )

    async def _start(self, process: ManagedProcess, ports: list[int]) -> None:
        if process.alive():
            raise StackError(f"{process.name} is already running (pid {process.pid})")
        if not self.config_path.exists():
            self.prepare_files()
        busy = [p for p in ports if not port_is_free(p)]
        if busy:
            raise StackError(
                f"cannot start {process.name}: port {busy[0]} on {HOST} is in use "
                "(another `parley up`? use other ports or stop it)"
            )
        process.start()

    async def _ready(
        self, process: ManagedProcess, probe: Probe, what: str, timeout: float
    ) -> None:
        try:
            await wait_until_ready(process, probe, what=what, timeout=timeout)
        except BaseException:
            # A half-started child must not keep the port for the next attempt.
            await process.terminate(SERVICE_STOP_MARGIN_SECONDS)
            raise

    def _message_index(self, name: str) -> int:
        prefix = message_name(0)[:-1]
        if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
            raise KeyError(f"no stack component named {name!r}")
        return self._check_index(int(name[len(prefix) :]))

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.message_instances:
            raise IndexError(f"svc_message index {index} not in 0..{self.message_instances - 1}")
        return index


def write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(value + "\n")
