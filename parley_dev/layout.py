"""Names, ports and environment of the local stack's processes."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_dev.probes import StackError
from parley_dev.process import free_port_pair, free_ports

HOST = "127.0.0.1"
DB = "secantusdb"
REDIS = "redis"
KEYS = "svc_keys"
PRESENCE = "svc_presence"
MEDIA = "svc_media"
SEARCH = "svc_search"
S3 = "seaweedfs"
# Extra svc_message instances step by 10 so they stay clear of the ports of the
# services that follow it in the default layout (7103, 7104, ...).
MESSAGE_PORT_STEP = 10
# SecantusDB needs about 1 s to open; a service a few seconds (imports, indexes).
DB_READY_SECONDS = 30.0
REDIS_READY_SECONDS = 15.0
# SeaweedFS (`weed mini`) is ready in about a second.
S3_READY_SECONDS = 30.0
S3_STOP_SECONDS = 10.0
SERVICE_READY_SECONDS = 60.0
DB_STOP_SECONDS = 20.0
REDIS_STOP_SECONDS = 10.0
# A service gets its shutdown grace plus this to flush and exit before SIGKILL.
SERVICE_STOP_MARGIN_SECONDS = 5.0
ADMIN_GRPC_STEP = 10000
# A local Redis Cluster: 3 masters and 3 replicas (parley_dev.redis_cluster).
REDIS_CLUSTER_NODES = 6


def message_name(index: int) -> str:
    return f"svc_message-{index}"


@dataclass(frozen=True, slots=True)
class StackPorts:
    """TCP ports on 127.0.0.1; defaults are those of ``parley up``."""

    mongo: int = 27117
    redis: int = 6380
    keys: int = 7101
    keys_metrics: int = 9101
    message: tuple[int, ...] = (7102,)
    message_metrics: tuple[int, ...] = (9102,)
    presence: int = 7103
    presence_metrics: int = 9103
    media: int = 7104
    media_metrics: int = 9104
    search: int = 7105
    search_metrics: int = 9105
    # SeaweedFS's S3 API, then the ports of its other parts (master, volume,
    # filer, admin, and their gRPC ports), every one of them set so that two
    # stacks never collide. Its maintenance worker dials the admin server at
    # the admin port + 10000 whatever the flags say: that is the admin's gRPC port.
    s3: int = 9333
    seaweed: tuple[int, ...] = (*range(9334, 9342), 9341 + ADMIN_GRPC_STEP)
    # A Redis Cluster instead of the single Redis: each node's port and
    # cluster bus port (empty: no cluster).
    redis_nodes: tuple[int, ...] = ()
    redis_buses: tuple[int, ...] = ()

    @classmethod
    def defaults(
        cls, message_instances: int = 1, *, offset: int = 0, redis_cluster: bool = False
    ) -> StackPorts:
        """The ``parley up`` layout, every port shifted by ``offset`` (side-by-side stacks).
        A cluster's nodes take the Redis port and the ones after it, their
        buses those 10000 higher (Redis' own convention)."""
        steps = [i * MESSAGE_PORT_STEP for i in range(message_instances)]
        nodes = (
            tuple(6380 + offset + i for i in range(REDIS_CLUSTER_NODES)) if redis_cluster else ()
        )
        return cls(
            mongo=27117 + offset,
            redis=6380 + offset,
            keys=7101 + offset,
            keys_metrics=9101 + offset,
            message=tuple(7102 + offset + step for step in steps),
            message_metrics=tuple(9102 + offset + step for step in steps),
            presence=7103 + offset,
            presence_metrics=9103 + offset,
            media=7104 + offset,
            media_metrics=9104 + offset,
            search=7105 + offset,
            search_metrics=9105 + offset,
            s3=9333 + offset,
            seaweed=tuple(p + offset for p in (*range(9334, 9342), 9341 + ADMIN_GRPC_STEP)),
            redis_nodes=nodes,
            redis_buses=tuple(port + 10000 for port in nodes),
        )

    @classmethod
    def free(cls, message_instances: int = 1, *, redis_cluster: bool = False) -> StackPorts:
        """Ports the OS reports free now (tests)."""
        fixed = 18
        cluster = 2 * REDIS_CLUSTER_NODES if redis_cluster else 0
        ports = free_ports(fixed + 2 * message_instances + cluster)
        admin = free_port_pair(ADMIN_GRPC_STEP, avoid=ports)
        nodes = ports[len(ports) - cluster :]
        return cls(
            mongo=ports[0],
            redis=nodes[0] if nodes else ports[1],
            keys=ports[2],
            keys_metrics=ports[3],
            presence=ports[4],
            presence_metrics=ports[5],
            media=ports[6],
            media_metrics=ports[7],
            search=ports[8],
            search_metrics=ports[9],
            s3=ports[10],
            seaweed=(*ports[11:fixed], admin, admin + ADMIN_GRPC_STEP),
            message=tuple(ports[fixed : fixed + message_instances]),
            message_metrics=tuple(ports[fixed + message_instances : fixed + 2 * message_instances]),
            redis_nodes=tuple(nodes[:REDIS_CLUSTER_NODES]),
            redis_buses=tuple(nodes[REDIS_CLUSTER_NODES:]),
        )

    def all(self) -> list[int]:
        return [
            self.mongo,
            *((self.redis,) if not self.redis_nodes else ()),
            self.keys,
            self.keys_metrics,
            *self.message,
            *self.message_metrics,
            self.presence,
            self.presence_metrics,
            self.media,
            self.media_metrics,
            self.search,
            self.search_metrics,
            self.s3,
            *self.seaweed,
            *self.redis_nodes,
            *self.redis_buses,
        ]


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def find_executable(name: str, hint: str) -> str:
    # The venv's own bin first: `secantusd-py` lives there even when the venv
    # is not activated (pytest run as .venv/bin/pytest).
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise StackError(f"{name} not found on PATH; {hint}")
    return found


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    # PARLEY_* variables from the caller's shell would silently override the
    # generated config and point a service at some other database.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
