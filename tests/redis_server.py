"""A redis-server of a test module's own, on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from parley_dev.layout import find_executable
from parley_dev.probes import redis_ping, wait_until_ready
from parley_dev.process import ManagedProcess, free_port


@contextlib.asynccontextmanager
async def own_redis_server(root: Path) -> AsyncIterator[tuple[str, ManagedProcess]]:
    """Its URL and process (tests may stop and restart it); stopped at the end."""
    port = free_port()
    process = ManagedProcess(
        "redis",
        [
            find_executable("redis-server", "apt-get install -y redis-server"),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(root), "--daemonize", "no"),
        ],
        log_path=root / "redis.log",
        cwd=root,
    )
    process.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await wait_until_ready(process, lambda: redis_ping(url), what="PING", timeout=15)
        yield url, process
    finally:
        await process.terminate(10)
