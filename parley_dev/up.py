"""``parley up``: start the local stack (backends, svc_keys, svc_message, svc_presence,
svc_media, svc_search), keep it running, stop it cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

from parley_cli import PROG
from parley_core.config import ConfigError, read_config_file
from parley_dev.layout import KEYS, StackPorts
from parley_dev.probes import StackError
from parley_dev.stack import LocalStack
from parley_dev.stack_config import (
    OWNED_KEYS,
    owned_keys_in,
    resolve_paths,
    service_environment,
)
from parley_dev.supervisor import Supervisor


def run_up_command(
    *,
    data_dir: Path,
    message_instances: int,
    port_offset: int,
    log_format: Literal["json", "console"],
    client_commands: Sequence[str],
    otlp_endpoint: str | None = None,
    config_file: Path | None = None,
    redis_cluster: bool = False,
) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s parley %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    log = logging.getLogger("parley.up")
    try:
        user_config = (
            resolve_paths(read_config_file(config_file), config_file.resolve().parent)
            if config_file
            else {}
        )
        service_environ, ignored_variables = service_environment(os.environ, Path.cwd())
        stack = LocalStack(
            root=data_dir,
            ports=StackPorts.defaults(
                message_instances, offset=port_offset, redis_cluster=redis_cluster
            ),
            message_instances=message_instances,
            redis_cluster=redis_cluster,
            log_format=log_format,
            user_config=user_config,
            service_environ=service_environ,
            extra_config=(
                {"telemetry": {"tracing": {"enabled": True, "otlp_endpoint": otlp_endpoint}}}
                if otlp_endpoint
                else None
            ),
        )
    except ConfigError as error:
        # Before anything started: the message names the file or key at fault.
        log.error("%s", error)
        return 2
    for key in owned_keys_in(user_config):
        log.warning("ignoring %s from %s: %s", key, config_file, OWNED_KEYS[key])
    for name in ignored_variables:
        log.warning("ignoring %s: parley up sets that part of the config itself", name)
    if config_file:
        log.info("settings from %s, over the generated %s", config_file, stack.config_path)
    if service_environ:
        log.info("passing to the services: %s", ", ".join(sorted(service_environ)))
    return asyncio.run(run_up(stack, client_commands=client_commands))


class Harness(Protocol):
    """What ``parley up`` runs: one LocalStack, or several regions (parley_dev.regions)."""

    @property
    def root(self) -> Path: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def kill_all(self) -> None: ...


async def run_up(stack: LocalStack, *, client_commands: Sequence[str] = ()) -> int:
    """Start the stack, supervise it until SIGINT/SIGTERM, then stop it; the exit code."""
    log = logging.getLogger("parley.up")
    return await run_harness(
        stack,
        what="the local stack",
        banner_text=lambda: banner(stack, client_commands),
        supervise=lambda stop: Supervisor(stack, log=log).run(stop),
    )


async def run_harness(
    stack: Harness,
    *,
    what: str,
    banner_text: Callable[[], str],
    supervise: Callable[[asyncio.Event], Awaitable[None]],
) -> int:
    """Start ``stack``, print the banner, ``supervise`` until SIGINT/SIGTERM, then stop it."""
    log = logging.getLogger("parley.up")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            force.set()
        else:
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        log.info("starting %s in %s", what, stack.root)
        start = asyncio.create_task(stack.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([start, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not start.done():
            # Ctrl-C while starting: start() stops whatever it started as it unwinds.
            start.cancel()
            if not await _finish_unless_forced(start, stack, force, log):
                return 1
            log.info("stopped before the stack was up")
            return 0
        if (error := start.exception()) is not None:
            log.error("the stack did not start: %s", error)
            return 1
        print(banner_text(), flush=True)
        await supervise(stop)
        log.info("stopping (Ctrl-C again to kill everything at once)")
        return await _stop(stack, force, log)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _stop(stack: Harness, force: asyncio.Event, log: logging.Logger) -> int:
    if not await _finish_unless_forced(asyncio.create_task(stack.stop()), stack, force, log):
        return 1
    log.info("stopped; data kept in %s", stack.root)
    return 0


async def _finish_unless_forced(
    task: asyncio.Task[None], stack: Harness, force: asyncio.Event, log: logging.Logger
) -> bool:
    """Let a start or stop unwind; a second signal meanwhile SIGKILLs everything instead."""
    forced = asyncio.create_task(force.wait())
    await asyncio.wait([task, forced], return_when=asyncio.FIRST_COMPLETED)
    forced.cancel()
    if task.done():
        # A failed stop or cancelled start has already been reported or is moot.
        with contextlib.suppress(asyncio.CancelledError, StackError):
            task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StackError):
        await task
    await stack.kill_all()
    log.warning("killed every process of the stack")
    return False


def banner(stack: LocalStack, client_commands: Sequence[str] = ()) -> str:
    """What a developer needs once the stack is healthy: addresses and next steps."""
    rows: list[tuple[str, str]] = []
    for name in stack.component_names:
        try:
            port, metrics_port = stack.service_ports(name)
        except KeyError:
            continue  # a backend, listed below with its URL
        rows.append(
            (name, f"grpc 127.0.0.1:{port}   metrics http://127.0.0.1:{metrics_port}/metrics")
        )
    rows.append(("MongoDB", stack.mongo_uri))
    if stack.redis_cluster is not None:
        nodes = len(stack.redis_cluster.processes)
        rows.append(("Redis", f"{stack.redis_url} (a Redis Cluster of {nodes} nodes)"))
    else:
        rows.append(("Redis", stack.redis_url))
    rows.append(("S3", f"{stack.s3_endpoint} (bucket {stack.s3_bucket})"))
    rows.append(("Config", str(stack.config_path)))
    rows.append(("Logs", f"{stack.logs_dir}/"))
    width = max(len(label) for label, _ in rows)
    lines = ["", "Parley is up.", *(f"  {label:<{width}}  {value}" for label, value in rows)]
    if client_commands:
        example = "signup alice" if "signup" in client_commands else f"{client_commands[0]} --help"
        lines.append(f"In another terminal: ./{PROG} {{{','.join(client_commands)}}} ...")
        lines.append(f"  e.g. ./{PROG} {example}")
        defaults = StackPorts.defaults(
            stack.message_instances, redis_cluster=stack.redis_cluster is not None
        )
        if stack.ports != defaults:
            # The client commands default to the standard ports; say where this stack is.
            lines.append(
                f"  with --keys-target {stack.keys_target}"
                f" --message-target {stack.message_targets[0]}"
                f" --presence-target {stack.presence_target}"
            )
    else:
        lines.append(f"Client commands: ./{PROG} --help ({KEYS} is {stack.keys_target})")
    lines.append("Press Ctrl-C to stop; data stays in the data directory.")
    return "\n".join(lines)
